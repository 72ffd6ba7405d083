"""State-dict key maps between the official Wan layout (our modules' own names) and diffusers' layout.

Both directions are derived from one table per model, so they cannot drift apart. The VAE map is computed from
the architecture (number of residual blocks per level), not hard-coded for the released size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from openwan.checkpoints import vae22_keys
from openwan.configs import DiTConfig, VAEConfig

StateDict = dict[str, torch.Tensor]

# ------------------------------------------------------------------------------------------------ DiT

# (official module path, diffusers module path); a key maps when it equals the path or continues with ".".
_DIT_TOP = [
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
]
_DIT_BLOCK = [
    ("modulation", "scale_shift_table"),
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("norm3", "norm2"),  # the cross-attention pre-norm: norm3 in the reference, norm2 in diffusers
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("cross_attn.k_img", "attn2.add_k_proj"),
    ("cross_attn.v_img", "attn2.add_v_proj"),
    ("cross_attn.norm_k_img", "attn2.norm_added_k"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
]


def _rename(key: str, table: list[tuple[str, str]], src: int) -> str | None:
    for pair in table:
        prefix = pair[src]
        if key == prefix or key.startswith(prefix + "."):
            return pair[1 - src] + key[len(prefix):]
    return None


def rename_keys(state: Mapping[str, torch.Tensor], src: int, blocks: str, block_table: list[tuple[str, str]],
                top_table: list[tuple[str, str]]) -> tuple[StateDict, list[str]]:
    """``state``'s keys from layout ``src`` (0 official, 1 diffusers) to the other: keys under ``blocks.N.``
    through ``block_table``, the others through ``top_table``. Returns (renamed state, keys neither table names)."""
    block_key = re.compile(rf"^{re.escape(blocks)}\.(\d+)\.(.+)$")
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        match = block_key.match(key)
        if match:
            rest = _rename(match.group(2), block_table, src)
            new = None if rest is None else f"{blocks}.{match.group(1)}.{rest}"
        else:
            new = _rename(key, top_table, src)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    return out, unknown


def _convert_dit(state: Mapping[str, torch.Tensor], src: int) -> StateDict:
    out, unknown = rename_keys(state, src, "blocks", _DIT_BLOCK, _DIT_TOP)
    if unknown:
        layout = ("official", "diffusers")[src]
        raise ValueError(
            f"{len(unknown)} keys are not part of the Wan DiT's {layout} layout (e.g. {', '.join(unknown[:4])}); "
            "this file is not a Wan2.1/2.2 transformer checkpoint."
        )
    return out


def dit_official_to_diffusers(state: Mapping[str, torch.Tensor]) -> StateDict:
    return _convert_dit(state, src=0)


def dit_diffusers_to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    return _convert_dit(state, src=1)


def is_diffusers_dit(keys) -> bool:
    return any(k.startswith(("condition_embedder.", "proj_out.")) for k in keys)


def dit_config_to_diffusers(cfg: DiTConfig) -> dict:
    """diffusers' ``WanTransformer3DModel`` config for the same network."""
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_dim,
        "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim,
        "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers,
        "cross_attn_norm": cfg.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None,
        "eps": cfg.eps,
        "image_dim": cfg.image_dim if cfg.has_image_input else None,
        "added_kv_proj_dim": cfg.dim if cfg.has_image_input else None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": 514 if cfg.image_tokens == 514 else None,
    }


def dit_config_from_diffusers(data: Mapping) -> DiTConfig:
    """Our config from a diffusers ``transformer/config.json``."""
    try:
        heads, head_dim = int(data["num_attention_heads"]), int(data["attention_head_dim"])
        in_dim, out_dim = int(data["in_channels"]), int(data["out_channels"])
        image_tokens = 0
        if data.get("image_dim"):
            image_tokens = 514 if data.get("pos_embed_seq_len") == 514 else 257
        return DiTConfig(
            model_type=DiTConfig.kind_of(in_dim, out_dim, image_tokens),
            patch_size=tuple(data.get("patch_size", (1, 2, 2))),
            in_dim=in_dim,
            out_dim=out_dim,
            dim=heads * head_dim,
            ffn_dim=int(data["ffn_dim"]),
            freq_dim=int(data.get("freq_dim", 256)),
            text_dim=int(data.get("text_dim", 4096)),
            num_heads=heads,
            num_layers=int(data["num_layers"]),
            qk_norm=bool(data.get("qk_norm", True)),
            cross_attn_norm=bool(data.get("cross_attn_norm", True)),
            eps=float(data.get("eps", 1e-6)),
            image_tokens=image_tokens,
            image_dim=int(data.get("image_dim") or 1280),
            text_len=int(data.get("text_len", 512)),  # not a diffusers field: openwan convert writes it
        )
    except KeyError as err:
        raise ValueError(
            f"the diffusers transformer config lacks {err}; it is not a WanTransformer3DModel config."
        ) from None


# ------------------------------------------------------------------------------------------------ VAE

_RES = [("residual.0", "norm1"), ("residual.2", "conv1"), ("residual.3", "norm2"), ("residual.6", "conv2"),
        ("shortcut", "conv_shortcut")]
_MIDDLE = [(f"middle.0.{a}", f"mid_block.resnets.0.{b}") for a, b in _RES] + [
    (f"middle.2.{a}", f"mid_block.resnets.1.{b}") for a, b in _RES] + [
    ("middle.1", "mid_block.attentions.0"), ("head.0", "norm_out"), ("head.2", "conv_out"), ("conv1", "conv_in")]
_TOP = [("conv1", "quant_conv"), ("conv2", "post_quant_conv")]


def _vae_module_pairs(cfg: VAEConfig) -> list[tuple[str, str]]:
    """Every (official, diffusers) module-path pair of a Wan2.1 or Wan2.2 VAE with this architecture."""
    r, levels = cfg.num_res_blocks, len(cfg.dim_mult)
    pairs = list(_TOP)
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.{a}", f"{side}.{b}") for a, b in _MIDDLE]
    if cfg.residual:  # Wan2.2: levels nested per level on both sides
        return pairs + vae22_keys.level_pairs(cfg, _RES)
    # Encoder: per level r residual blocks, then a resample (not after the last level); flat indices both sides.
    n = 0
    for level in range(levels):
        for _ in range(r):
            pairs += [(f"encoder.downsamples.{n}.{a}", f"encoder.down_blocks.{n}.{b}") for a, b in _RES]
            n += 1
        if level != levels - 1:
            pairs.append((f"encoder.downsamples.{n}", f"encoder.down_blocks.{n}"))
            n += 1
    # Decoder: per level r+1 residual blocks, then an upsample (not after the last); diffusers groups by level.
    n = 0
    for level in range(levels):
        for j in range(r + 1):
            pairs += [(f"decoder.upsamples.{n}.{a}", f"decoder.up_blocks.{level}.resnets.{j}.{b}") for a, b in _RES]
            n += 1
        if level != levels - 1:
            pairs.append((f"decoder.upsamples.{n}", f"decoder.up_blocks.{level}.upsamplers.0"))
            n += 1
    return pairs


def _convert_vae(state: Mapping[str, torch.Tensor], cfg: VAEConfig, src: int) -> StateDict:
    # Longest prefixes first so "encoder.conv1" is tried before the top-level "conv1".
    table = sorted(_vae_module_pairs(cfg), key=lambda p: -len(p[src]))
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        new = _rename(key, table, src)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys are not part of a Wan VAE of this architecture (e.g. {', '.join(unknown[:4])});"
            f" this file is not a Wan{'2.2' if cfg.residual else '2.1'} VAE checkpoint."
        )
    return out


def vae_official_to_diffusers(state: Mapping[str, torch.Tensor], cfg: VAEConfig) -> StateDict:
    return _convert_vae(state, cfg, src=0)


def vae_diffusers_to_official(state: Mapping[str, torch.Tensor], cfg: VAEConfig) -> StateDict:
    return _convert_vae(state, cfg, src=1)


def is_diffusers_vae(keys) -> bool:
    return any(k.startswith(("quant_conv.", "post_quant_conv.", "encoder.conv_in.")) for k in keys)


def vae_config_to_diffusers(cfg: VAEConfig) -> dict:
    return {
        "_class_name": "AutoencoderKLWan",
        "base_dim": cfg.dim,
        "z_dim": cfg.z_dim,
        "dim_mult": list(cfg.dim_mult),
        "num_res_blocks": cfg.num_res_blocks,
        "attn_scales": list(cfg.attn_scales),
        "temperal_downsample": list(cfg.temporal_downsample),
        "dropout": cfg.dropout,
        "latents_mean": list(cfg.latents_mean),
        "latents_std": list(cfg.latents_std),
        **({"decoder_base_dim": cfg.decoder_dim} if cfg.decoder_dim is not None else {}),
        **vae22_keys.diffusers_config_fields(cfg),
    }


def vae_config_from_diffusers(data: Mapping) -> VAEConfig:
    """Our config from a diffusers ``vae/config.json``, Wan2.1 or Wan2.2 (keys diffusers adds for other VAEs are
    ignored)."""
    known = {"base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample", "dropout",
             "latents_mean", "latents_std", "decoder_base_dim"}
    fields = {k: v for k, v in data.items() if k in known and v is not None}
    return VAEConfig.from_dict({**fields, **vae22_keys.config_fields_from_diffusers(data)})
