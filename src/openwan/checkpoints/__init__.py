"""Checkpoint formats: reading files safely, key maps official ⇄ diffusers, architecture inference, readers that
return (config, state dict) for the networks of :mod:`openwan.models` to build themselves from."""

from openwan.checkpoints.io import CheckpointError, finite_check, read_state_dict
from openwan.checkpoints.loaders import load_dit_state, load_vae_state, read

__all__ = [
    "CheckpointError",
    "finite_check",
    "read_state_dict",
    "load_dit_state",
    "load_vae_state",
    "read",
]
