"""The VAE's models as training moves them from stage to stage: the 2D image VAE inflated into the 3D causal
WanVAE, a decoder widened in place, raw encoding and decoding with gradients, the latent statistics measured on the
data, and the files each stage exports (``image_vae.pth`` / ``Wan2.1_VAE.pth`` with their ``.json`` configs).

Inflation: each 2D kernel goes in the last temporal tap (the one that sees the current frame), the other taps are
zero, and the temporal resampling convs start as "take the newest frame" (down) and "repeat the frame" (up). WanVAE
codes a first frame with the last taps only and skips the temporal resampling there, so a single image encodes and
decodes exactly as before; a clip starts as latent k = image latent of frame 4k, each decoded into 4 equal frames.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from openwan.checkpoints.io import read_state_dict
from openwan.configs import VAEConfig
from openwan.fileio import atomic_torch_save, atomic_write
from openwan.models.image_vae import ImageVAE
from openwan.models.loading import load_strict
from openwan.models.vae import FeatureCache, WanVAE
from openwan.models.vae22 import unpatchify

log = logging.getLogger("openwan.train")

IMAGE_VAE_NAME = "image_vae"  # stage 1 output: image_vae.pth + image_vae.json (its VAEConfig)
WAN_VAE_NAME = "Wan2.1_VAE"  # stage 2/3 output: Wan2.1_VAE.pth + Wan2.1_VAE.json (config with latent stats)


# --------------------------------------------------------------------------------------- the models


def inflate_image_vae(image_vae: ImageVAE) -> WanVAE:
    """The 3D causal WanVAE that codes a single image exactly as ``image_vae`` does (see the module doc)."""
    vae = WanVAE(image_vae.cfg).to(image_vae.dtype)
    flat = image_vae.state_dict()
    state = vae.state_dict()
    assert set(flat) == {k for k in state if ".time_conv." not in k}, "ImageVAE and WanVAE layouts differ"
    with torch.no_grad():
        for key, target in state.items():
            if ".time_conv." in key:
                continue  # set by per_frame_start below
            src = flat[key]
            if src.shape == target.shape:
                target.copy_(src)
            else:  # [o, i, 1, k, k] -> [o, i, kt, k, k]: the kernel in the newest-frame tap (per_frame_start zeroes
                # the taps before it)
                assert src.shape[2] == 1 and src.shape[:2] + src.shape[3:] == target.shape[:2] + target.shape[3:], key
                target[:, :, -1:] = src
        vae.load_state_dict(state)
    return per_frame_start(vae).to(next(image_vae.parameters()).device)


def per_frame_start(vae: WanVAE) -> WanVAE:
    """``vae`` reduced to its newest-frame taps, in place: every causal convolution's older temporal taps zeroed and
    every temporal down/up-sampling set to pass frames through, as :func:`inflate_image_vae` leaves a model. A 3D VAE
    trained on single frames has trained those taps alone (one frame after zero history skips the rest), so it codes
    a single frame exactly as before and a clip frame by frame, ready for training on clips."""
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, nn.Conv3d) and module.weight.shape[2] > 1:
                module.weight[:, :, :-1].zero_()
            mode = getattr(module, "mode", None)
            if mode in ("downsample3d", "upsample3d"):  # its time_conv: zeros but the newest tap, which passes through
                _init_time_conv(module.time_conv, repeats=2 if mode == "upsample3d" else 1)
    return vae


def widen_decoder(model: WanVAE | ImageVAE, decoder_dim: int, *, init_scale: float = 0.1,
                  seed: int = 0) -> WanVAE | ImageVAE:
    """``model`` with its decoder widened to base width ``decoder_dim``, coding almost exactly as before.

    Every decoder channel keeps its weights; the added channels read the old ones through a fresh init times
    ``init_scale`` (so they carry small activations and get gradients from the start) and are read by the old
    channels through zero weights. The RMSNorm gains are scaled by sqrt(old / new width), since the norm
    multiplies by sqrt(channels), and the mid-block attention's queries by sqrt(new / old), since its logits
    divide by sqrt(channels); the only change left is the added channels' share in each norm, about
    ``init_scale``² (``init_scale=0`` is exact, but then the added channels never train). The encoder, and
    with it the latent space, is untouched: a DiT trained on the latents keeps working.
    """
    old_width = model.cfg.decoder_width
    if decoder_dim < old_width:
        raise ValueError(f"decoder_dim {decoder_dim} is narrower than the model's decoder ({old_width}); a decoder "
                         "can only be widened — train a new VAE for a narrower one.")
    if decoder_dim == old_width:
        return model
    cfg = model.cfg.replace(decoder_dim=None if decoder_dim == model.cfg.dim else decoder_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wide = type(model)(cfg)
    old_state = model.state_dict()
    new_state = wide.state_dict()
    with torch.no_grad():
        for key, target in new_state.items():
            src = old_state[key].to(target.dtype)
            if src.shape == target.shape:
                target.copy_(src)
                continue
            # Output blocks laid side by side: the attention's [q; k; v], the temporal upsample's two frames.
            blocks = 3 if ".to_qkv." in key else 2 if ".time_conv." in key else 1
            rows = _widened_index(src.shape[0], target.shape[0], blocks)
            if key.endswith("gamma"):
                factor = math.sqrt(src.shape[0] / target.shape[0])
                target.fill_(factor)
                target[rows] = src * factor
            elif src.ndim == 1:  # bias
                target.zero_()
                target[rows] = src
            else:
                cols = _widened_index(src.shape[1], target.shape[1], 1)
                target.mul_(init_scale)
                target[rows] = 0.0
                target[rows[:, None], cols] = src
            if ".to_qkv." in key:  # queries: the softmax scale is 1/sqrt(new width) now
                q_rows = rows[: src.shape[0] // 3]
                target[q_rows] *= math.sqrt(target.shape[0] / src.shape[0])
    wide.load_state_dict(new_state)
    param = next(model.parameters())
    return wide.to(device=param.device, dtype=param.dtype).train(model.training)


def _widened_index(old: int, new: int, blocks: int) -> torch.Tensor:
    """Where each of ``old`` channels (``blocks`` equal blocks) sits among ``new``: block b's channel j at
    b · new/blocks + j."""
    old_block, new_block = old // blocks, new // blocks
    return torch.tensor([b * new_block + j for b in range(blocks) for j in range(old_block)])


def _init_time_conv(conv: nn.Module, repeats: int) -> None:
    """Identity on the newest-frame tap, ``repeats`` times over the output channels (up: both output frames)."""
    out_ch, in_ch = conv.weight.shape[:2]
    assert out_ch == repeats * in_ch
    conv.weight.zero_()
    eye = torch.eye(in_ch, dtype=conv.weight.dtype, device=conv.weight.device)
    for r in range(repeats):
        conv.weight[r * in_ch:(r + 1) * in_ch, :, -1, 0, 0] = eye
    conv.bias.zero_()


def encode_moments(model: nn.Module, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw posterior (mu, log_var) of an ImageVAE (per frame) or a WanVAE (causal, 4n+1 frames)."""
    return model.encode_moments(video)


def decode_raw(model: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents -> frames, NOT clamped (training needs gradients past [-1, 1]).

    For a WanVAE this is ``decode`` without the latent scaling and the clamp: one causal pass, one latent frame
    at a time, through the same modules (a patchified VAE's output put back into pixels).
    """
    if isinstance(model, ImageVAE):
        return model.decode_raw(latents)
    x = model.conv2(latents.to(model.dtype))  # [B, z, T', h, w]
    cache = FeatureCache()
    chunks = []
    for k in range(x.shape[2]):
        cache.next_chunk()
        chunks.append(model.decoder(x[:, :, k:k + 1], cache))
    return unpatchify(torch.cat(chunks, dim=2), model.cfg.patch_size)  # [B, 3, 1 + 4(T'-1), H, W]


def video_of(batch: dict | torch.Tensor) -> torch.Tensor:
    video = batch.get("video") if isinstance(batch, dict) else batch
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"VAE training batches are dicts with 'video' [B, 3, T, H, W] in [-1, 1]; got {got}.")
    return video


def cell_colours(model: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """The mean colour of the pixels each latent cell encodes: [B, 3, T', H/8, W/8] for ``video`` [B, 3, T, H, W].

    An ImageVAE encodes each frame alone; a WanVAE's first latent frame encodes the first frame, each later one
    the next ``temporal_compression`` frames.
    """
    s = model.cfg.spatial_compression
    t = model.cfg.temporal_compression if isinstance(model, WanVAE) else 1
    if t == 1 or video.shape[2] == 1:
        return F.avg_pool3d(video, (1, s, s))
    first = F.avg_pool3d(video[:, :, :1], (1, s, s))
    return torch.cat([first, F.avg_pool3d(video[:, :, 1:], (t, s, s))], dim=2)


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


# ----------------------------------------------------------------------------- latent statistics, export


@torch.no_grad()
def latent_stats(model: nn.Module, data: Iterable, max_batches: int = 16) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior mean mu over the first ``max_batches`` batches of ``data``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = total_sq = None
    count = 0
    for batch in _first_batches(data, max_batches):
        mu = encode_moments(model, video_of(batch).to(device, model.dtype))[0].double()
        per_channel = mu.transpose(0, 1).flatten(1)  # [z, B·T'·h·w]
        s, s2 = per_channel.sum(1), per_channel.square().sum(1)
        total, total_sq = (s, s2) if total is None else (total + s, total_sq + s2)
        count += per_channel.shape[1]
    model.train(was_training)
    if count == 0:
        raise ValueError("the data gave no batches to measure the latent statistics on.")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def _first_batches(data: Iterable, n: int) -> Iterator[dict | torch.Tensor]:
    """Up to ``n`` non-None batches, iterating ``data`` again when a pass ends (a resumable source may have been
    left at the end of an epoch); stops after two passes in a row that give nothing."""
    taken, empty_passes = 0, 0
    for _ in range(n + 2):
        got = False
        for batch in data:
            got = True
            if batch is None:
                continue
            yield batch
            taken += 1
            if taken == n:
                return
        empty_passes = 0 if got else empty_passes + 1
        if empty_passes == 2:
            return


def with_latent_stats(vae: WanVAE, mean: Iterable[float], std: Iterable[float]) -> WanVAE:
    """A copy of ``vae`` whose config (and so ``encode``/``decode`` scaling) carries these latent statistics. New
    statistics make a new normalised latent space, so the copy records no trained decoder noise range in it
    (``decode_noise`` None)."""
    return with_config(vae, latents_mean=tuple(float(m) for m in mean), latents_std=tuple(float(s) for s in std),
                       decode_noise=None)


def with_config(vae: WanVAE, **changes) -> WanVAE:
    """A copy of ``vae`` (the same tensors, cloned) whose VAEConfig has ``changes`` (fields that keep the tensors'
    shapes: latent statistics, ``decode_noise``)."""
    cfg = vae.cfg.replace(**changes)
    with torch.device("meta"):
        out = WanVAE(cfg)
    out.load_state_dict({k: v.detach().clone() for k, v in vae.state_dict().items()}, assign=True)
    return out.to(next(vae.parameters()).device).train(vae.training)


def export_wan_vae(vae: WanVAE, out_dir: str | Path, name: str = WAN_VAE_NAME) -> Path:
    """Write ``<name>.pth`` (official Wan2.1 layout, loads with ``WanVAE.from_pretrained``) and ``<name>.json``
    (its VAEConfig, latent statistics included); returns the .pth path."""
    return _export(vae, out_dir, name)


def load_trained_vae(path: str | Path) -> WanVAE:
    """``WanVAE.from_pretrained(path)`` in float32 (training keeps float32 weights; a release may store half
    precision), with the latent statistics of ``<stem>.json`` beside it, when present (the loader reads them)."""
    return WanVAE.from_pretrained(path, dtype=torch.float32)


def export_image_vae(model: ImageVAE, out_dir: str | Path, name: str = IMAGE_VAE_NAME) -> Path:
    """Write the stage-1 model as ``<name>.pth`` (state dict) and ``<name>.json`` (its VAEConfig)."""
    return _export(model, out_dir, name)


def _export(model: nn.Module, out_dir: str | Path, name: str) -> Path:
    """``<name>.pth`` (float32 state dict) and ``<name>.json`` (the model's VAEConfig), each written atomically."""
    path = Path(out_dir) / f"{name}.pth"
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save(state, path)
    _write_json(path.with_suffix(".json"), model.cfg.to_dict())
    return path


def load_image_vae(path: str | Path) -> ImageVAE:
    """The stage-1 model written by :func:`export_image_vae` (needs the .json beside the .pth)."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise ValueError(f"{sidecar} is missing; a stage-1 image VAE is {path.name} with its config {sidecar.name} "
                         "beside it, as export_image_vae writes them.")
    model = ImageVAE(_read_config_json(sidecar))
    return load_strict(model, read_state_dict(path), source=path, assign=False)


def _read_config_json(path: Path) -> VAEConfig:
    try:
        return VAEConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path} is not a readable VAE config JSON ({err}); write it again with the export.") from None


def is_image_vae_file(path: str | Path) -> bool:
    """True for a stage-1 image VAE file (kernels one frame deep), False for a 3D WanVAE file."""
    weight = read_state_dict(path).get("encoder.conv1.weight")
    if weight is None or weight.ndim != 5:
        raise ValueError(f"{path} is not a Wan VAE weights file (no 5D encoder.conv1.weight).")
    return weight.shape[2] == 1


# ------------------------------------------------------------------------------------------- a stage


def initial_model(stage: int, init: str | Path | None = None, vae_config: VAEConfig | None = None,
                  decoder_dim: int | None = None, fresh_3d: bool = False, per_frame: bool = False) -> nn.Module:
    """The model a stage starts from.

    Stage 1: ``init`` (an image VAE file, to continue) or a fresh ImageVAE of ``vae_config`` (default: the
    released Wan2.1 widths). Stages 2 and 3: ``init`` is required — an image VAE file is inflated, a 3D VAE file
    (``Wan2.1_VAE.pth`` of the previous stage) is loaded. ``decoder_dim``: the decoder's base width — a fresh
    model is built with it, a loaded one narrower than it is widened (:func:`widen_decoder`). ``fresh_3d`` (stage 2,
    no ``init``): a fresh 3D WanVAE of ``vae_config``, trained on clips from the start. ``per_frame`` (a 3D
    ``init``): that VAE through :func:`per_frame_start`.
    """
    if init is None and (stage == 1 or (stage == 2 and fresh_3d)):
        cfg = vae_config or VAEConfig()
        cfg = cfg if decoder_dim is None else cfg.replace(decoder_dim=decoder_dim)
        return ImageVAE(cfg) if stage == 1 else WanVAE(cfg)
    if init is None:
        previous = "the stage-1 image_vae.pth" if stage == 2 else "the stage-2 Wan2.1_VAE.pth"
        raise ValueError(f"stage {stage} starts from a trained model; give init= {previous}.")
    if stage == 1:
        model = load_image_vae(init)
    elif is_image_vae_file(init):  # per_frame has nothing to do here: inflation starts frame by frame
        log.info("inflating the image VAE %s to the 3D causal VAE", init)
        model = inflate_image_vae(load_image_vae(init))
    else:
        model = load_trained_vae(init).train()
        if per_frame:
            log.info("starting from the newest-frame taps of %s", init)
            model = per_frame_start(model)
    if decoder_dim is not None and decoder_dim != model.cfg.decoder_width:
        log.info("widening the decoder of %s from %d to %d base channels", init, model.cfg.decoder_width, decoder_dim)
        model = widen_decoder(model, decoder_dim)
    return model


__all__ = [
    "IMAGE_VAE_NAME",
    "WAN_VAE_NAME",
    "cell_colours",
    "decode_raw",
    "encode_moments",
    "export_image_vae",
    "export_wan_vae",
    "inflate_image_vae",
    "initial_model",
    "per_frame_start",
    "is_image_vae_file",
    "latent_stats",
    "load_image_vae",
    "load_trained_vae",
    "video_of",
    "widen_decoder",
    "with_config",
    "with_latent_stats",
]
