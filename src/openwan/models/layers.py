"""Building blocks shared by the Wan networks: fp32 norms, 3D RoPE, and the one attention call.

Norms compute in float32 whatever the weights' dtype and hand back the input's dtype. RoPE tables are
float32 cos/sin pairs built from float64 angles; they are applied with real float32 arithmetic.
``attention`` is the single place the DiT calls an attention kernel: it runs the backend chosen with
:func:`set_attention_backend` or :func:`attention_backend` (``ATTENTION_BACKENDS``: sdpa, math, flash, sage);
context parallelism wraps it per block through ``SelfAttention.attn_backend``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (weights upcast too); returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMS norm over the last dim with a learned scale, computed in float32; returns the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


# ------------------------------------------------------------------------------------------ RoPE


def rope_table(
    grid: tuple[int, int, int],
    axis_dims: tuple[int, int, int],
    device: torch.device | str | None = None,
    theta: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the 3D RoPE angles for a (frames, height, width) token grid: two [L, head_dim/2] tables.

    Tokens are ordered f-major, then h, then w. ``axis_dims`` are the head channels given to each axis
    (e.g. 44/42/42 of 128); each axis rotates its own adjacent channel pairs with frequencies
    theta^(-2j/axis_dim) at its integer grid index. Angles are formed in float64 so that large positions
    lose nothing before the float32 cos/sin are stored.
    """
    assert all(d % 2 == 0 for d in axis_dims), axis_dims
    angles = []
    for size, d in zip(grid, axis_dims):
        inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)  # [d/2]
        pos = torch.arange(size, dtype=torch.float64, device=device)
        angles.append(torch.outer(pos, inv_freq))  # [size, d/2]
    f, h, w = grid
    full = torch.cat(
        [
            angles[0][:, None, None, :].expand(f, h, w, -1),
            angles[1][None, :, None, :].expand(f, h, w, -1),
            angles[2][None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, -1)  # [L, head_dim/2]
    return full.cos().float(), full.sin().float()


def interleave_rope(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-width tables [L, D/2] -> full-width [L, D]: cos repeated per pair, sin as (-s, +s) per pair.

    With these, rotating pairs is ``x * cos + swap_pairs(x) * sin``: three passes over x instead of seven.
    """
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) of x [B, L, H, D] by the RoPE angles, in float32.

    Tables are [L, D/2] (as from :func:`rope_table`) or [L, D] (from :func:`interleave_rope`, faster):
    out[2i] = x[2i]·cos - x[2i+1]·sin, out[2i+1] = x[2i+1]·cos + x[2i]·sin.
    """
    if cos.shape[-1] * 2 == x.shape[-1]:
        cos, sin = interleave_rope(cos, sin)
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0) per pair
    out = torch.addcmul(x32 * cos[None, :, None, :], swapped, sin[None, :, None, :])
    return out.to(x.dtype)


# ------------------------------------------------------------------------------------- attention


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lens: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(D): q [B, Lq, H, D], k and v [B, Lk, H, D] -> [B, Lq, H, D] in v's dtype.

    ``key_lens`` [B] masks keys at positions >= key_lens[b] (padding). ``attn_mask`` is any mask
    scaled_dot_product_attention accepts, broadcastable to [B, H, Lq, Lk] (bool: True = attend, or additive
    float). q and k are brought to v's dtype so callers may hand in float32 RoPE outputs. The kernel is the
    current backend's (:func:`get_attention_backend`; sdpa unless another was set).
    """
    backend = ATTENTION_BACKENDS[_current]
    if attn_mask is not None and not backend.masks:
        raise ValueError(f"the {backend.name} attention backend takes no attn_mask (padding goes through key_lens); "
                         "use the sdpa or math backend for masked attention.")
    return backend.fn(q, k, v, key_lens, attn_mask)


def _sdpa(q, k, v, key_lens, attn_mask):
    """torch's scaled_dot_product_attention (it picks flash, memory-efficient, cuDNN or math kernels itself)."""
    mask = attn_mask
    if key_lens is not None:
        keep = torch.arange(k.shape[1], device=k.device)[None, :] < key_lens.to(k.device)[:, None]  # [B, Lk]
        keep = keep[:, None, None, :]  # [B, 1, 1, Lk]
        if mask is None:
            mask = keep
        elif mask.dtype == torch.bool:
            mask = mask & keep
        else:
            mask = mask.masked_fill(~keep, float("-inf"))
    out = F.scaled_dot_product_attention(
        q.to(v.dtype).transpose(1, 2), k.to(v.dtype).transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )  # [B, H, Lq, D]
    return out.transpose(1, 2)


# Score entries one chunk of the math backend holds (float32: 256 MiB); query rows are taken in chunks below it.
MATH_MAX_SCORES = 2**26


def _math(q, k, v, key_lens, attn_mask):
    """softmax(q k^T / sqrt(D)) v written out in float32: the independent reference for the other backends."""
    b, lq, h, d = q.shape
    qf, kf, vf = q.float(), k.float(), v.float()
    bias = torch.zeros(1, 1, 1, k.shape[1], device=q.device)  # additive, broadcast to [B, H, Lq, Lk]
    if key_lens is not None:
        keep = torch.arange(k.shape[1], device=k.device)[None, :] < key_lens.to(k.device)[:, None]  # [B, Lk]
        bias = bias.masked_fill(~keep[:, None, None, :], float("-inf"))
    if attn_mask is not None:
        extra = attn_mask if attn_mask.dtype != torch.bool else torch.zeros(
            attn_mask.shape, device=q.device).masked_fill(~attn_mask, float("-inf"))
        bias = bias + extra.float()
    rows = max(1, MATH_MAX_SCORES // max(1, b * h * k.shape[1]))
    out = []
    for start in range(0, lq, rows):
        scores = torch.einsum("bqhd,bkhd->bhqk", qf[:, start:start + rows], kf) / math.sqrt(d)  # [B, H, q, Lk]
        scores = scores + (bias if bias.shape[2] == 1 else bias[:, :, start:start + rows])
        out.append(torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), vf))  # [B, q, H, D]
    return torch.cat(out, dim=1).to(v.dtype)


def _per_sample_keys(kernel: Callable) -> Callable:
    """A mask-free kernel (q, k, v -> out, all [B, L, H, D]) given ``key_lens`` by slicing each sample's keys."""

    def run(q, k, v, key_lens, attn_mask):
        q, k = q.to(v.dtype), k.to(v.dtype)
        if key_lens is None:
            return kernel(q, k, v)
        lens = key_lens.tolist()
        if len(set(lens)) == 1:
            return kernel(q, k[:, : lens[0]], v[:, : lens[0]])
        return torch.cat([kernel(q[i : i + 1], k[i : i + 1, :n], v[i : i + 1, :n]) for i, n in enumerate(lens)])

    return run


def _half_cuda(name: str, v: torch.Tensor) -> None:
    if v.device.type != "cuda" or v.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"the {name} attention backend runs bfloat16/float16 tensors on a CUDA device; got "
                         f"{v.dtype} on {v.device.type} — run the model in bf16 on a GPU or use the sdpa backend.")


def _flash_kernel(q, k, v):
    from flash_attn import flash_attn_func

    _half_cuda("flash", v)
    return flash_attn_func(q, k, v)  # [B, L, H, D] in and out, scale 1/sqrt(D)


def _sage_kernel(q, k, v):
    from sageattention import sageattn

    _half_cuda("sage", v)
    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)  # 8-bit QK^T, scale 1/sqrt(D)


@dataclass(frozen=True)
class AttentionBackend:
    """One attention kernel: ``fn(q, k, v, key_lens, attn_mask)`` on [B, L, H, D] tensors; ``package`` is the
    module it needs (None: torch alone), ``cuda`` whether it needs a CUDA device, ``masks`` whether it takes
    ``attn_mask`` (all take ``key_lens``)."""

    name: str = "sdpa"
    fn: Callable = _sdpa
    package: str | None = None
    pip: str | None = None
    cuda: bool = False
    masks: bool = True


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    "sdpa": AttentionBackend("sdpa", _sdpa),
    "math": AttentionBackend("math", _math),
    "flash": AttentionBackend("flash", _per_sample_keys(_flash_kernel), "flash_attn", "flash-attn", True, False),
    "sage": AttentionBackend("sage", _per_sample_keys(_sage_kernel), "sageattention", "sageattention", True, False),
}
_current = "sdpa"


def attention_backend_problem(name: str) -> str | None:
    """Why backend ``name`` cannot run here (one sentence), or None when it can."""
    if name not in ATTENTION_BACKENDS:
        return f"unknown attention backend {name!r}; choose one of {', '.join(ATTENTION_BACKENDS)}."
    backend = ATTENTION_BACKENDS[name]
    if backend.package is not None and importlib.util.find_spec(backend.package) is None:
        return (f"the {name} attention backend needs the {backend.package} package; install it with "
                f"`pip install {backend.pip}` on a CUDA machine, or use sdpa.")
    if backend.cuda and not torch.cuda.is_available():
        return f"the {name} attention backend needs a CUDA device and none is available; use sdpa."
    return None


def get_attention_backend() -> str:
    """The name of the backend :func:`attention` runs now."""
    return _current


def set_attention_backend(name: str) -> str:
    """Make ``name`` the backend every :func:`attention` call runs; returns the previous one's name.
    A ValueError (one sentence) when its package or device is missing."""
    global _current
    problem = attention_backend_problem(name)
    if problem:
        raise ValueError(problem)
    previous, _current = _current, name
    return previous


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[str]:
    """Run the block with backend ``name``, then restore the one before."""
    previous = set_attention_backend(name)
    try:
        yield name
    finally:
        set_attention_backend(previous)
