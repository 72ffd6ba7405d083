"""The Wan2.2 VAE's own pieces: the 2×2 patchify and the residual down/up levels with parameter-free shortcuts.

Wan2.2 codes 4×16×16. Frames are first cut into 2×2 pixel patches (3 -> 12 channels), then three ×2 levels
follow as in Wan2.1. Each level is residual around its blocks: going down, the shortcut moves each 2×2 (×2 in
time) neighbourhood into channels and averages groups of those channels down to the level's width; going up,
the shortcut repeats channels and spreads them back into space (and time). Neither shortcut has weights, so the
state dict is that of the blocks alone. Module names reproduce the keys of the released ``Wan2.2_VAE.pth``
(``encoder.downsamples.{level}.downsamples.{j}``, ``decoder.upsamples.{level}.upsamples.{j}``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from openwan.configs import VAEConfig
from openwan.models.vae_coders import Decoder3d, Encoder3d
from openwan.models.vae_layers import FeatureCache, Resample, ResidualBlock


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C·p·p, T, H/p, W/p]; channels ordered (colour, column offset, row offset) as the
    release orders them."""
    if p == 1:
        return x
    return rearrange(x, "b c t (h q) (w r) -> b (c r q) t h w", q=p, r=p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, C·p·p, T, h, w] -> [B, C, T, h·p, w·p]."""
    if p == 1:
        return x
    return rearrange(x, "b (c r q) t h w -> b c t (h q) (w r)", q=p, r=p)


def average_down(x: torch.Tensor, out_dim: int, ft: int, fs: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, out_dim, T/ft, H/fs, W/fs]: each ft×fs×fs neighbourhood goes into channels, and
    consecutive groups of C·ft·fs²/out_dim of those channels are averaged. A clip whose length is not a multiple
    of ``ft`` (the encoder's one-frame first chunk) is padded with zero frames in front, as the causal convs are."""
    pad = -x.shape[2] % ft
    if pad:
        x = F.pad(x, (0, 0, 0, 0, pad, 0))
    x = rearrange(x, "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w", ft=ft, fh=fs, fw=fs)
    return x.unflatten(1, (out_dim, -1)).mean(dim=2)


def duplicate_up(x: torch.Tensor, out_dim: int, ft: int, fs: int, first: bool) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, out_dim, T·ft, H·fs, W·fs]: each channel repeated out_dim·ft·fs²/C times, the
    copies spread over an ft×fs×fs neighbourhood. In the decoder's first chunk the first latent frame yields one
    frame, not ft (``first`` keeps only the last ft-th), matching the causal upsampling of the main path."""
    x = x.repeat_interleave(out_dim * ft * fs * fs // x.shape[1], dim=1)
    x = rearrange(x, "b (c ft fh fw) t h w -> b c (t ft) (h fh) (w fw)", ft=ft, fh=fs, fw=fs)
    return x[:, :, ft - 1:] if first else x


class DownLevel(nn.Module):
    """Residual blocks then a ×2 downsample (in space, and in time when ``temporal``), plus the averaging shortcut
    from the level's input. The last level does not downsample; its shortcut only averages channels."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, dropout: float, *, down: bool,
                 temporal: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(in_dim if j == 0 else out_dim, out_dim, dropout)
                                   for j in range(num_blocks)]
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.ModuleList(layers)
        self.out_dim = out_dim
        self.factors = (2 if temporal else 1, 2 if down else 1)  # (time, space)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        h = x
        for layer in self.downsamples:
            h = layer(h, cache)
        return h + average_down(x, self.out_dim, *self.factors)


class UpLevel(nn.Module):
    """Residual blocks then a ×2 upsample keeping the width (in space, and in time when ``temporal``), plus the
    duplicating shortcut from the level's input. The last level does not upsample and has no shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, dropout: float, *, up: bool,
                 temporal: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(in_dim if j == 0 else out_dim, out_dim, dropout)
                                   for j in range(num_blocks)]
        if up:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", upsample_dim=out_dim))
        self.upsamples = nn.ModuleList(layers)
        self.up = up
        self.out_dim = out_dim
        self.time_factor = 2 if temporal else 1

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        h = x
        for layer in self.upsamples:
            h = layer(h, cache)
        if not self.up:
            return h
        return h + duplicate_up(x, self.out_dim, self.time_factor, 2, first=cache.first)


class ResidualEncoder3d(Encoder3d):
    """The Wan2.2 encoder: :class:`Encoder3d` with residual down levels (no attention inside the levels)."""

    @staticmethod
    def _levels(cfg: VAEConfig, dims: list[int]) -> nn.ModuleList:
        last = len(cfg.dim_mult) - 1
        return nn.ModuleList(
            DownLevel(dims[i], dims[i + 1], cfg.num_res_blocks, cfg.dropout, down=i < last,
                      temporal=i < last and cfg.temporal_downsample[i])
            for i in range(last + 1)
        )


class ResidualDecoder3d(Decoder3d):
    """The Wan2.2 decoder: :class:`Decoder3d` with residual up levels of ``num_res_blocks + 1`` blocks whose
    upsamples keep the width."""

    @staticmethod
    def _levels(cfg: VAEConfig, dims: list[int]) -> nn.ModuleList:
        last = len(cfg.dim_mult) - 1
        temporal_upsample = cfg.temporal_downsample[::-1]
        return nn.ModuleList(
            UpLevel(dims[i], dims[i + 1], cfg.num_res_blocks + 1, cfg.dropout, up=i < last,
                    temporal=i < last and temporal_upsample[i])
            for i in range(last + 1)
        )
