"""Find and read Wan weights in any layout a user may have on disk.

Accepted for the DiT: an official release folder (config.json + one or sharded safetensors with an index), a
diffusers-format folder (the whole "-Diffusers" release or its transformer/ subfolder), or a single
.safetensors / .pth file in either key layout. For the VAE: the release's Wan2.1_VAE.pth or Wan2.2_VAE.pth (no
config: the architecture, 2.1 or 2.2, is read off the tensor shapes), a folder holding it, or a diffusers vae/ folder.

Each reader returns (config, state dict in the official key layout); the networks build themselves from that
(``WanDiT.from_pretrained`` / ``WanVAE.from_pretrained``, through :func:`read`).
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from openwan.checkpoints import keymaps, vace_keys, vae22_keys
from openwan.checkpoints.encoders import read_clip, read_umt5
from openwan.checkpoints.infer import dit_block_count, dit_image_tokens, infer_dit_config, infer_vae_config
from openwan.checkpoints.io import CheckpointError, blame, read_json_config, read_state_dict
from openwan.configs import DiTConfig, VAEConfig

log = logging.getLogger(__name__)

DIT_RELEASE_HINT = (
    "a Wan release folder holds config.json and diffusion_pytorch_model.safetensors (14B models: "
    "diffusion_pytorch_model-0000k-of-0000N.safetensors shards plus diffusion_pytorch_model.safetensors.index.json); "
    "a diffusers-format release holds transformer/ with the same files"
)
VAE_RELEASE_HINT = ("a Wan release folder holds Wan2.1_VAE.pth (Wan2.2 TI2V-5B: Wan2.2_VAE.pth); a diffusers-format "
                    "release holds vae/")
VAE_FILES = ("Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors", "Wan2.2_VAE.pth", "Wan2.2_VAE.safetensors")
_COMFY_PREFIX = "model.diffusion_model."


_read_json = read_json_config


def _dit_weight_files(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
                 "model.safetensors.index.json", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) == 1:
        return singles[0]
    raise CheckpointError(f"{folder} holds no DiT weights I can identify; {DIT_RELEASE_HINT}.")


def _official_dit_config(data: dict) -> DiTConfig:
    known = {f.name for f in fields(DiTConfig)}
    extra = sorted(k for k in data if k not in known and not k.startswith("_"))
    if extra:
        log.warning("ignoring config.json keys openwan does not use: %s", ", ".join(extra))
    return DiTConfig.from_dict({k: v for k, v in data.items() if k in known})


def _dit_config_from_json(data: dict) -> DiTConfig:
    if vace_keys.is_vace_config(data):  # Wan2.1-VACE: a VaceConfig, either layout
        return vace_keys.vace_config_from_json(data)
    if "num_attention_heads" in data:
        return keymaps.dit_config_from_diffusers(data)
    return _official_dit_config(data)


def resolve_dit(path: str | Path) -> tuple[Path, dict | None]:
    """The weights file (or shard index) of a DiT and its config.json contents, if any."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist; point at a Wan release folder or weights file ({DIT_RELEASE_HINT})."
        )
    if path.is_dir():
        if (path / "transformer").is_dir():
            path = path / "transformer"
        elif (path / "high_noise_model").is_dir() and (path / "low_noise_model").is_dir():
            raise CheckpointError(
                f"{path} is a Wan2.2 two-expert release; load {path / 'high_noise_model'} or "
                f"{path / 'low_noise_model'} (the pipeline loads both)."
            )
        config = path / "config.json"
        return _dit_weight_files(path), (_read_json(config) if config.is_file() else None)
    config = path.parent / "config.json"
    data = _read_json(config) if config.is_file() else None
    if data is not None and not ({"dim", "num_attention_heads"} & set(data)):
        data = None  # a config.json beside the file that belongs to something else
    return path, data


def load_dit_state(path: str | Path, config: DiTConfig | dict | None = None,
                   check_finite: bool | None = None) -> tuple[DiTConfig, dict]:
    """Read a DiT checkpoint from any supported layout: (config, official-layout state dict).

    A config.json is checked (types and ranges of every field) before the weights are read; ``check_finite``:
    see :func:`openwan.checkpoints.io.read_state_dict`.
    """
    weights, data = resolve_dit(path)
    config_file = weights.parent / "config.json"
    if isinstance(config, dict):
        with blame("the given DiT config"):
            config = _dit_config_from_json(config)
    if config is None and data is not None:
        with blame(config_file):
            config = _dit_config_from_json(data)
    state = read_state_dict(weights, check_finite)
    with blame(weights):
        if any(k.startswith(_COMFY_PREFIX) for k in state):
            state = {k.removeprefix(_COMFY_PREFIX): v for k, v in state.items()}
        vace = vace_keys.is_vace_state(state)
        if keymaps.is_diffusers_dit(state):
            state = vace_keys.vace_diffusers_to_official(state) if vace else keymaps.dit_diffusers_to_official(state)
        if config is None:
            config = vace_keys.infer_vace_config(state) if vace else infer_dit_config(state)
        # Wan2.1 and Wan2.2 i2v configs are identical; only the tensors tell whether CLIP image tokens are used.
        image_tokens = dit_image_tokens(state)
    blocks = dit_block_count(state)
    if blocks and blocks != config.num_layers:  # refused before a network of the wrong depth is built
        source = config_file if data is not None else "the given config"
        raise CheckpointError(f"{source} says num_layers {config.num_layers} but {weights} holds {blocks} blocks; "
                              "keep each config with its own weights.")
    if image_tokens != config.image_tokens:
        config = config.replace(image_tokens=image_tokens)
    return config, state


def _vae_weight_file(folder: Path) -> tuple[Path, dict | None]:
    if (folder / "vae").is_dir():
        folder = folder / "vae"
    config = folder / "config.json"
    # A release root also has a config.json: the DiT's. Only a VAE config makes this a diffusers vae/ folder.
    data = _read_json(config) if config.is_file() else {}
    if data.get("_class_name") == "AutoencoderKLWan" or "base_dim" in data:
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if (folder / name).is_file():
                return folder / name, data
    found = [folder / name for name in VAE_FILES if (folder / name).is_file()]
    if len({f.stem for f in found}) > 1:
        raise CheckpointError(f"{folder} holds both {found[0].name} and {found[-1].name}; point at the VAE file "
                              "the model was trained with.")
    if found:
        return found[0], None
    raise CheckpointError(f"{folder} holds no VAE weights I can identify; {VAE_RELEASE_HINT}.")


def _vae_structure_from_diffusers(state: dict) -> VAEConfig:
    """Enough architecture to rename diffusers keys (levels, blocks per level); shapes decide the rest later."""
    if vae22_keys.is_residual_diffusers_vae(state):
        return vae22_keys.structure_from_diffusers(state)
    up = {int(k.split(".")[2]) for k in state if k.startswith("decoder.up_blocks.")}
    resnets = {int(k.split(".")[4]) for k in state if k.startswith("decoder.up_blocks.0.resnets.")}
    if not up or not resnets:
        raise CheckpointError("the VAE weights have no decoder.up_blocks tensors; this is not a Wan2.1 VAE.")
    levels = max(up) + 1
    return VAEConfig(dim_mult=(1,) * levels, num_res_blocks=max(resnets), temporal_downsample=(False,) * (levels - 1))


def load_vae_state(path: str | Path, check_finite: bool | None = None) -> tuple[VAEConfig, dict]:
    """Read a Wan2.1 or Wan2.2 VAE from any supported layout: (config, official-layout state dict). A config beside the
    weights is checked field by field (a zero or non-finite ``latents_std`` is refused); its latent statistics and
    the decoder's trained noise range (``decode_noise``) are taken, the architecture is read off the tensors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; point at the VAE file or a release folder ({VAE_RELEASE_HINT}).")
    weights, data = _vae_weight_file(path) if path.is_dir() else (path, None)
    stats = None
    if data:  # a diffusers config carries the latent statistics
        with blame(weights.parent / "config.json"):
            stats = keymaps.vae_config_from_diffusers(data)
    elif weights.with_suffix(".json").is_file():  # a VAE trained by openwan: <name>.json beside <name>.pth
        with blame(weights.with_suffix(".json")):
            stats = VAEConfig.from_dict(_read_json(weights.with_suffix(".json")))
    state = read_state_dict(weights, check_finite)
    with blame(weights):
        if keymaps.is_diffusers_vae(state):
            structure = stats if data else _vae_structure_from_diffusers(state)
            state = keymaps.vae_diffusers_to_official(state, structure)
        config = infer_vae_config(state)
    if stats is not None:
        if stats.z_dim != config.z_dim:
            raise CheckpointError(f"the latent statistics beside {weights} are for z_dim {stats.z_dim}, but the "
                                  f"weights have z_dim {config.z_dim}; keep each config with its own weights.")
        config = config.replace(latents_mean=stats.latents_mean, latents_std=stats.latents_std,
                                decode_noise=stats.decode_noise)
    return config, state


def read(kind: str, path: str | Path, check_finite: bool | None = None) -> tuple[Any, dict[str, torch.Tensor], Path]:
    """(config, state dict, source) of the ``kind`` network stored at ``path``: ``dit`` and ``vae`` give an openwan
    config and the official key layout, ``umt5`` and ``clip`` a transformers config and transformers' keys.

    This is the reader every ``from_pretrained`` of :mod:`openwan.models` uses (``openwan/__init__.py`` hands it
    over); the network is built there, from what this returns. ``check_finite``: see
    :func:`openwan.checkpoints.io.read_state_dict`.
    """
    if kind == "dit":
        return (*load_dit_state(path, check_finite=check_finite), Path(path))
    if kind == "vae":
        return (*load_vae_state(path, check_finite), Path(path))
    if kind == "umt5":
        return read_umt5(path, check_finite)
    if kind == "clip":
        return read_clip(path, check_finite)
    raise ValueError(f"unknown kind of network {kind!r}; use one of: dit, vae, umt5, clip.")
