"""A training checkpoint as a complete release folder: the trained DiT plus the VAE, umT5 encoder and tokenizer
the run trained with, in the official layout, so ``openwan generate --ckpt-dir OUT`` runs it.

The encoders are read off the run's saved config (``config.yaml`` in its output folder: ``model.vae``,
``model.text_encoder``, ``model.tokenizer``); a run trained from a latent/text cache names none, so they can be
given instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from openwan.checkpoints.convert import convert_umt5, convert_vae, copy_folder
from openwan.checkpoints.release import TOKENIZER_DIR
from openwan.train.checkpoint import export_dit, resolve_checkpoint
from openwan.train.config import ModelConfig, load_config

RUN_CONFIG = "config.yaml"  # written by the trainer into output_dir


def run_model(checkpoint: str | Path) -> ModelConfig | None:
    """``model`` of the config of the run a checkpoint (a step folder, or a run folder: its newest) belongs to;
    None when the run folder holds no config.yaml."""
    path = resolve_checkpoint(checkpoint).parent / RUN_CONFIG
    return load_config(path).model if path.is_file() else None


def _weights_path(given: str | Path | None, named: str | None, field: str, flag: str) -> Path:
    """The weights ``flag`` gave, else those the run's config ``field`` names; they must exist here."""
    if given is not None:
        if not Path(given).exists():
            raise ValueError(f"{flag} {given} does not exist; give the path of the weights file or folder.")
        return Path(given)
    if not named:
        raise ValueError(f"the run names no {field} (it trained from a cache); give the weights with {flag} PATH.")
    if not Path(named).exists():
        raise ValueError(f"{field}={named} is not a file or folder here (a preset name builds random weights, which "
                         f"a release cannot carry); give the weights with {flag} PATH.")
    return Path(named)


def _tokenizer(name: str):
    """The tokenizer as the trainer builds it: ``byt5`` (byte level), or a folder (or a file inside one)."""
    if name == "byt5":
        from transformers import ByT5Tokenizer

        return ByT5Tokenizer()
    from openwan.models.text_encoder import load_tokenizer

    path = Path(name)
    if not path.exists():
        raise ValueError(f"model.tokenizer={name} is not a folder here; give the tokenizer with --tokenizer PATH.")
    return load_tokenizer(path if path.is_dir() else path.parent)


def export_release(checkpoint: str | Path, out: str | Path, *, weights: str = "ema", dtype: torch.dtype | None = None,
                   vae: str | Path | None = None, text_encoder: str | Path | None = None,
                   tokenizer: str | Path | None = None) -> Path:
    """Write ``checkpoint`` (a step or run folder) as an official-layout release folder ``out``: config.json +
    diffusion_pytorch_model.safetensors (its EMA or trained ``weights``; ``dtype`` casts them), Wan2.1_VAE.pth
    (with its latent statistics), models_t5_umt5-xxl-enc-bf16.pth and google/umt5-xxl/ (the encoders as trained).
    ``vae``, ``text_encoder`` and ``tokenizer`` replace what the run's config names. Every path is checked before
    anything is written."""
    model = run_model(checkpoint)
    if model is None and (vae is None or text_encoder is None):
        raise ValueError(f"{resolve_checkpoint(checkpoint).parent} has no {RUN_CONFIG}, so the VAE and text encoder "
                         "the run trained with are unknown; give them with --vae and --text-encoder.")
    vae_path = _weights_path(vae, model and model.vae, "model.vae", "--vae")
    umt5_path = _weights_path(text_encoder, model and model.text_encoder, "model.text_encoder", "--text-encoder")
    # The trainer falls back to the text encoder's folder when the run names no tokenizer.
    name = tokenizer or (model.tokenizer if model is not None else None) or str(umt5_path)
    tok = _tokenizer(str(name))
    out = Path(out)
    export_dit(checkpoint, out, weights=weights, dtype=dtype)
    convert_vae(vae_path, out, "official")
    convert_umt5(umt5_path, out, "official")
    with tempfile.TemporaryDirectory(dir=out, prefix=".tokenizer.") as tmp:
        tok.save_pretrained(tmp)
        copy_folder(tmp, out / TOKENIZER_DIR)
    return out
