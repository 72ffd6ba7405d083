"""The Wan VAE's encoder and decoder: a stem conv, the levels, a middle of two residual blocks around attention,
and a head. The levels here are Wan2.1's (a flat list of blocks and resamples); the Wan2.2 VAE swaps in its
residual levels (:mod:`openwan.models.vae22`) and keeps everything else.
"""

from __future__ import annotations

import torch
from torch import nn

from openwan.configs import VAEConfig
from openwan.models.vae_layers import AttentionBlock, CausalConv3d, FeatureCache, Resample, ResidualBlock, RMSNorm


def _middle(dim: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout)])


class Encoder3d(nn.Module):
    """(Patchified) frames [B, 3·p², T, H, W] -> posterior moments [B, 2 z_dim, T', H/2^L, W/2^L], L = levels - 1."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3 * cfg.patch_size**2, dims[0], 3, padding=1)
        self.downsamples = self._levels(cfg, dims)
        self.middle = _middle(dims[-1], cfg.dropout)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], cfg.z_dim * 2, 3, padding=1))

    @staticmethod
    def _levels(cfg: VAEConfig, dims: list[int]) -> nn.ModuleList:
        """Wan2.1: per level ``num_res_blocks`` residual blocks (and attention at ``attn_scales``), then a
        ×2 downsample (none after the last level), all in one flat list."""
        layers: list[nn.Module] = []
        scale = 1.0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i < len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                layers.append(Resample(out_dim, mode))
                scale /= 2.0
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        norm, act, conv = self.head
        return conv(act(norm(x)), cache)  # [B, 2 z_dim, T', h, w]


class Decoder3d(nn.Module):
    """Latents [B, z_dim, T', h, w] (after ``conv2``) -> frames [B, 3·p², T, h·2^L, w·2^L], not yet clamped."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.decoder_width * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], cfg.dropout)
        self.upsamples = self._levels(cfg, dims)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(),
                                  CausalConv3d(dims[-1], 3 * cfg.patch_size**2, 3, padding=1))

    @staticmethod
    def _levels(cfg: VAEConfig, dims: list[int]) -> nn.ModuleList:
        """Wan2.1: per level ``num_res_blocks + 1`` residual blocks (and attention at ``attn_scales``), then a
        ×2 upsample whose 2D conv halves the channels (none after the last level), all in one flat list."""
        levels = len(cfg.dim_mult)
        temporal_upsample = cfg.temporal_downsample[::-1]
        layers: list[nn.Module] = []
        scale = 1.0 / 2 ** (levels - 2)
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # every upsample's 2D conv halves the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i < levels - 1:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2.0
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, cache)
        norm, act, conv = self.head
        return conv(act(norm(x)), cache)  # [B, 3·p², T, H/p, W/p], not yet clamped
