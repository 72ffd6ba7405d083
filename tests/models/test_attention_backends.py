"""The attention backends of ``openwan.models.layers``: the float32 math reference against SDPA, refusals, and the
DiT's output under each CPU backend."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from openwan.configs import DIT_PRESETS
from openwan.models import WanDiT, layers
from openwan.models.layers import (
    ATTENTION_BACKENDS,
    attention,
    attention_backend,
    get_attention_backend,
    set_attention_backend,
)


def qkv(b=2, lq=37, lk=29, h=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, lq, h, d, generator=g), torch.randn(b, lk, h, d, generator=g),
            torch.randn(b, lk, h, d, generator=g))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_default_backend_is_sdpa_and_the_registry_names_the_four():
    assert get_attention_backend() == "sdpa"
    assert set(ATTENTION_BACKENDS) == {"sdpa", "math", "flash", "sage"}


@pytest.mark.parametrize("key_lens", [None, [29, 11]])
def test_math_and_sdpa_agree(key_lens):
    q, k, v = qkv()
    lens = None if key_lens is None else torch.tensor(key_lens)
    with attention_backend("math"):
        ref = attention(q, k, v, key_lens=lens)
    out = attention(q, k, v, key_lens=lens)
    assert get_attention_backend() == "sdpa"
    assert out.shape == ref.shape == q.shape
    assert max_rel(out, ref) < 1e-5
    if key_lens is not None:  # the padding really is masked: the second sample ignores keys 11..28
        trimmed = attention(q[1:], k[1:, :11], v[1:, :11])
        assert max_rel(out[1:], trimmed) < 1e-5
        assert max_rel(out[1:], attention(q[1:], k[1:], v[1:])) > 1e-2


def test_math_takes_bool_and_additive_masks_like_sdpa():
    q, k, v = qkv()
    mask = torch.rand(q.shape[1], k.shape[1], generator=torch.Generator().manual_seed(1)) > 0.3
    mask[:, 0] = True  # every query keeps a key
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    for m in (mask, additive):
        with attention_backend("math"):
            ref = attention(q, k, v, key_lens=torch.tensor([29, 20]), attn_mask=m)
        assert max_rel(attention(q, k, v, key_lens=torch.tensor([29, 20]), attn_mask=m), ref) < 1e-5


def test_math_chunks_query_rows_without_changing_the_result(monkeypatch):
    q, k, v = qkv(lq=50)
    with attention_backend("math"):
        whole = attention(q, k, v)
        monkeypatch.setattr(layers, "MATH_MAX_SCORES", 2 * 3 * 29 * 7)  # 7 query rows per chunk
        chunked = attention(q, k, v)
    assert torch.allclose(whole, chunked, atol=1e-6)


@pytest.mark.parametrize("name,package", [("flash", "flash_attn"), ("sage", "sageattention")])
def test_unavailable_backends_are_refused_with_a_sentence(name, package):
    if importlib.util.find_spec(package) is not None and torch.cuda.is_available():
        pytest.skip(f"{package} and CUDA are present: {name} runs here (tests/gpu/test_attention_backends_gpu.py)")
    with pytest.raises(ValueError) as err:
        set_attention_backend(name)
    message = str(err.value)
    assert message.count(". ") == 0 and message.endswith(".")
    assert ("pip install" in message) if importlib.util.find_spec(package) is None else ("CUDA" in message)
    assert get_attention_backend() == "sdpa"  # nothing changed
    with pytest.raises(ValueError, match="unknown attention backend 'xformers'; choose one of sdpa, math"):
        set_attention_backend("xformers")


def test_context_manager_restores_the_backend_after_an_error():
    with pytest.raises(RuntimeError), attention_backend("math"):
        assert get_attention_backend() == "math"
        raise RuntimeError("inside")
    assert get_attention_backend() == "sdpa"


@torch.no_grad()
def test_dit_output_under_math_equals_sdpa():
    torch.manual_seed(0)
    dit = WanDiT(DIT_PRESETS["tiny"]).eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.05)  # the init's zero head would hide every difference
    cfg = dit.cfg
    x = torch.randn(1, cfg.in_dim, 2, 8, 8)
    t = torch.tensor([700.0])
    context = torch.randn(1, 12, cfg.text_dim)
    ref = dit(x, t, context)
    with attention_backend("math"):
        out = dit(x, t, context)
    assert ref.abs().mean() > 1e-2
    assert max_rel(out, ref) < 1e-5


def test_sdpa_backend_is_the_plain_sdpa_call_bit_for_bit():
    q, k, v = qkv()
    lens = torch.tensor([29, 11])
    keep = (torch.arange(29)[None, :] < lens[:, None])[:, None, None, :]
    plain = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                             v.transpose(1, 2), attn_mask=keep).transpose(1, 2)
    assert torch.equal(attention(q, k, v, key_lens=lens), plain)


def test_per_sample_key_slicing_equals_masking():
    """flash and sage take key_lens by slicing each sample's keys (they take no mask): the slicing, around the
    float32 math kernel here, equals SDPA with the padding masked, for equal and for different lengths."""
    sliced = layers._per_sample_keys(lambda q, k, v: layers._math(q, k, v, None, None))
    q, k, v = qkv()
    for lens in ([29, 11], [17, 17]):
        lens = torch.tensor(lens)
        assert max_rel(sliced(q, k, v, lens, None), attention(q, k, v, key_lens=lens)) < 1e-5
    assert max_rel(sliced(q, k, v, None, None), attention(q, k, v)) < 1e-5
