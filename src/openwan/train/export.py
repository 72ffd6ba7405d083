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
from openwan.train.config import TrainConfig, load_config

RUN_CONFIG = "config.yaml"  # written by the trainer into output_dir


def run_config(checkpoint: str | Path) -> TrainConfig:
    """The config of the run a checkpoint (a step folder, or a run folder: its newest) belongs to."""
    folder = resolve_checkpoint(checkpoint)
    path = folder.parent / RUN_CONFIG
    if not path.is_file():
        raise ValueError(f"{folder.parent} has no {RUN_CONFIG}, so the VAE and text encoder the run trained with are "
                         "unknown; give them with --vae, --text-encoder and --tokenizer.")
    return load_config(path)


def _weights_path(value: str | None, field: str, flag: str) -> Path:
    if not value:
        raise ValueError(f"the run names no {field} (it trained from a cache); give the weights with {flag} PATH.")
    path = Path(value)
    if not path.exists():
        raise ValueError(f"{field}={value} is not a file or folder here (a preset name builds random weights, which "
                         f"a release cannot carry); give the weights with {flag} PATH.")
    return path


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
    model = run_config(checkpoint).model if None in (vae, text_encoder, tokenizer) else None
    vae_path = Path(vae) if vae is not None else _weights_path(model.vae, "model.vae", "--vae")
    umt5_path = (Path(text_encoder) if text_encoder is not None
                 else _weights_path(model.text_encoder, "model.text_encoder", "--text-encoder"))
    # The trainer falls back to the text encoder's folder when the run names no tokenizer.
    name = tokenizer if tokenizer is not None else (model.tokenizer or str(umt5_path))
    tok = _tokenizer(str(name))
    out = Path(out)
    export_dit(checkpoint, out, weights=weights, dtype=dtype)
    convert_vae(vae_path, out, "official")
    convert_umt5(umt5_path, out, "official")
    with tempfile.TemporaryDirectory(dir=out, prefix=".tokenizer.") as tmp:
        tok.save_pretrained(tmp)
        copy_folder(tmp, out / TOKENIZER_DIR)
    return out
