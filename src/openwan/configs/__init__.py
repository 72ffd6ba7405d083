"""Typed, frozen configs for every Wan network, and the preset registry.

Each config mirrors the keys of the release's own ``config.json`` (DiT) or the constructor arguments of
the reference (VAE, umT5, CLIP), so ``from_dict`` reads a release file as is. Every model kind has a
``tiny`` preset that runs in milliseconds on a CPU; tests and the bundled demo model use it.

The package imports only :mod:`openwan.configio` (the dict -> dataclass parser). Its modules: ``fields`` (what
every config shares), ``dit`` (DiT and VACE), ``vae``, ``encoders`` (umT5, CLIP); all names are exported here.
"""

from __future__ import annotations

from typing import Any

from openwan.configs.dit import DIT_PRESETS, VACE_PRESETS, DiTConfig, VaceConfig
from openwan.configs.encoders import (
    IMAGE_ENCODER_PRESETS,
    TEXT_ENCODER_PRESETS,
    ImageEncoderConfig,
    TextEncoderConfig,
)
from openwan.configs.vae import (
    VAE_PRESETS,
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    WAN22_LATENTS_MEAN,
    WAN22_LATENTS_STD,
    VAEConfig,
    default_latent_stats,
)

_REGISTRIES: dict[str, dict[str, Any]] = {
    "dit": DIT_PRESETS,
    "vace": VACE_PRESETS,
    "vae": VAE_PRESETS,
    "text_encoder": TEXT_ENCODER_PRESETS,
    "image_encoder": IMAGE_ENCODER_PRESETS,
}


class CheckpointError(ValueError):
    """A weights file or folder cannot be used; the message names the file and the fix.

    It lives here, beside the configs both sides share, because two layers raise it: ``openwan.checkpoints``
    (a file absent, unreadable, in no known layout) and ``openwan.models`` (tensors that do not fit the network
    built from the file's config), and neither imports the other.
    """


def get_preset(kind: str, name: str) -> Any:
    """Look up a preset, e.g. ``get_preset("dit", "t2v-1.3B")``; an unknown name lists the known ones."""
    if kind not in _REGISTRIES:
        raise ValueError(f"unknown model kind {kind!r}; use one of: {', '.join(_REGISTRIES)}.")
    registry = _REGISTRIES[kind]
    if name not in registry:
        raise ValueError(f"unknown {kind} preset {name!r}; use one of: {', '.join(registry)}.")
    return registry[name]


__all__ = [
    "CheckpointError",
    "DiTConfig",
    "VAEConfig",
    "TextEncoderConfig",
    "ImageEncoderConfig",
    "DIT_PRESETS",
    "VaceConfig",
    "VACE_PRESETS",
    "VAE_PRESETS",
    "TEXT_ENCODER_PRESETS",
    "IMAGE_ENCODER_PRESETS",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "WAN22_LATENTS_MEAN",
    "WAN22_LATENTS_STD",
    "default_latent_stats",
    "get_preset",
]
