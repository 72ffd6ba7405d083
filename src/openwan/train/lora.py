"""LoRA training for the Wan DiT through peft: add trainable adapters, save them for diffusers / ComfyUI.

Saved files (safetensors) use one of two key conventions that diffusers' ``WanPipeline.load_lora_weights``
reads as they are:

- ``diffusers`` (default): ``transformer.blocks.0.attn1.to_q.lora_A.weight`` / ``...lora_B.weight``, the
  alpha/rank scale multiplied into ``lora_B`` (diffusers applies no alpha to files in its own layout).
- ``official`` (the ComfyUI / official-module style): ``diffusion_model.blocks.0.self_attn.q.lora_A.weight``,
  ``...lora_B.weight`` and ``...alpha`` — diffusers converts these itself and ComfyUI reads them natively.

Reading, applying and fusing LoRA files is inference's business and lives in :mod:`openwan.runtime.lora`; its
names are re-exported here for the trainer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from openwan.checkpoints import keymaps
from openwan.checkpoints.convert import save_safetensors
from openwan.runtime.lora import (
    fuse_lora,
    load_lora,
    lora_layers,
    parse_lora_spec,
    peft_module,
    read_lora,
    set_lora_scale,
)
from openwan.train.config import DEFAULT_LORA_TARGETS, LORA_TARGETS

FORMATS = ("diffusers", "official")
TRAIN_ADAPTER = "default"


def add_lora(dit: nn.Module, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_LORA_TARGETS,
             adapter_name: str = TRAIN_ADAPTER) -> nn.Module:
    """Wrap the ``targets`` linears of every block with a trainable LoRA (lora_B starts at 0) and freeze the rest.

    ``targets`` are official module names relative to a block (``self_attn.q``, ``cross_attn.o``, ``ffn.0``, ...).
    lora_A is drawn from torch's global generator: seed it first for a reproducible run.
    """
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise ValueError(f"unknown LoRA targets {bad}; use some of: {', '.join(LORA_TARGETS)}.")
    names = [n for n, m in dit.named_modules() if isinstance(m, nn.Linear) and _block_suffix(n) in targets]
    if not names:
        raise ValueError(f"the model has none of the LoRA targets {list(targets)}; an i2v-only target needs an "
                         "image-conditioned model.")
    peft = peft_module()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=names, lora_dropout=0.0,
                             init_lora_weights=True)
    dit.requires_grad_(False)
    peft.inject_adapter_in_model(config, dit, adapter_name=adapter_name)
    for name, p in dit.named_parameters():
        p.requires_grad_(f".lora_A.{adapter_name}." in name or f".lora_B.{adapter_name}." in name)
    return dit


def _block_suffix(name: str) -> str | None:
    match = re.match(r"^blocks\.\d+\.(.+)$", name)
    return match.group(1) if match else None


def lora_state_dict(dit: nn.Module, format: str = "diffusers", adapter_name: str = TRAIN_ADAPTER
                    ) -> dict[str, torch.Tensor]:
    """The adapter ``adapter_name`` as a file's key -> tensor mapping in ``format`` (see the module docstring)."""
    if format not in FORMATS:
        raise ValueError(f"unknown LoRA format {format!r}; use one of: {', '.join(FORMATS)}.")
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(dit).items():
        if adapter_name not in layer.lora_A:
            continue
        a = layer.lora_A[adapter_name].weight.detach().float()  # [r, in]
        b = layer.lora_B[adapter_name].weight.detach().float()  # [out, r]
        scaling = float(layer.scaling[adapter_name])
        if format == "diffusers":
            module = next(iter(keymaps.dit_official_to_diffusers({name: a})))
            out[f"transformer.{module}.lora_A.weight"] = a.clone()
            out[f"transformer.{module}.lora_B.weight"] = b * scaling
        else:
            out[f"diffusion_model.{name}.lora_A.weight"] = a.clone()
            out[f"diffusion_model.{name}.lora_B.weight"] = b.clone()
            out[f"diffusion_model.{name}.alpha"] = torch.tensor(scaling * a.shape[0], dtype=torch.float32)
    if not out:
        raise ValueError(f"the model has no LoRA adapter named {adapter_name!r}; add one with add_lora first.")
    return out


def save_lora(dit: nn.Module, path: str | Path, format: str = "diffusers", adapter_name: str = TRAIN_ADAPTER,
              metadata: Mapping[str, str] | None = None) -> Path:
    """Write the adapter to a .safetensors file (atomically) in ``format``; returns the path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA files are safetensors; name the file *.safetensors (got {path.name}).")
    meta = {"format": "pt", "openwan_lora_format": format, **(metadata or {})}
    save_safetensors(lora_state_dict(dit, format, adapter_name), path, metadata=meta)
    return path


__all__ = [
    "FORMATS",
    "add_lora",
    "fuse_lora",
    "load_lora",
    "lora_layers",
    "lora_state_dict",
    "parse_lora_spec",
    "read_lora",
    "save_lora",
    "set_lora_scale",
]
