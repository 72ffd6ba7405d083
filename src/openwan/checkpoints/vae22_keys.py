"""The Wan2.2 VAE's checkpoint layouts: its architecture read off the tensor shapes, its level keys in the official
and diffusers layouts, and the diffusers config fields it adds.

The released ``Wan2.2_VAE.pth`` nests its levels — ``encoder.downsamples.{level}.downsamples.{j}`` (``j`` <
num_res_blocks: residual blocks, then the resample) and ``decoder.upsamples.{level}.upsamples.{j}`` (num_res_blocks
+ 1 blocks, then the resample) — where diffusers has ``down_blocks.{level}.resnets.{j}`` / ``.downsampler`` and
``up_blocks.{level}.resnets.{j}`` / ``.upsampler``. The stem, middle, head and the 1×1 convs are named as in Wan2.1
(:mod:`openwan.checkpoints.keymaps`, which calls in here for a residual VAE).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from openwan.configs import VAEConfig, default_latent_stats

Pairs = list[tuple[str, str]]

RESIDUAL_MARKER = "encoder.downsamples.0.downsamples.0.residual.0.gamma"
_DIFFUSERS_MARKER = "encoder.down_blocks.0.resnets.0."


def is_residual_vae(keys) -> bool:
    """Whether official-layout keys are those of a residual (Wan2.2) VAE."""
    return RESIDUAL_MARKER in keys


def is_residual_diffusers_vae(keys) -> bool:
    """Whether diffusers-layout keys are those of a residual (Wan2.2) ``AutoencoderKLWan``."""
    return any(k.startswith(_DIFFUSERS_MARKER) for k in keys)


def level_pairs(cfg: VAEConfig, block: Pairs) -> Pairs:
    """(official, diffusers) module paths of a residual VAE's encoder and decoder levels; ``block`` names the
    parts of one residual block on both sides."""
    r, levels = cfg.num_res_blocks, len(cfg.dim_mult)
    pairs: Pairs = []
    for i in range(levels):
        ours, theirs = f"encoder.downsamples.{i}.downsamples", f"encoder.down_blocks.{i}"
        for j in range(r):
            pairs += [(f"{ours}.{j}.{a}", f"{theirs}.resnets.{j}.{b}") for a, b in block]
        if i < levels - 1:
            pairs.append((f"{ours}.{r}", f"{theirs}.downsampler"))
        ours, theirs = f"decoder.upsamples.{i}.upsamples", f"decoder.up_blocks.{i}"
        for j in range(r + 1):
            pairs += [(f"{ours}.{j}.{a}", f"{theirs}.resnets.{j}.{b}") for a, b in block]
        if i < levels - 1:
            pairs.append((f"{ours}.{r + 1}", f"{theirs}.upsampler"))
    return pairs


def structure_from_diffusers(state: Mapping[str, torch.Tensor]) -> VAEConfig:
    """Enough of a residual VAE's architecture to rename diffusers keys (levels, blocks per level)."""
    up = {int(k.split(".")[2]) for k in state if k.startswith("decoder.up_blocks.")}
    resnets = {int(k.split(".")[4]) for k in state if k.startswith("decoder.up_blocks.0.resnets.")}
    if not up or not resnets:
        raise ValueError("the VAE weights have no decoder.up_blocks tensors; this is not a Wan2.2 VAE.")
    levels = max(up) + 1
    return VAEConfig(dim_mult=(1,) * levels, num_res_blocks=max(resnets), temporal_downsample=(False,) * (levels - 1),
                     residual=True)


def _tensor(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the weights lack {key!r}, so they are not a Wan2.2 VAE checkpoint; check the file.")
    return state[key]


def patch_size_of(state: Mapping[str, torch.Tensor]) -> int:
    """The pixel patch side the encoder's stem takes: its input channels are 3·p²."""
    channels = int(_tensor(state, "encoder.conv1.weight").shape[1])
    p = math.isqrt(channels // 3)
    if 3 * p * p != channels:
        raise ValueError(f"encoder.conv1 takes {channels} input channels, not 3·p² for any patch size p; "
                         "this is not a Wan VAE checkpoint.")
    return p


def infer_vae22_config(state: Mapping[str, torch.Tensor]) -> VAEConfig:
    """A residual (Wan2.2) VAE config from official-layout tensors (the released file ships no config)."""
    dim = int(_tensor(state, "encoder.conv1.weight").shape[0])
    z_dim = int(_tensor(state, "conv2.weight").shape[0])
    levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k)))
    r = 1 + max(int(m.group(1)) for k in state
                if (m := re.match(r"encoder\.downsamples\.0\.downsamples\.(\d+)\.residual\.", k)))
    dim_mult = tuple(int(_tensor(state, f"encoder.downsamples.{i}.downsamples.0.residual.2.weight").shape[0]) // dim
                     for i in range(levels))
    temporal = tuple(f"encoder.downsamples.{i}.downsamples.{r}.time_conv.weight" in state for i in range(levels - 1))
    decoder_width = int(_tensor(state, "decoder.conv1.weight").shape[0]) // dim_mult[-1]
    return VAEConfig(
        dim=dim,
        decoder_dim=None if decoder_width == dim else decoder_width,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=r,
        temporal_downsample=temporal,
        patch_size=patch_size_of(state),
        residual=True,
        **default_latent_stats(z_dim),
    )


def diffusers_config_fields(cfg: VAEConfig) -> dict:
    """What a diffusers ``AutoencoderKLWan`` config adds for a patchified or residual VAE (nothing for Wan2.1)."""
    if cfg.patch_size == 1 and not cfg.residual:
        return {}
    channels = 3 * cfg.patch_size**2  # diffusers patchifies outside the encoder, so the stem takes these
    return {"is_residual": cfg.residual, "patch_size": cfg.patch_size if cfg.patch_size > 1 else None,
            "in_channels": channels, "out_channels": channels, "scale_factor_spatial": cfg.spatial_compression,
            "scale_factor_temporal": cfg.temporal_compression}


def config_fields_from_diffusers(data: Mapping) -> dict:
    """Our ``patch_size`` / ``residual`` fields from a diffusers ``vae/config.json`` (checked for consistency)."""
    p = int(data.get("patch_size") or 1)
    channels = data.get("in_channels", 3 * p * p)
    if channels != 3 * p * p or data.get("out_channels", channels) != channels:
        raise ValueError(f"the VAE config says patch_size {p} but in_channels {channels} / out_channels "
                         f"{data.get('out_channels')}; a Wan VAE codes RGB, so both must be 3·patch_size² = "
                         f"{3 * p * p}.")
    return {"patch_size": p, "residual": bool(data.get("is_residual", False))}
