"""``openwan convert``: rewrite Wan weights between the official release layout and diffusers' layout.

Every file is written to a temporary name and renamed into place, so an interrupted conversion never leaves a
file that looks complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from openwan.checkpoints import keymaps
from openwan.checkpoints.io import CheckpointError
from openwan.checkpoints.loaders import load_dit_state, load_vae_state
from openwan.fileio import atomic_torch_save, atomic_write

LAYOUTS = ("official", "diffusers")
DEFAULT_SHARD_BYTES = 5 * 1024**3


def write_json(path: Path, data: Mapping) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def save_safetensors(state: Mapping[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {"format": "pt"}))


def save_sharded(state: Mapping[str, torch.Tensor], folder: Path, stem: str = "diffusion_pytorch_model",
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """One ``{stem}.safetensors``, or numbered shards plus ``{stem}.safetensors.index.json`` as releases do."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        path = folder / f"{stem}.safetensors"
        save_safetensors(shards[0], path)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = folder / f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(shard, path)
        weight_map.update({k: path.name for k in shard})
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_json(folder / f"{stem}.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return paths


def _cast(state: dict, dtype: torch.dtype | None) -> dict:
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def convert_dit(src: str | Path, dst: str | Path, to: str, *, dtype: torch.dtype | None = None,
                max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write the DiT at ``src`` (any layout) to the folder ``dst`` in layout ``to``."""
    _check_layout(to)
    config, state = load_dit_state(src)
    state = _cast(state, dtype)
    dst = Path(dst)
    if to == "diffusers":
        state = keymaps.dit_official_to_diffusers(state)
        write_json(dst / "config.json", keymaps.dit_config_to_diffusers(config))
    else:
        write_json(dst / "config.json", config.to_dict())
    save_sharded(state, dst, max_shard_bytes=max_shard_bytes)
    return dst


def convert_vae(src: str | Path, dst: str | Path, to: str, *, dtype: torch.dtype | None = None) -> Path:
    """Write the Wan2.1 VAE at ``src`` to ``dst``: a diffusers vae/ folder, or the release's Wan2.1_VAE.pth."""
    _check_layout(to)
    config, state = load_vae_state(src)
    state = _cast(state, dtype)
    dst = Path(dst)
    if to == "diffusers":
        write_json(dst / "config.json", keymaps.vae_config_to_diffusers(config))
        save_safetensors(keymaps.vae_official_to_diffusers(state, config), dst / "diffusion_pytorch_model.safetensors")
        return dst
    target = dst / "Wan2.1_VAE.pth" if dst.suffix != ".pth" else dst
    tensors = {k: v.contiguous() for k, v in state.items()}
    atomic_torch_save(tensors, target)
    return target


def convert_release(src: str | Path, dst: str | Path, to: str, *, dtype: torch.dtype | None = None) -> Path:
    """Convert a whole release folder: the DiT (or both Wan2.2 experts) and the VAE; other files are listed."""
    _check_layout(to)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"{src} is not a folder; give a release folder, or use --model dit|vae for one file.")
    experts = [d for d in ("high_noise_model", "low_noise_model") if (src / d).is_dir()]
    if experts:
        for name in experts:
            convert_dit(src / name, dst / name, to, dtype=dtype)
    else:
        convert_dit(src, dst / "transformer" if to == "diffusers" else dst, to, dtype=dtype)
    try:
        convert_vae(src, dst / "vae" if to == "diffusers" else dst, to)
    except CheckpointError as err:
        if "no VAE weights" not in str(err):
            raise
    return dst


def _check_layout(to: str) -> None:
    if to not in LAYOUTS:
        raise ValueError(f"unknown layout {to!r}; use one of: {', '.join(LAYOUTS)}.")
