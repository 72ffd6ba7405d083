"""Weight-only 8-bit linears (torchao) on a small random DiT and umT5 in float32 on CPU: accuracy against float32,
the memory report, what is left alone, and a quantized DiT sampling in the pipeline."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn
from transformers import UMT5EncoderModel

from openwan.configs import DIT_PRESETS, TEXT_ENCODER_PRESETS
from openwan.models import WanDiT
from openwan.pipelines import WanPipeline
from openwan.runtime.accel import apply_accelerations
from openwan.runtime.quantize import check_runs, dit_filter, quantize_model, umt5_filter, weight_bytes
from tiny import randomize, tiny_components

# Measured rel L2 error of the DiT's output against float32 (this model, these inputs): int8 1.8e-3, fp8 1.1e-2.
BOUNDS = {"int8": 1e-2, "fp8": 3e-2}
# The tiny umT5 (random N(0, 0.1) weights, no residual mixing as wide as the DiT's): int8 measured 1.2e-2.
UMT5_INT8_BOUND = 3e-2


def small_dit() -> WanDiT:
    """256 wide, 2 blocks: rows long enough that a per-row scale costs what it does in a real model (~2%)."""
    dit = randomize(WanDiT(DIT_PRESETS["tiny"].replace(dim=256, ffn_dim=512, num_heads=4, num_layers=2)), std=0.05)
    for name, m in dit.named_modules():
        if dit_filter(m, name):  # trained-like weights, not a constant std: xavier as the training init
            nn.init.xavier_uniform_(m.weight)
    return dit


def inputs(dit: WanDiT):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, dit.cfg.in_dim, 2, 8, 8, generator=g), torch.tensor([700.0]),
            torch.randn(1, 12, dit.cfg.text_dim, generator=g))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@torch.no_grad()
def test_quantized_dit_matches_float32_and_shrinks_its_linears(mode):
    dit = small_dit()
    x, t, context = inputs(dit)
    ref = dit(x, t, context)
    quantized = copy.deepcopy(dit)
    report = quantize_model(quantized, mode)
    out = quantized(x, t, context)
    assert ref.abs().mean() > 0.1
    err = rel_l2(out, ref)
    assert 1e-5 < err < BOUNDS[mode], err  # it did change the weights, and only as much as 8 bits must
    assert report.layers == 2 * 10  # q, k, v, o of both attentions and the two FFN linears, per block
    ratio = report.linear_bytes_before / report.linear_bytes_after
    assert 3.6 < ratio <= 4.0, ratio  # float32 -> 8 bits plus a float32 scale per row (and an int8 zero point)
    assert report.bytes_before - report.bytes_after == report.linear_bytes_before - report.linear_bytes_after
    assert report.bytes_before == weight_bytes(dit)
    assert set(report.kept) == {"text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
                                "time_projection.1", "head.head"}


@torch.no_grad()
def test_layers_outside_the_filter_are_untouched():
    dit = small_dit()
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    tensors = {n: p for n, p in dit.named_parameters()}
    quantize_model(dit, "int8")
    quantized = {n for n, m in dit.named_modules() if isinstance(m, nn.Linear) and type(m.weight) is not nn.Parameter}
    assert quantized == {n for n, m in dit.named_modules() if n.startswith("blocks.") and isinstance(m, nn.Linear)}
    for name, p in dit.named_parameters():
        module = name.rpartition(".")[0]
        if module in quantized and name.endswith(".weight"):
            assert type(p) is not nn.Parameter and type(p.data).__name__ == "Int8Tensor"
        else:  # same tensor object, same values: embeddings, modulation, norms, head, biases
            assert p is tensors[name] and torch.equal(p, before[name]), name


def test_umt5_blocks_are_quantized_and_its_embeddings_kept():
    encoder = randomize(UMT5EncoderModel(TEXT_ENCODER_PRESETS["tiny"].to_hf()), std=0.1)
    ids = torch.randint(0, encoder.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = encoder(input_ids=ids).last_hidden_state
        report = quantize_model(encoder, "int8")
        out = encoder(input_ids=ids).last_hidden_state
    linears = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    assert report.layers == len(linears) == sum(umt5_filter(m, n) for n, m in encoder.named_modules())
    assert type(encoder.shared.weight) is nn.Parameter  # the token embedding stays float32
    assert 1e-5 < rel_l2(out, ref) < UMT5_INT8_BOUND


def test_refusals():
    dit = small_dit()
    with pytest.raises(ValueError, match="unknown quantization 'int4'; choose one of int8, fp8"):
        quantize_model(dit, "int4")
    with pytest.raises(ValueError, match="takes a WanDiT or a umT5 encoder"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), "int8")
    quantize_model(dit, "int8")
    with pytest.raises(ValueError, match="already holds quantized weights"):
        quantize_model(dit, "int8")


def test_missing_torchao_is_refused_with_the_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    with pytest.raises(ValueError, match=r"install it with `pip install openwan\[accel\]`"):
        quantize_model(small_dit(), "int8")


def test_fp8_on_cpu_runs_or_is_refused_with_what_it_needs():
    """torchao 0.18 dequantizes fp8 weights on CPU; where a torch/torchao pair cannot, the refusal says why."""
    try:
        check_runs("fp8", "cpu", torch.float32)
    except ValueError as err:
        assert "fp8 weight-only linears do not run on cpu" in str(err) and "use int8" in str(err)
    else:
        assert importlib.util.find_spec("torchao") is not None


def test_a_dtype_torchao_has_no_int8_kernel_for_is_refused_before_any_change():
    with pytest.raises(ValueError, match=r"int8 weight-only linears do not run on cpu in torch.float64 .* they need "
                                         r"float32, bfloat16 or float16 activations"):
        check_runs("int8", "cpu", torch.float64)


@torch.no_grad()
def test_quantized_dit_samples_in_the_pipeline():
    parts = tiny_components("tiny")
    noise = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    run = lambda pipe: pipe("a cat", size=(32, 32), frame_num=5, sample_steps=3, latents=noise, progress=False)
    ref = run(WanPipeline(**copy.deepcopy(parts)))
    pipe = WanPipeline(**parts)
    report = apply_accelerations(pipe, quantize="int8")
    assert set(report["quantize"]) == {"dit", "text_encoder"}
    for name in ("dit", "text_encoder"):
        sizes = report["weight_bytes"][name]
        assert sizes["after"] < sizes["before"]
    out = run(pipe)
    assert out.video.shape == ref.video.shape and torch.isfinite(out.latents).all()
    err = rel_l2(out.latents, ref.latents)
    assert 1e-5 < err < 1e-2, err  # measured 6e-4 (text encoder and DiT in int8, three steps)
