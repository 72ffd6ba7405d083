"""What only a GPU shows about the numerics: the bf16 DiT and VAE against float32, flash attention against the math
kernel. Random weights at released widths (few blocks), float32 references with TF32 off."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from openwan.configs import DIT_PRESETS, VAE_PRESETS
from openwan.models import WanDiT, WanVAE
from openwan.models.layers import attention

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_float32():
    """float32 references in true float32: TF32 matmuls and convolutions would cost ~1e-3 relative themselves."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def agreement(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(cosine similarity, relative L2 error) of ``out`` against ``ref``, in float64."""
    a, b = out.double().flatten(), ref.double().flatten()
    cosine = torch.dot(a, b) / (a.norm() * b.norm())
    return cosine.item(), ((a - b).norm() / b.norm()).item()


def random_dit(preset: str, num_layers: int) -> WanDiT:
    """A released preset's widths with ``num_layers`` blocks, initialised on the GPU as for training."""
    with CUDA:
        dit = WanDiT(DIT_PRESETS[preset].replace(num_layers=num_layers))
        nn.init.xavier_uniform_(dit.head.head.weight)  # the training init's zero head would make every output 0
    return dit.eval()


def dit_inputs(dit: WanDiT, grid=(5, 30, 52)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents of a 17-frame 240x416 video (1,950 tokens), two timesteps, prompts of 40 and 512 tokens."""
    g = torch.Generator(CUDA).manual_seed(0)
    x = torch.randn(2, dit.cfg.in_dim, *grid, generator=g, device=CUDA)
    t = torch.tensor([999.0, 250.0], device=CUDA)
    context = torch.randn(2, dit.cfg.text_len, dit.cfg.text_dim, generator=g, device=CUDA)
    context[0, 40:] = 0  # the pipeline zero-pads a short prompt to text_len
    return x, t, context


@pytest.mark.parametrize("preset", ["t2v-1.3B", "t2v-14B"])
@torch.no_grad()
def test_bf16_dit_matches_float32(preset):
    dit = random_dit(preset, num_layers=2)
    x, t, context = dit_inputs(dit)
    ref = dit(x, t, context)
    assert ref.dtype == torch.float32 and ref.abs().mean() > 0.1  # a real signal, not the zero head

    with torch.autocast("cuda", dtype=torch.bfloat16):  # training: float32 weights, bf16 compute
        autocast_out = dit(x, t, context)
    inference = copy.deepcopy(dit).to(torch.bfloat16)  # generation: bf16 weights, as the release ships them
    bf16_out = inference(x, t, context.to(torch.bfloat16))

    for out in (autocast_out, bf16_out):
        assert out.dtype == torch.float32 and out.shape == ref.shape
        cosine, rel = agreement(out, ref)
        assert cosine > 0.999 and rel < 2e-2, (cosine, rel)


@torch.no_grad()
def test_flash_attention_matches_the_math_kernel():
    g = torch.Generator(CUDA).manual_seed(0)
    q, k, v = (torch.randn(2, 1950, 12, 128, generator=g, device=CUDA) for _ in range(3))  # [B, L, H, D]
    with sdpa_kernel(SDPBackend.MATH):
        ref = attention(q, k, v)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # flash only: raises if the call is not flash-eligible
        out = attention(*(a.to(torch.bfloat16) for a in (q, k, v)))
    assert out.dtype == torch.bfloat16
    cosine, rel = agreement(out, ref)
    assert cosine > 0.9999 and rel < 1e-2, (cosine, rel)


@torch.no_grad()
def test_bf16_dit_runs_on_flash_attention_and_matches_the_math_kernel():
    """Every attention call of a generation step (self, cross, padded prompt) is flash-eligible and agrees."""
    dit = random_dit("t2v-1.3B", num_layers=2).to(torch.bfloat16)
    x, t, context = dit_inputs(dit)
    context = context.to(torch.bfloat16)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash = dit(x, t, context)
    with sdpa_kernel(SDPBackend.MATH):
        math = dit(x, t, context)
    cosine, rel = agreement(flash, math)
    assert cosine > 0.999 and rel < 2e-2, (cosine, rel)


@torch.no_grad()
def test_bf16_vae_decode_matches_float32():
    vae = WanVAE(VAE_PRESETS["wan2.1"]).to(CUDA).eval()  # the released architecture, random weights
    g = torch.Generator(CUDA).manual_seed(0)
    z = torch.randn(1, 16, 3, 32, 32, generator=g, device=CUDA)  # -> 9 frames of 256x256
    ref = vae.decode(z)
    assert ref.shape == (1, 3, 9, 256, 256) and ref.dtype == torch.float32
    assert 0.01 < ref.abs().mean() < 0.99  # neither silent nor saturated by the clamp

    out = copy.deepcopy(vae).to(torch.bfloat16).decode(z)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    # Judged as a picture (a random decoder's signal is small, so a relative error overstates it): PSNR over the
    # [-1, 1] range, peak-to-peak 2; 45 dB is an RMS error under 1.5 levels of 8-bit video.
    cosine, _ = agreement(out, ref)
    psnr = 10 * torch.log10(4 / (out.float() - ref).pow(2).mean()).item()
    assert cosine > 0.999 and psnr > 45, (cosine, psnr)
