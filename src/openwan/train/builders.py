"""What a training run is built from: the device, the process mesh, the DiT and its frozen encoders, the data."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from transformers import ByT5Tokenizer, UMT5EncoderModel

from openwan.configs import TEXT_ENCODER_PRESETS, VAE_PRESETS, get_preset
from openwan.data.sources import BatchSource, DataFactory, bucket_source
from openwan.models import WanDiT, WanVAE, load_umt5_encoder
from openwan.models.text_encoder import load_tokenizer
from openwan.parallel import build_mesh, dim_size, init_distributed
from openwan.train.config import StageConfig, TrainConfig

log = logging.getLogger("openwan.train")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but no CUDA device is available; use device=cpu or auto.")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 for ``bf16`` (and ``auto`` on a GPU); None (float32, no autocast) otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_dit(cfg: TrainConfig) -> nn.Module:
    if cfg.model.path:
        return WanDiT.from_pretrained(cfg.model.path, dtype=torch.float32)
    return WanDiT(get_preset("dit", cfg.model.preset))


def check_trainable_model(dit: nn.Module) -> None:
    cfg = getattr(dit, "cfg", None)
    if cfg is None:
        raise ValueError("the model to train must be an openwan WanDiT.")
    if cfg.in_dim != cfg.out_dim:
        raise ValueError(f"training supports text-to-video models (in_dim = out_dim); this is a "
                         f"{cfg.model_type} model with image conditioning.")


def build_encoders(cfg: TrainConfig, device: torch.device,
                   only: Iterable[str] = ("vae", "text_encoder", "tokenizer")) -> dict[str, Any]:
    """The VAE, umT5 and tokenizer named in ``cfg.model`` (paths, or preset names for random test models), frozen;
    ``only`` limits which are built."""
    m, only = cfg.model, set(only)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out: dict[str, Any] = {}
    if m.vae and "vae" in only:
        if m.vae in VAE_PRESETS and not Path(m.vae).exists():
            log.warning("model.vae=%s builds a RANDOM VAE (a preset name, for tests)", m.vae)
            out["vae"] = WanVAE(VAE_PRESETS[m.vae]).to(device, dtype).eval().requires_grad_(False)
        else:
            out["vae"] = WanVAE.from_pretrained(m.vae, dtype=dtype, device=device).eval().requires_grad_(False)
    if m.text_encoder and "text_encoder" in only:
        if m.text_encoder in TEXT_ENCODER_PRESETS and not Path(m.text_encoder).exists():
            log.warning("model.text_encoder=%s builds a RANDOM umT5 (a preset name, for tests)", m.text_encoder)
            enc = UMT5EncoderModel(TEXT_ENCODER_PRESETS[m.text_encoder].to_hf())
            out["text_encoder"] = enc.to(device, dtype).eval().requires_grad_(False)
        else:
            out["text_encoder"] = load_umt5_encoder(m.text_encoder, dtype=dtype, device=device)
    if "tokenizer" in only:
        tokenizer = _build_tokenizer(m.tokenizer or (m.text_encoder if m.text_encoder and Path(m.text_encoder).exists()
                                                     else None))
        if tokenizer is not None:
            out["tokenizer"] = tokenizer
    return out


def _build_tokenizer(name: str | None):
    if not name:
        return None
    if name == "byt5":  # byte level: needs no download, fits the tiny umT5 preset's 384-id vocabulary
        return ByT5Tokenizer()
    path = Path(name)
    return load_tokenizer(path if path.is_dir() else path.parent)


# ------------------------------------------------------------------------------------------ processes


def training_mesh(cfg: TrainConfig):
    """Join the job ``torchrun`` started and lay its processes out as ``cfg.parallel`` says: a ``DeviceMesh`` with
    dims ("dp", "cfg", "ring", "ulysses") (cfg = 1); None for one process, which needs no process group.

    Raises ValueError when parallel.dp × cp_ring × cp_ulysses is not the number of processes."""
    initialized = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialized else int(os.environ.get("WORLD_SIZE", "1"))
    sizes = cfg.parallel.sizes(world)
    if world == 1:
        return None
    device = resolve_device(cfg.device)
    init_distributed("nccl" if device.type == "cuda" else "gloo")
    return build_mesh(dp=sizes["dp"], ring=sizes["ring"], ulysses=sizes["ulysses"], device_type=device.type)


def checked_mesh(cfg: TrainConfig, mesh: Any):
    """``mesh`` if its dims are the ones ``cfg.parallel`` asks for (None for a mesh of one rank)."""
    if mesh is None or mesh.size() == 1:
        cfg.parallel.sizes(1)
        return None
    want = {**cfg.parallel.sizes(mesh.size()), "cfg": 1}
    have = {name: dim_size(mesh, name) for name in want}
    if have != want:
        raise ValueError(f"the device mesh has {have} but the config's parallel section asks for {want}; build the "
                         "mesh with openwan.train.training_mesh(cfg), or change parallel.dp / cp_ring / cp_ulysses.")
    return mesh


# ------------------------------------------------------------------------------------------ data


def data_from_config(cfg: TrainConfig, dp_rank: int = 0, dp_size: int = 1) -> DataFactory:
    """The batch source of each stage from ``cfg.data`` / the stage: a manifest of raw clips or a cache folder.

    A stage's ``batch_size`` is the global batch: data-parallel rank ``dp_rank`` of ``dp_size`` gets its
    ``batch_size / dp_size`` samples of each (the ranks of a context-parallel group pass the same dp_rank)."""

    def factory(index: int, stage: StageConfig) -> BatchSource:
        manifest = stage.manifest or (cfg.data.manifest if stage.cache_dir is None else None)
        cache_dir = stage.cache_dir or (cfg.data.cache_dir if stage.manifest is None else None)
        if bool(manifest) == bool(cache_dir):
            raise ValueError(f"stage {index} ({stage.name}) needs exactly one data source: set data.manifest (raw "
                             "clips) or data.cache_dir (latent + text cache), here or in the stage.")
        if stage.batch_size % dp_size:
            raise ValueError(f"stages.{index}.batch_size={stage.batch_size} is the global batch and must split evenly "
                             f"over the {dp_size} data-parallel ranks (parallel.dp); make it a multiple of {dp_size}.")
        return bucket_source(manifest=manifest, cache_dir=cache_dir, buckets=stage.buckets,
                             batch_size=stage.batch_size, seed=cfg.seed + 1000 * index, fps=cfg.data.fps,
                             num_workers=cfg.data.num_workers, image_video_ratio=stage.image_video_ratio,
                             dp_rank=dp_rank, dp_size=dp_size, label=f"stage {index} ({stage.name})",
                             whole=stage.window == "random")

    return factory


__all__ = ["autocast_dtype", "build_dit", "build_encoders", "check_trainable_model", "checked_mesh",
           "data_from_config", "resolve_device", "seed_everything", "training_mesh"]
