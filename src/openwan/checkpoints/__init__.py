"""Checkpoint formats: reading files safely, key maps official ⇄ diffusers, architecture inference, loaders."""

from openwan.checkpoints.io import CheckpointError, load_strict, read_state_dict
from openwan.checkpoints.loaders import load_dit, load_dit_state, load_vae, load_vae_state

__all__ = [
    "CheckpointError",
    "load_strict",
    "read_state_dict",
    "load_dit",
    "load_dit_state",
    "load_vae",
    "load_vae_state",
]
