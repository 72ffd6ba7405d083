"""Building blocks shared by the Wan networks: fp32 norms, 3D RoPE, and the one attention call.

Norms compute in float32 whatever the weights' dtype and hand back the input's dtype. RoPE tables are
float32 cos/sin pairs built from float64 angles; they are applied with real float32 arithmetic.
``attention`` is the single place the DiT calls an attention kernel, so other backends (flash, sage,
context parallel) are swapped in here and nowhere else.
"""

from __future__ import annotations

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
    """Softmax attention with scale 1/sqrt(D): q [B, Lq, H, D], k and v [B, Lk, H, D] -> [B, Lq, H, D].

    ``key_lens`` [B] masks keys at positions >= key_lens[b] (padding). ``attn_mask`` is any mask
    scaled_dot_product_attention accepts, broadcastable to [B, H, Lq, Lk] (bool: True = attend, or additive
    float). q and k are brought to v's dtype so callers may hand in float32 RoPE outputs.
    """
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
