"""The Wan2.1 VACE DiT in both layouts: key map official ⇄ diffusers (``WanVACETransformer3DModel``), its config
from either config.json or from the tensor shapes, and back to diffusers' config.

The base blocks map as in :mod:`openwan.checkpoints.keymaps`; the VACE blocks use the same block table plus their
two projections (``before_proj`` / ``proj_in``, ``after_proj`` / ``proj_out``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import fields

import torch

from openwan.checkpoints import keymaps
from openwan.checkpoints.infer import infer_dit_config
from openwan.configs import VaceConfig

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

_VACE_BLOCK = keymaps._DIT_BLOCK + [("before_proj", "proj_in"), ("after_proj", "proj_out")]
_VACE_BLOCK_KEY = re.compile(r"^vace_blocks\.(\d+)\.(.+)$")
_VACE_TOP = [("vace_patch_embedding", "vace_patch_embedding")]
_VACE_CLASSES = {"VaceWanModel", "WanVACETransformer3DModel"}


def is_vace_state(keys) -> bool:
    """Whether DiT tensors (either layout) hold VACE blocks."""
    return any(k.startswith(("vace_blocks.", "vace_patch_embedding.")) for k in keys)


def is_vace_config(data: Mapping) -> bool:
    """Whether a DiT config.json (either layout) describes a VACE model."""
    return (data.get("model_type") == "vace" or str(data.get("_class_name")) in _VACE_CLASSES
            or bool({"vace_layers", "vace_in_dim", "vace_in_channels"} & set(data)))


def _convert(state: Mapping[str, torch.Tensor], src: int) -> StateDict:
    base = {k: v for k, v in state.items() if not k.startswith("vace_")}
    out = keymaps.dit_official_to_diffusers(base) if src == 0 else keymaps.dit_diffusers_to_official(base)
    vace = {k: v for k, v in state.items() if k not in base}
    renamed, unknown = keymaps.rename_keys(vace, src, "vace_blocks", _VACE_BLOCK, _VACE_TOP)
    if unknown:
        layout = ("official", "diffusers")[src]
        raise ValueError(f"{len(unknown)} keys are not part of the Wan VACE DiT's {layout} layout (e.g. "
                         f"{', '.join(unknown[:4])}); this file is not a Wan2.1-VACE transformer checkpoint.")
    return {**out, **renamed}


def vace_official_to_diffusers(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Official ``VaceWanModel`` keys -> diffusers' ``WanVACETransformer3DModel`` keys."""
    return _convert(state, src=0)


def vace_diffusers_to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """diffusers' ``WanVACETransformer3DModel`` keys -> official ``VaceWanModel`` keys."""
    return _convert(state, src=1)


def vace_config_from_json(data: Mapping) -> VaceConfig:
    """A VaceConfig from a release's config.json: the official one, or diffusers' transformer/config.json."""
    if "num_attention_heads" in data:
        base = keymaps.dit_config_from_diffusers({k: v for k, v in data.items() if not k.startswith("vace_")})
        layers = data.get("vace_layers") or ()
        return _from_base(base, tuple(layers), int(data.get("vace_in_channels", 96)))
    known = {f.name for f in fields(VaceConfig)}
    extra = sorted(k for k in data if k not in known and not k.startswith("_"))
    if extra:
        log.warning("ignoring config.json keys openwan does not use: %s", ", ".join(extra))
    return VaceConfig.from_dict({**{k: v for k, v in data.items() if k in known}, "model_type": "vace"})


def _from_base(base, vace_layers: tuple[int, ...], vace_in_dim: int) -> VaceConfig:
    kept = {f.name: getattr(base, f.name) for f in fields(base) if f.name not in ("model_type", "image_tokens")}
    return VaceConfig(**kept, vace_layers=vace_layers, vace_in_dim=vace_in_dim)


def vace_config_to_diffusers(cfg: VaceConfig) -> dict:
    """diffusers' ``WanVACETransformer3DModel`` config for the same network."""
    return {**keymaps.dit_config_to_diffusers(cfg), "_class_name": "WanVACETransformer3DModel",
            "vace_layers": list(cfg.vace_layers), "vace_in_channels": cfg.vace_in_dim}


def infer_vace_config(state: Mapping[str, torch.Tensor]) -> VaceConfig:
    """A VaceConfig from official-layout tensors. ``vace_layers`` is not in the shapes: n VACE blocks over L base
    blocks are taken as every (L / n)-th block from 0, as both releases place them (30/15 -> 2, 40/8 -> 5)."""
    base = infer_dit_config({k: v for k, v in state.items() if not k.startswith("vace_")})
    count = len({int(m.group(1)) for k in state if (m := _VACE_BLOCK_KEY.match(k))})
    if "vace_patch_embedding.weight" not in state or not count:
        raise ValueError("the weights lack 'vace_patch_embedding' or 'vace_blocks.{i}' tensors, so they are not a "
                         "Wan VACE checkpoint; check the file.")
    step = base.num_layers // count
    if step < 1 or len(range(0, base.num_layers, step)) != count:
        raise ValueError(f"{count} VACE blocks over {base.num_layers} base blocks are not evenly spaced from 0, so "
                         "vace_layers cannot be read off the shapes; put the release's config.json beside the file.")
    layers = tuple(range(0, base.num_layers, step))
    return _from_base(base, layers, int(state["vace_patch_embedding.weight"].shape[1]))


def model_index(index: dict, cfg) -> dict:
    """A diffusers model_index.json for a release whose DiT is ``cfg``: VACE releases name diffusers' VACE classes."""
    if not isinstance(cfg, VaceConfig):
        return index
    return {**index, "_class_name": "WanVACEPipeline", "transformer": ["diffusers", "WanVACETransformer3DModel"]}
