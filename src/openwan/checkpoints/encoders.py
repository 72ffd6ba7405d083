"""The two encoders Wan uses, as transformers models: key maps official ⇄ transformers, shape-based configs,
and reading either layout from disk.

umT5-XXL: the release ships ``models_t5_umt5-xxl-enc-bf16.pth`` (the reference's own T5 encoder); the
"-Diffusers" releases ship ``text_encoder/``, a transformers ``UMT5EncoderModel`` folder. Both hold the same
maths; only the names differ, and the official gated FFN ``fc2(fc1(x) * gelu_tanh(gate(x)))`` becomes
transformers' ``wo(gelu_tanh(wi_0(x)) * wi_1(x))``: ``gate.0`` is ``wi_0`` (the activated branch), ``fc1`` is
``wi_1``.

CLIP: the release ships the whole open-clip XLM-RoBERTa ViT-H/14 (``visual.*`` and ``textual.*``); Wan uses
only the vision tower, and only up to its penultimate block. Its fused ``to_qkv`` projection is stored as
[q; k; v] on the output axis, so it splits into transformers' ``q_proj``, ``k_proj``, ``v_proj`` by three
equal chunks. The "-Diffusers" releases ship ``image_encoder/``, a transformers
``CLIPVisionModelWithProjection`` folder of the full tower.

The transformers-side names here are those of ``UMT5EncoderModel`` and ``CLIPVisionModel`` in transformers 5
(the vision model has no ``vision_model.`` prefix; files written with one are accepted).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from openwan.checkpoints.io import CheckpointError, read_state_dict
from openwan.configs import IMAGE_ENCODER_PRESETS, ImageEncoderConfig, TextEncoderConfig

StateDict = dict[str, torch.Tensor]

UMT5_OFFICIAL_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_OFFICIAL_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
UMT5_RELEASE_HINT = (
    f"a Wan release folder holds {UMT5_OFFICIAL_FILE}; a diffusers-format release holds text_encoder/ "
    "(config.json and safetensors)"
)
CLIP_RELEASE_HINT = (
    f"a Wan i2v/flf2v release folder holds {CLIP_OFFICIAL_FILE}; a diffusers-format release holds "
    "image_encoder/ (config.json and safetensors)"
)
_HF_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                    "pytorch_model.bin")

# ----------------------------------------------------------------------------------------------- umT5

_UMT5_TOP = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_UMT5_BLOCK = {  # official suffix under blocks.{i}. -> transformers suffix under encoder.block.{i}.
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_UMT5_TIED = "encoder.embed_tokens.weight"  # the same tensor as shared.weight in transformers
_OFFICIAL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")


def _listed(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:5])
    return shown + (f", ... ({len(keys) - 5} more)" if len(keys) > 5 else "")


def _rename_all(state: Mapping[str, torch.Tensor], rename, what: str) -> StateDict:
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        new = rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"the weights hold keys that are not {what} keys ({_listed(unknown)}); check them.")
    return out


def _umt5_key_to_hf(key: str) -> str | None:
    if key in _UMT5_TOP:
        return _UMT5_TOP[key]
    m = _OFFICIAL_BLOCK.match(key)
    if m and m.group(2) in _UMT5_BLOCK:
        return f"encoder.block.{m.group(1)}.{_UMT5_BLOCK[m.group(2)]}"
    return None


_UMT5_TOP_INV = {v: k for k, v in _UMT5_TOP.items()}
_UMT5_BLOCK_INV = {v: k for k, v in _UMT5_BLOCK.items()}


def _umt5_key_to_official(key: str) -> str | None:
    if key in _UMT5_TOP_INV:
        return _UMT5_TOP_INV[key]
    m = _HF_BLOCK.match(key)
    if m and m.group(2) in _UMT5_BLOCK_INV:
        return f"blocks.{m.group(1)}.{_UMT5_BLOCK_INV[m.group(2)]}"
    return None


def umt5_official_to_hf(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Official umT5 encoder keys -> ``UMT5EncoderModel`` keys (both tied embedding names, one tensor)."""
    out = _rename_all(state, _umt5_key_to_hf, "official umT5 encoder")
    if "shared.weight" in out:
        out[_UMT5_TIED] = out["shared.weight"]
    return out


def umt5_hf_to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """``UMT5EncoderModel`` keys -> official umT5 encoder keys; the tied embedding is written once."""
    state = dict(state)
    tied = state.pop(_UMT5_TIED, None)
    if "shared.weight" not in state and tied is not None:
        state["shared.weight"] = tied
    return _rename_all(state, _umt5_key_to_official, "transformers UMT5EncoderModel")


def _need(state: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the weights lack {key!r}, so they are not {what} weights; check the file.")
    return state[key]


def _block_count(state: Mapping[str, torch.Tensor], pattern: str, what: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if not indices:
        raise ValueError(f"the weights hold no transformer blocks, so they are not {what} weights.")
    return max(indices) + 1


def infer_umt5_config(state: Mapping[str, torch.Tensor]) -> TextEncoderConfig:
    """The umT5 encoder architecture read off official-layout tensor shapes.

    The head count is the width of the relative position bias table; ``max_distance`` and ``eps`` are not
    visible in the shapes and keep the released values (128, 1e-6).
    """
    what = "umT5 encoder"
    vocab, dim = _need(state, "token_embedding.weight", what).shape
    dim_attn = _need(state, "blocks.0.attn.q.weight", what).shape[0]
    ffn_dim = _need(state, "blocks.0.ffn.fc1.weight", what).shape[0]
    num_buckets, num_heads = _need(state, "blocks.0.pos_embedding.embedding.weight", what).shape
    if dim_attn % num_heads:
        raise ValueError(f"attention width {dim_attn} does not split into {num_heads} heads; check the file.")
    return TextEncoderConfig(
        vocab_size=int(vocab), dim=int(dim), dim_attn=int(dim_attn), ffn_dim=int(ffn_dim),
        num_heads=int(num_heads), num_layers=_block_count(state, r"^blocks\.(\d+)\.", what),
        num_buckets=int(num_buckets),
    )


# ----------------------------------------------------------------------------------------------- CLIP

_CLIP_TOP = {  # official -> transformers, for tensors stored with the same shape
    "visual.patch_embedding.weight": "embeddings.patch_embedding.weight",
    "visual.pre_norm.weight": "pre_layrnorm.weight",
    "visual.pre_norm.bias": "pre_layrnorm.bias",
    # The tower's final norm; Wan's features stop before it, so it only feeds transformers' pooler_output.
    "visual.post_norm.weight": "post_layernorm.weight",
    "visual.post_norm.bias": "post_layernorm.bias",
}
# official suffix under visual.transformer.{i}. -> transformers suffix under encoder.layers.{i}.
_CLIP_BLOCK = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "attn.proj.weight": "self_attn.out_proj.weight",
    "attn.proj.bias": "self_attn.out_proj.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight",
    "mlp.0.bias": "mlp.fc1.bias",
    "mlp.2.weight": "mlp.fc2.weight",
    "mlp.2.bias": "mlp.fc2.bias",
}
_CLIP_QKV = ("q_proj", "k_proj", "v_proj")  # the order of the chunks of the fused to_qkv output
# The parts of the released CLIP that Wan never runs: the text tower, the projection head, the logit scale.
_CLIP_UNUSED = re.compile(r"^(textual\.|log_scale$|visual\.head$)")
_CLIP_OFFICIAL_BLOCK = re.compile(r"^visual\.transformer\.(\d+)\.(.+)$")
_CLIP_HF_BLOCK = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_HF_VISION_PREFIX = "vision_model."


def clip_official_to_hf(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Official open-clip keys -> ``CLIPVisionModel`` keys, for every block of the vision tower.

    The text tower, ``visual.head`` and ``log_scale`` are dropped (Wan does not use them); tensors come out as
    views of the inputs, so a memory-mapped file is not copied.
    """
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        if _CLIP_UNUSED.match(key):
            continue
        if key in _CLIP_TOP:
            out[_CLIP_TOP[key]] = value
        elif key == "visual.cls_embedding":
            out["embeddings.class_embedding"] = value.reshape(value.shape[-1])  # (1, 1, D) -> (D,)
        elif key == "visual.pos_embedding":
            out["embeddings.position_embedding.weight"] = value.reshape(value.shape[-2:])  # (1,N,D) -> (N,D)
        elif (m := _CLIP_OFFICIAL_BLOCK.match(key)) and m.group(2) in _CLIP_BLOCK:
            out[f"encoder.layers.{m.group(1)}.{_CLIP_BLOCK[m.group(2)]}"] = value
        elif m and m.group(2) in ("attn.to_qkv.weight", "attn.to_qkv.bias"):
            kind = m.group(2).rsplit(".", 1)[1]
            for name, part in zip(_CLIP_QKV, value.chunk(3, dim=0)):
                out[f"encoder.layers.{m.group(1)}.self_attn.{name}.{kind}"] = part
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"the weights hold keys that are not open-clip ViT keys ({_listed(unknown)}); check the file."
        )
    return out


_CLIP_TOP_INV = {v: k for k, v in _CLIP_TOP.items()}
_CLIP_BLOCK_INV = {v: k for k, v in _CLIP_BLOCK.items()}


def clip_hf_to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """``CLIPVisionModel`` keys (with or without the ``vision_model.`` prefix) -> official ``visual.*`` keys.

    A ``CLIPVisionModelWithProjection``'s ``visual_projection`` has no official counterpart and is dropped.
    """
    state = strip_vision_prefix(state)
    out: StateDict = {}
    unknown = []
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _CLIP_TOP_INV:
            out[_CLIP_TOP_INV[key]] = value
        elif key == "embeddings.class_embedding":
            out["visual.cls_embedding"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            out["visual.pos_embedding"] = value.unsqueeze(0)
        elif (m := _CLIP_HF_BLOCK.match(key)) and m.group(2) in _CLIP_BLOCK_INV:
            out[f"visual.transformer.{m.group(1)}.{_CLIP_BLOCK_INV[m.group(2)]}"] = value
        elif m and (p := re.fullmatch(r"self_attn\.([qkv]_proj)\.(weight|bias)", m.group(2))):
            qkv.setdefault((m.group(1), p.group(2)), {})[p.group(1)] = value
        else:
            unknown.append(key)
    for (layer, kind), parts in qkv.items():
        if len(parts) != 3:
            unknown.extend(f"encoder.layers.{layer}.self_attn.{n}.{kind}" for n in parts)
            continue
        fused = torch.cat([parts[n] for n in _CLIP_QKV], dim=0)
        out[f"visual.transformer.{layer}.attn.to_qkv.{kind}"] = fused
    if unknown:
        raise ValueError(
            "the weights hold keys with no official counterpart or an incomplete q/k/v set "
            f"({_listed(unknown)}); check the file."
        )
    return out


def strip_vision_prefix(state: Mapping[str, torch.Tensor]) -> StateDict:
    """A transformers CLIP vision state dict in ``CLIPVisionModel``'s own names (no prefix, no projection)."""
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith("visual_projection."):
            continue
        out[key.removeprefix(_HF_VISION_PREFIX)] = value
    return out


def keep_clip_layers(state: Mapping[str, torch.Tensor], num_layers: int) -> StateDict:
    """``CLIPVisionModel`` tensors of the first ``num_layers`` encoder layers and of everything else."""
    out: StateDict = {}
    for key, value in state.items():
        m = _CLIP_HF_BLOCK.match(key)
        if m is None or int(m.group(1)) < num_layers:
            out[key] = value
    return out


def infer_clip_config(state: Mapping[str, torch.Tensor], num_heads: int | None = None) -> ImageEncoderConfig:
    """The CLIP vision tower's architecture read off official-layout tensor shapes.

    The head count is not visible in the shapes: without ``num_heads`` it is taken from the preset of the same
    width (ViT-H/14, width 1280: 16 heads).
    """
    what = "open-clip ViT"
    patch = _need(state, "visual.patch_embedding.weight", what)  # [D, 3, p, p]
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    tokens = int(_need(state, "visual.pos_embedding", what).shape[-2])
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"visual.pos_embedding has {tokens} tokens, not 1 + a square grid; check the file.")
    hidden = int(_need(state, "visual.transformer.0.mlp.0.weight", what).shape[0])
    num_layers = _block_count(state, r"^visual\.transformer\.(\d+)\.", what)
    if num_layers < 2:
        raise ValueError("the vision tower has a single block; Wan uses the features before the last block.")
    if num_heads is None:
        same_width = [p.num_heads for p in IMAGE_ENCODER_PRESETS.values() if p.width == width]
        if not same_width:
            raise ValueError(f"the head count of a width-{width} vision tower is unknown; pass num_heads.")
        num_heads = same_width[0]
    return ImageEncoderConfig(
        image_size=grid * patch_size, patch_size=patch_size, width=width, num_layers=num_layers,
        num_heads=num_heads, mlp_ratio=hidden / width,
    )


# -------------------------------------------------------------------------------------- reading files


def _hf_weights(folder: Path) -> Path | None:
    for name in _HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    singles = sorted(folder.glob("*.safetensors"))
    return singles[0] if len(singles) == 1 else None


def _locate(
    path: str | Path, official: str, official_glob: str, subfolder: str, hint: str
) -> tuple[Path, Path | None]:
    """The weights file to read, and the folder of the config.json that may describe it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give the weights file or a release folder: {hint}.")
    if path.is_file():
        return path, (path.parent if (path.parent / "config.json").is_file() else None)
    if (path / official).is_file():
        return path / official, None
    if (path / subfolder).is_dir():
        path = path / subfolder
    if (path / "config.json").is_file() and (weights := _hf_weights(path)) is not None:
        return weights, path
    candidates = sorted(path.glob(official_glob))
    if len(candidates) == 1:
        return candidates[0], None
    raise CheckpointError(f"{path} holds no encoder weights I can identify; {hint}.")


def _hf_config(cls, folder: Path):
    try:
        return cls.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(
            f"{folder / 'config.json'} is not a usable {cls.__name__} ({str(err).splitlines()[0]}); "
            "restore it from the release."
        ) from None


def _need_config(folder: Path | None, weights: Path, hint: str) -> Path:
    if folder is None:
        raise CheckpointError(
            f"{weights} is in transformers' layout but has no config.json beside it; give the whole folder "
            f"({hint})."
        )
    return folder


def _converted(convert, state: Mapping[str, torch.Tensor], source: Path):
    try:
        return convert(state)
    except CheckpointError:
        raise
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None


def read_umt5(path: str | Path, check_finite: bool | None = None):
    """(``UMT5Config``, ``UMT5EncoderModel`` state dict, the weights file read) for any supported layout.

    The layout is told by the key names: official files get their config from the tensor shapes, transformers
    files from the config.json beside them.
    """
    from transformers import UMT5Config

    weights, folder = _locate(path, UMT5_OFFICIAL_FILE, "models_t5_*.pth", "text_encoder", UMT5_RELEASE_HINT)
    state = read_state_dict(weights, check_finite)
    if "token_embedding.weight" in state or any(k.startswith("blocks.") for k in state):
        config = _converted(infer_umt5_config, state, weights).to_hf()
        return config, _converted(umt5_official_to_hf, state, weights), weights
    config = _hf_config(UMT5Config, _need_config(folder, weights, UMT5_RELEASE_HINT))
    state = {k: v for k, v in state.items() if not k.startswith(("decoder.", "lm_head."))}
    embedding = state.get("shared.weight", state.get(_UMT5_TIED))
    if embedding is not None:  # files keep one of the two tied names
        state["shared.weight"] = state[_UMT5_TIED] = embedding
    return config, state, weights


def read_clip(path: str | Path, check_finite: bool | None = None):
    """(``CLIPVisionConfig`` of the blocks Wan runs, ``CLIPVisionModel`` state dict of those blocks, source).

    Both layouts hold the full tower; the config and tensors returned stop one block short of it.
    """
    from transformers import CLIPVisionConfig

    weights, folder = _locate(
        path, CLIP_OFFICIAL_FILE, "models_clip_*.pth", "image_encoder", CLIP_RELEASE_HINT
    )
    state = read_state_dict(weights, check_finite)
    if any(k.startswith("visual.") for k in state):
        config = _converted(infer_clip_config, state, weights).to_hf()
        state = _converted(clip_official_to_hf, state, weights)
    else:
        config = _hf_config(CLIPVisionConfig, _need_config(folder, weights, CLIP_RELEASE_HINT))
        if config.num_hidden_layers < 2:
            raise CheckpointError(f"{weights} describes a one-block vision tower; Wan needs the whole ViT.")
        config.num_hidden_layers -= 1
        state = strip_vision_prefix(state)
    return config, keep_clip_layers(state, config.num_hidden_layers), weights


__all__ = [
    "UMT5_OFFICIAL_FILE",
    "CLIP_OFFICIAL_FILE",
    "umt5_official_to_hf",
    "umt5_hf_to_official",
    "infer_umt5_config",
    "clip_official_to_hf",
    "clip_hf_to_official",
    "strip_vision_prefix",
    "keep_clip_layers",
    "infer_clip_config",
    "read_umt5",
    "read_clip",
]
