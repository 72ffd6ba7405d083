"""Architecture from tensor shapes, for files that ship without a config (VAE .pth, a bare DiT .safetensors)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from openwan.checkpoints import vae22_keys
from openwan.configs import DiTConfig, VAEConfig, default_latent_stats

# Every released DiT uses 128-dim heads; the head count is not visible in the tensor shapes otherwise.
RELEASED_HEAD_DIM = 128


def _need(state: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the weights lack {key!r}, so they are not a {what} checkpoint; check the file.")
    return state[key]


def dit_block_count(state: Mapping[str, torch.Tensor]) -> int:
    """How many ``blocks.{i}`` the DiT tensors hold (0 for none)."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(blocks) + 1 if blocks else 0


def dit_image_tokens(state: Mapping[str, torch.Tensor]) -> int:
    """CLIP image tokens the DiT tensors take: 0 without ``img_emb``, else 257 or 514 (``emb_pos`` says which)."""
    if "img_emb.proj.0.weight" not in state:
        return 0
    return int(state["img_emb.emb_pos"].shape[1]) if "img_emb.emb_pos" in state else 257


def infer_dit_config(state: Mapping[str, torch.Tensor], head_dim: int = RELEASED_HEAD_DIM) -> DiTConfig:
    """A DiT config from official-layout tensors. ``head_dim`` is assumed (128 in every release)."""
    patch = _need(state, "patch_embedding.weight", "Wan DiT")
    dim, in_dim = int(patch.shape[0]), int(patch.shape[1])
    patch_size = tuple(int(s) for s in patch.shape[2:])
    num_layers = dit_block_count(state)
    if not num_layers:
        raise ValueError("the weights have no 'blocks.{i}' tensors, so they are not a Wan DiT checkpoint.")
    ffn_dim = int(_need(state, "blocks.0.ffn.0.weight", "Wan DiT").shape[0])
    patch_volume = patch_size[0] * patch_size[1] * patch_size[2]
    out_dim = int(_need(state, "head.head.weight", "Wan DiT").shape[0]) // patch_volume
    image_tokens, image_dim = dit_image_tokens(state), 1280
    if image_tokens:
        image_dim = int(state["img_emb.proj.0.weight"].shape[0])
    model_type = DiTConfig.kind_of(in_dim, out_dim, image_tokens)
    if dim % head_dim:
        raise ValueError(f"dim {dim} is not a multiple of head_dim {head_dim}; give the model's config.json.")
    return DiTConfig(
        model_type=model_type,
        patch_size=patch_size,
        in_dim=in_dim,
        out_dim=out_dim,
        dim=dim,
        ffn_dim=ffn_dim,
        freq_dim=int(_need(state, "time_embedding.0.weight", "Wan DiT").shape[1]),
        text_dim=int(_need(state, "text_embedding.0.weight", "Wan DiT").shape[1]),
        num_heads=dim // head_dim,
        num_layers=num_layers,
        qk_norm="blocks.0.self_attn.norm_q.weight" in state,
        cross_attn_norm="blocks.0.norm3.weight" in state,
        image_tokens=image_tokens,
        image_dim=image_dim,
    )


def infer_vae_config(state: Mapping[str, torch.Tensor]) -> VAEConfig:
    """A Wan2.1 or Wan2.2 VAE config from official-layout tensors (the released files ship no config)."""
    if vae22_keys.is_residual_vae(state):  # Wan2.2: levels nested as encoder.downsamples.{level}.downsamples.{j}
        return vae22_keys.infer_vae22_config(state)
    dim = int(_need(state, "encoder.conv1.weight", "Wan2.1 VAE").shape[0])
    z_dim = int(_need(state, "conv2.weight", "Wan2.1 VAE").shape[0])
    # Encoder downsamples are flat: per level `r` residual blocks, then a resample (none after the last level).
    index = {}
    for k in state:
        m = re.match(r"encoder\.downsamples\.(\d+)\.(residual|resample|time_conv|shortcut)", k)
        if m:
            index.setdefault(int(m.group(1)), set()).add(m.group(2))
    if not index:
        raise ValueError("the weights have no 'encoder.downsamples' tensors, so they are not a Wan2.1 VAE checkpoint.")
    resamples = [i for i in sorted(index) if "resample" in index[i]]
    r = resamples[0] if resamples else len(index)
    dim_mult, temporal = [], []
    for level in range(len(resamples) + 1):
        first_block = level * (r + 1)
        out_ch = int(state[f"encoder.downsamples.{first_block}.residual.2.weight"].shape[0])
        dim_mult.append(out_ch // dim)
        if level < len(resamples):
            temporal.append("time_conv" in index[resamples[level]])
    # The decoder starts at decoder width × the last multiplier; a wider decoder than encoder is decoder_dim.
    decoder_width = int(_need(state, "decoder.conv1.weight", "Wan2.1 VAE").shape[0]) // dim_mult[-1]
    return VAEConfig(
        dim=dim,
        decoder_dim=None if decoder_width == dim else decoder_width,
        z_dim=z_dim,
        dim_mult=tuple(dim_mult),
        num_res_blocks=r,
        temporal_downsample=tuple(temporal),
        patch_size=vae22_keys.patch_size_of(state),
        **default_latent_stats(z_dim),
    )
