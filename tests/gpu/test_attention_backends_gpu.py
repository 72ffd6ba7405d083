"""flash and sage attention against SDPA and the float32 math reference on a GPU, alone and inside a bf16 DiT.

Bounds: bf16 inputs carry ~4e-3 relative rounding, flash accumulates in float32 (rel L2 < 1e-2 as SDPA's own
flash kernel in test_bf16_and_flash.py); sage quantizes Q and K to int8 per block (SageAttention's paper reports
cosine > 0.999 against full precision), so it gets rel L2 < 3e-2."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from openwan.configs import DIT_PRESETS
from openwan.models import WanDiT
from openwan.models.layers import attention, attention_backend

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
BOUNDS = {"flash": (0.9999, 1e-2), "sage": (0.999, 3e-2)}  # (cosine above, rel L2 below) against float32 math
PACKAGES = {"flash": "flash_attn", "sage": "sageattention"}


def agreement(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    a, b = out.double().flatten(), ref.double().flatten()
    return (torch.dot(a, b) / (a.norm() * b.norm())).item(), ((a - b).norm() / b.norm()).item()


def needs(name: str) -> None:
    if importlib.util.find_spec(PACKAGES[name]) is None:
        pytest.skip(f"not measured: pip install {PACKAGES[name].replace('_', '-')}")


@pytest.mark.parametrize("name", ["flash", "sage"])
@torch.no_grad()
def test_backend_matches_math_reference(name):
    needs(name)
    g = torch.Generator(CUDA).manual_seed(0)
    q, k, v = (torch.randn(2, 1950, 12, 128, generator=g, device=CUDA) for _ in range(3))  # [B, L, H, D]
    with attention_backend("math"):
        ref = attention(q, k, v)
    half = [a.to(torch.bfloat16) for a in (q, k, v)]
    with attention_backend(name):
        out = attention(*half)
    sdpa = attention(*half)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    cosine, rel = agreement(out, ref)
    floor_cos, ceiling = BOUNDS[name]
    assert cosine > floor_cos and rel < ceiling, (cosine, rel)
    assert agreement(out, sdpa)[1] < ceiling


@pytest.mark.parametrize("name", ["flash", "sage"])
@torch.no_grad()
def test_backend_takes_key_lens_by_slicing_each_sample(name):
    needs(name)
    g = torch.Generator(CUDA).manual_seed(1)
    q, k, v = (torch.randn(2, 512, 12, 128, generator=g, device=CUDA, dtype=torch.bfloat16) for _ in range(3))
    lens = torch.tensor([512, 300])
    ref = attention(q, k, v, key_lens=lens)
    with attention_backend(name):
        out = attention(q, k, v, key_lens=lens)
        with pytest.raises(ValueError, match="takes no attn_mask"):
            attention(q, k, v, attn_mask=torch.ones(512, 512, dtype=torch.bool, device=CUDA))
        with pytest.raises(ValueError, match="bfloat16/float16 tensors on a CUDA device"):
            attention(q.float(), k.float(), v.float())
    assert agreement(out, ref)[1] < BOUNDS[name][1]


@pytest.mark.parametrize("name", ["flash", "sage"])
@torch.no_grad()
def test_bf16_dit_with_backend_matches_sdpa(name):
    needs(name)
    with CUDA:
        dit = WanDiT(DIT_PRESETS["t2v-1.3B"].replace(num_layers=2))
        nn.init.xavier_uniform_(dit.head.head.weight)
    dit = dit.to(torch.bfloat16).eval()
    g = torch.Generator(CUDA).manual_seed(0)
    x = torch.randn(1, 16, 5, 30, 52, generator=g, device=CUDA)
    t = torch.tensor([500.0], device=CUDA)
    context = torch.randn(1, 512, 4096, generator=g, device=CUDA, dtype=torch.bfloat16)
    ref = dit(x, t, context)
    with attention_backend(name):
        out = dit(x, t, context)
    cosine, rel = agreement(out, ref)
    assert cosine > 0.999 and rel < 3e-2, (cosine, rel)
