"""Write loaded models as an official Wan release folder, so the same loading code serves every model.

Used for openwan's own models (the bundled tiny model, trained checkpoints exported for sharing) and in tests.
The folder looks exactly like a Wan2.1 release: config.json + diffusion_pytorch_model.safetensors,
Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/ (tokenizer) and, for image-to-video models,
the CLIP file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from openwan.checkpoints.convert import save_sharded, write_json, write_vae
from openwan.checkpoints.encoders import (
    CLIP_OFFICIAL_FILE,
    UMT5_OFFICIAL_FILE,
    clip_hf_to_official,
    umt5_hf_to_official,
)
from openwan.fileio import atomic_torch_save

TOKENIZER_DIR = "google/umt5-xxl"


def _placed(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
            for k, v in state.items()}


def _save_pth(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None) -> None:
    atomic_torch_save(_placed(state, dtype), path)


def _clip_full_tower(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our CLIP holds the blocks Wan uses (all but the last); a release file holds the whole tower, so the unused
    last block is written as zeros (loaders drop it again)."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"visual\.transformer\.(\d+)\.", k))}
    last = max(blocks)
    extra = {k.replace(f"visual.transformer.{last}.", f"visual.transformer.{last + 1}.", 1): torch.zeros_like(v)
             for k, v in state.items() if k.startswith(f"visual.transformer.{last}.")}
    return {**state, **extra}


def save_dit(dit, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``dit`` as a DiT folder (config.json + diffusion_pytorch_model*.safetensors), optionally cast."""
    folder = Path(folder)
    state = {k: (v.to(dtype) if dtype is not None else v).detach().cpu() for k, v in dit.state_dict().items()}
    write_json(folder / "config.json", dit.cfg.to_dict())
    save_sharded(state, folder)
    return folder


def save_release(folder: str | Path, *, dit, vae, text_encoder, tokenizer, image_encoder=None,
                 dtype: torch.dtype | None = None, dit_dtype: torch.dtype | None = None,
                 vae_dtype: torch.dtype | None = None, dit_low=None, boundary: float | None = None) -> Path:
    """Write the models as an official-layout release folder (each file atomically).

    ``dtype`` casts every floating-point tensor; ``dit_dtype`` only the DiT's (the bulk of the bytes), ``vae_dtype``
    only the VAE's (loaders cast to the dtype asked for, float32 on CPU).
    ``dit_low`` and ``boundary``: a Wan2.2 A14B-layout release of two experts, ``dit`` the high-noise one in
    ``high_noise_model/``, ``dit_low`` in ``low_noise_model/``, and ``configuration.json`` saying where the sampler
    switches (t >= boundary·1000 takes the high-noise expert).
    """
    folder = Path(folder)
    if (dit_low is None) != (boundary is None):
        raise ValueError("a two-expert release needs both dit_low and boundary; give both or neither.")
    if boundary is not None and not 0 < boundary < 1:
        raise ValueError(f"boundary is the noise level where the experts meet, between 0 and 1; got {boundary!r}.")
    dit_dtype = dit_dtype or dtype
    vae_dtype = vae_dtype or dtype
    experts = [(dit, folder)] if dit_low is None else [(dit, folder / "high_noise_model"),
                                                        (dit_low, folder / "low_noise_model")]
    for model, where in experts:
        save_dit(model, where, dit_dtype)
    if boundary is not None:
        write_json(folder / "configuration.json", {"boundary": float(boundary)})
    write_vae(vae.cfg, _placed(vae.state_dict(), vae_dtype), folder, "official")  # Wan2.{1,2}_VAE.pth + its statistics
    _save_pth(umt5_hf_to_official(text_encoder.state_dict()), folder / UMT5_OFFICIAL_FILE, dtype)
    tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
    if image_encoder is not None:
        official = clip_hf_to_official(image_encoder.state_dict())
        _save_pth(_clip_full_tower(official), folder / CLIP_OFFICIAL_FILE, dtype)
    return folder
