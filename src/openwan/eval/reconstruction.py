"""VAE reconstruction quality: PSNR and SSIM of encode -> decode, on synthetic clips and on real photographs.

Synthetic clips are rendered from the held-out combinations of :mod:`openwan.data.synthetic` and, like the
dataset's files, stored as mp4 and decoded again. Real clips are photographs shipped with scikit-image, turned
into short camera moves: a horizontal pan and a zoom-in for each, cropped with sub-pixel windows and downscaled
with an antialiasing filter. PSNR is over a whole clip (peak 1, frames in [0, 1]); SSIM is the standard
Gaussian-window SSIM (Wang et al. 2004: sigma 1.5, K1 0.01, K2 0.03) of each frame, averaged over frames; both
are then averaged over clips. On synthetic clips the shapes detector (:mod:`openwan.eval.detector`) also reads
each 8-frame window of the original and of its reconstruction: how often the reconstruction's object still has the
clip's shape is what a video model on these latents can show of it at best (a decoder that rounds a square's corners
makes every square the model draws read as a circle).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image
from skimage.metrics import structural_similarity
from tqdm.auto import tqdm

from openwan.data.synthetic import MP4_OPTIONS, dataset_combinations, render_clip
from openwan.data.video import read_video, save_video
from openwan.eval.detector import detect
from openwan.eval.prompts import GridCell, GridRow, strip_frames, write_grid
from openwan.fileio import atomic_write

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # colour photographs bundled with scikit-image
REPORT_FILE, GRID_FILE = "vae_report.json", "vae_samples.png"


# -------------------------------------------------------------------------------------------- metrics


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """PSNR in dB of ``test`` against ``reference`` (same shape, values in [0, 1]) over all their elements;
    at most 100 dB (identical inputs), so reports stay finite JSON."""
    mse = float(((reference.double() - test.double()) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def ssim(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Mean over frames of the Gaussian-window SSIM of ``test`` against ``reference`` ([T, H, W, 3] in [0, 1])."""
    ref, out = reference.double().cpu().numpy(), test.double().cpu().numpy()
    scores = [structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False) for a, b in zip(ref, out)]
    return float(np.mean(scores))


@torch.no_grad()
def reconstruct(vae, clips: torch.Tensor) -> torch.Tensor:
    """Clips [T, H, W, 3] (or a batch [B, T, H, W, 3]) in [0, 1] through the VAE's encode and decode, back in
    the same layout and range."""
    param = next(vae.parameters())
    batch = clips if clips.ndim == 5 else clips[None]
    x = batch.permute(0, 4, 1, 2, 3).to(param.device, param.dtype) * 2 - 1  # [B, 3, T, H, W] in [-1, 1]
    y = vae.decode(vae.encode(x))
    out = ((y.float().permute(0, 2, 3, 4, 1) + 1) / 2).clamp(0, 1).cpu()  # [B, T, H, W, 3]
    return out if clips.ndim == 5 else out[0]


SHAPE_WINDOW, SHAPE_STRIDE = 8, 4  # frames per window the shape is read on, and between window starts


def shapes_kept(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], shapes: list[str], wrap: bool = False) -> dict:
    """How often the detector reads ``shapes[i]`` in the 8-frame windows (every 4 frames) of the i-th original and
    reconstruction of ``pairs`` (name, clip [T, H, W, 3], reconstruction); overall and per shape. ``wrap``: objects
    that wrap around the frame's edges (``--paths wrap``)."""
    hits: dict[str, dict[str, list[bool]]] = {"original": {}, "reconstruction": {}}
    for (_, clip, out), shape in zip(pairs, shapes):
        starts = range(0, max(1, clip.shape[0] - SHAPE_WINDOW + 1), SHAPE_STRIDE)
        for kind, video in (("original", clip), ("reconstruction", out)):
            read = [detect(video[t:t + SHAPE_WINDOW], wrap=wrap).shape == shape for t in starts]
            hits[kind].setdefault(shape, []).extend(read)
    report = {}
    for kind, by_shape in hits.items():
        every = [hit for read in by_shape.values() for hit in read]
        report[kind] = round(sum(every) / max(1, len(every)), 4)
        report[f"{kind}_by_shape"] = {k: round(sum(v) / len(v), 4) for k, v in sorted(by_shape.items())}
    return report


# ---------------------------------------------------------------------------------------------- clips


def synthetic_clips(num: int, seed: int = 0, size: tuple[int, int] = (64, 64), frames: int = 17,
                    codec: bool = True, paths: str = "long") -> list[tuple[str, torch.Tensor]]:
    """``num`` clips of the held-out combinations, each combination equally often (±1), with the object on
    ``paths`` (:data:`~openwan.data.synthetic.PATHS`; those of the dataset the VAE serves — how far the object
    travels between frames is much of what the VAE's temporal compression has to keep). With ``codec`` they go
    through the dataset's mp4 encoding and back, as the dataset (and so the VAE's training data) holds them."""
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, combo in enumerate(dataset_combinations(num, seed, "heldout")):
            clip = render_clip(*combo, seed=seed * 100003 + i, size=size, frames=frames, paths=paths)
            if codec:
                clip = read_video(save_video(clip, Path(tmp) / "clip.mp4", **MP4_OPTIONS))
            clips.append(("-".join(combo) + f"-{i}", clip))
    return clips


def load_photo(name: str) -> Image.Image:
    """A colour photograph bundled with scikit-image, by name (e.g. "astronaut")."""
    loader = getattr(skimage.data, name, None)
    array = loader() if callable(loader) else None
    if not isinstance(array, np.ndarray) or array.ndim != 3 or array.shape[-1] < 3:
        raise ValueError(f"{name!r} is not a colour photograph of skimage.data; use one of {', '.join(PHOTOS)}.")
    return Image.fromarray(np.ascontiguousarray(array[..., :3]))


def _window(image: Image.Image, size: tuple[int, int], fraction: float) -> tuple[float, float]:
    """Width and height of a crop window with the aspect ratio of ``size``, ``fraction`` of the largest one."""
    aspect = size[0] / size[1]
    width = min(image.width, image.height * aspect) * fraction
    return width, width / aspect


def _crops(image: Image.Image, boxes: list[tuple[float, float, float, float]],
           size: tuple[int, int]) -> torch.Tensor:
    """Each (left, top, right, bottom) box resampled to ``size``: [T, H, W, 3] in [0, 1]."""
    frames = [np.asarray(image.resize(size, Image.BICUBIC, box=box)) for box in boxes]
    return torch.from_numpy(np.stack(frames)).float().div(255)


def pan_clip(image: Image.Image, size: tuple[int, int] = (64, 64), frames: int = 17) -> torch.Tensor:
    """A left-to-right pan across the middle of ``image``: the window (60% of the largest) moves over a
    quarter of the image's width."""
    w, h = _window(image, size, 0.6)
    travel = min(0.25 * image.width, image.width - w)
    left0, top = (image.width - w - travel) / 2, (image.height - h) / 2
    boxes = [(left0 + f * travel, top, left0 + f * travel + w, top + h)
             for f in np.linspace(0, 1, frames)]
    return _crops(image, boxes, size)


def zoom_clip(image: Image.Image, size: tuple[int, int] = (64, 64), frames: int = 17) -> torch.Tensor:
    """A zoom into the centre of ``image``: the window shrinks from the largest to half of it, geometrically
    (a steady zoom speed)."""
    cx, cy = image.width / 2, image.height / 2
    boxes = []
    for f in np.linspace(0, 1, frames):
        w, h = _window(image, size, 0.5**f)
        boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return _crops(image, boxes, size)


def photo_clips(names: tuple[str, ...] | list[str] = PHOTOS, size: tuple[int, int] = (64, 64),
                frames: int = 17) -> list[tuple[str, torch.Tensor]]:
    """A pan and a zoom clip for each photograph."""
    clips = []
    for name in names:
        image = load_photo(name)
        clips += [(f"{name}-pan", pan_clip(image, size, frames)), (f"{name}-zoom", zoom_clip(image, size, frames))]
    return clips


# ------------------------------------------------------------------------------------------- flat fields

# Flat colour fields: muted greys with a faint tint, as the synthetic backgrounds are, and stronger colours.
FLAT_COLOURS = ((0.30, 0.34, 0.26), (0.30, 0.26, 0.34), (0.34, 0.30, 0.26), (0.20, 0.22, 0.27), (0.40, 0.37, 0.42),
                (0.50, 0.30, 0.30), (0.20, 0.30, 0.50), (0.30, 0.50, 0.25))


def chroma_kept(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """How much of the inputs' chroma the outputs keep: the least-squares slope of each output's mean colour off
    its own grey (the mean of its channels) on the input's. 1: every tint kept; 0: everything comes back grey.
    ``inputs``, ``outputs``: [N, ..., 3] in [0, 1]."""
    def chroma(x: torch.Tensor) -> torch.Tensor:
        colour = x.double().flatten(1, -2).mean(1)  # [N, 3]
        return colour - colour.mean(-1, keepdim=True)

    given, got = chroma(inputs), chroma(outputs)
    return float((given * got).sum() / (given * given).sum().clamp_min(1e-12))


def flat_fields(vae, size: tuple[int, int] = (64, 64), frames: int = 17,
                colours: tuple[tuple[float, float, float], ...] = FLAT_COLOURS, batch_size: int = 4) -> dict:
    """Clips of one flat colour each through the VAE, ``batch_size`` at a time: their PSNR and
    :func:`chroma_kept`. A VAE that has learnt colour only where edges are (objects) and renders uniform areas
    grey shows it here before anywhere else."""
    width, height = size
    clips = torch.tensor(colours, dtype=torch.float32)[:, None, None, None].expand(-1, frames, height, width, -1)
    outs = torch.cat([reconstruct(vae, batch.contiguous()) for batch in clips.split(batch_size)])
    return {"fields": len(colours), "chroma_kept": round(chroma_kept(clips, outs), 4),
            "psnr": round(float(np.mean([psnr(c, o) for c, o in zip(clips, outs)])), 3)}


# ------------------------------------------------------------------------------------------------ run


def check_clip_settings(size: tuple[int, int], frames: int) -> None:
    """ValueError unless the VAE can take clips of ``size`` (width, height) and ``frames``."""
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"the VAE takes 4n+1 frames (e.g. 17); got {frames}.")
    if size[0] % 16 or size[1] % 16 or min(size) < 16:
        raise ValueError(f"size must be multiples of 16 pixels (e.g. 64x64); got {size[0]}x{size[1]}.")


def _score(vae, clips: list[tuple[str, torch.Tensor]], batch_size: int, progress: bool,
           desc: str) -> tuple[dict, list]:
    per_clip, pairs = [], []
    for start in tqdm(range(0, len(clips), batch_size), desc=desc, disable=not progress):
        names, batch = zip(*clips[start:start + batch_size])
        outs = reconstruct(vae, torch.stack(batch))  # a batch costs far less than its clips one by one
        for name, clip, out in zip(names, batch, outs):
            per_clip.append({"name": name, "psnr": round(psnr(clip, out), 3), "ssim": round(ssim(clip, out), 4)})
            pairs.append((name, clip, out))
    summary = {"clips": len(per_clip)}
    for metric in ("psnr", "ssim"):
        values = [c[metric] for c in per_clip]
        summary[metric] = round(float(np.mean(values)), 4)
        summary[f"{metric}_min"] = round(float(np.min(values)), 4)
    return {**summary, "per_clip": per_clip}, pairs


def evaluate_vae(vae, out_dir: str | Path | None = None, *, size: tuple[int, int] = (64, 64), frames: int = 17,
                 num_synthetic: int = 36, seed: int = 0, photos: tuple[str, ...] | list[str] = PHOTOS,
                 batch_size: int = 4, checkpoint: str | None = None, progress: bool = True,
                 paths: str = "long") -> dict:
    """PSNR / SSIM of ``vae`` (a :class:`~openwan.models.WanVAE`, on its device) on ``num_synthetic`` held-out
    synthetic clips (objects on ``paths``, as :func:`synthetic_clips`) and on pan/zoom clips of ``photos``, and
    how much colour it keeps in flat fields (:func:`flat_fields`).
    With ``out_dir``, writes ``vae_report.json`` and a PNG of originals over reconstructions there. Returns the
    report."""
    check_clip_settings(size, frames)
    if num_synthetic <= 0 and not photos:
        raise ValueError("nothing to evaluate: ask for synthetic clips (num_synthetic > 0) or photos.")
    report: dict = {"checkpoint": checkpoint, "size": list(size), "frames": frames, "seed": seed}
    pairs = []
    if num_synthetic > 0:
        clips = synthetic_clips(num_synthetic, seed, size, frames, paths=paths)
        report["paths"] = paths
        report["synthetic"], found = _score(vae, clips, batch_size, progress, "synthetic")
        shapes = [combo[1] for combo in dataset_combinations(num_synthetic, seed, "heldout")]  # synthetic_clips' order
        report["synthetic"]["shape_kept"] = shapes_kept(found, shapes, wrap=paths == "wrap")
        pairs += found[:4]
    if photos:
        report["photos"], found = _score(vae, photo_clips(photos, size, frames), batch_size, progress, "photos")
        pairs += found
    report["flat_fields"] = flat_fields(vae, size, frames, batch_size=batch_size)
    if out_dir is not None:
        out_dir = Path(out_dir)
        rows = [GridRow(name, [GridCell(strip_frames(clip, 4), "original"),
                               GridCell(strip_frames(out, 4), f"reconstruction: {psnr(clip, out):.1f} dB")])
                for name, clip, out in pairs]
        if rows:
            write_grid(rows, out_dir / GRID_FILE, title=_title(report))
            report["files"] = {"report": REPORT_FILE, "grid": GRID_FILE}
        text = json.dumps(report, indent=2)
        atomic_write(out_dir / REPORT_FILE, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return report


def _title(report: dict) -> str:
    parts = [f"{k}: PSNR {report[k]['psnr']:.2f} dB, SSIM {report[k]['ssim']:.3f}" for k in ("synthetic", "photos")
             if k in report]
    return "VAE reconstruction - " + "; ".join(parts)


__all__ = ["psnr", "ssim", "chroma_kept", "flat_fields", "FLAT_COLOURS", "reconstruct", "synthetic_clips",
           "photo_clips", "pan_clip", "shapes_kept", "zoom_clip", "load_photo", "evaluate_vae", "check_clip_settings",
           "PHOTOS"]
