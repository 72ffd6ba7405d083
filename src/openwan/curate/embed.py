"""Clip embeddings: one L2-normalised vector per clip, the mean over a few key frames, from a pluggable embedder.

Embedders:

- ``wan-clip``: the CLIP ViT-H/14 image tower of a Wan i2v release (``models_clip_open-clip-xlm-roberta-large-vit-
  huge-14.pth``), loaded and preprocessed as the i2v pipeline does (:func:`openwan.models.load_clip_encoder`,
  :func:`openwan.models.image_encoder.encode_images` on frames in [-1, 1]); the vector is the class token of the
  features Wan feeds the DiT (the penultimate block's output), 1280 numbers.
- ``open-clip``: an ``open_clip`` model (``embed.model``, e.g. ``ViT-H-14``) with its pretrained file
  (``embed.path``), when the ``open_clip_torch`` package is installed; the vector is ``encode_image``.
- ``pixels``: no weights. Per key frame: a small Lab thumbnail (layout and colour, mean removed per channel), a
  Lab colour histogram and a grid of gradient-orientation histograms (texture and edges), each block
  L2-normalised, weighted, and joined. Good enough to group near-duplicates and visually similar clips of real
  footage; it knows nothing of semantics beyond colour, layout and texture.

``auto`` picks ``wan-clip`` when ``embed.path`` is given, else ``pixels``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput

PIXELS_MODEL = "pixels-v1"  # the embed_model of the weight-free embedder; bump it when its features change
WAN_CLIP_MODEL = "wan-clip-vit-h-14"


def key_frame_indices(length: int, count: int) -> list[int]:
    """Indices of ``count`` key frames of a clip of ``length`` frames: the centres of ``count`` equal parts (all
    frames when the clip is shorter). The same positions for the same length, so re-encodes line up."""
    if length <= 0:
        return []
    if length <= count:
        return list(range(length))
    return sorted({min(length - 1, int((i + 0.5) * length / count)) for i in range(count)})


@dataclass(frozen=True)
class EmbedConfig:
    """Section ``embed``: which embedder gives ``embed_vector`` and from which weights.

    ``path``: for ``wan-clip`` a Wan i2v release folder or its CLIP ``.pth``; for ``open-clip`` the pretrained
    file of ``model``. ``frames``: key frames per clip (the vector is their mean). ``device``: ``cpu`` or
    ``cuda[:n]`` (model embedders only).
    """

    enabled: bool = True
    embedder: Literal["auto", "wan-clip", "open-clip", "pixels"] = "auto"
    path: str | None = None
    model: str = "ViT-H-14"
    frames: int = 3
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"embed.frames must be >= 1 (key frames per clip); got {self.frames}.")
        if self.embedder in ("wan-clip", "open-clip") and not self.path:
            what = ("a Wan i2v release folder or its models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
                    if self.embedder == "wan-clip" else "the pretrained file of embed.model")
            raise ValueError(f"embed.embedder {self.embedder} needs embed.path: give {what}, or use "
                             f"embed.embedder: pixels (no weights).")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"embed.device must be cpu or cuda[:n]; got {self.device!r}.")

    @property
    def resolved(self) -> str:
        """The embedder that runs: ``auto`` resolved to ``wan-clip`` (a path is given) or ``pixels``."""
        if self.embedder == "auto":
            return "wan-clip" if self.path else "pixels"
        return self.embedder


# ------------------------------------------------------------------------------------------- weight-free embedder

_THUMB = (8, 8)  # (width, height) of the Lab thumbnail
_GRID = 8  # gradient histograms on a GRID x GRID grid
_ORIENTATIONS = 8
_WEIGHTS = {"thumb": 1.5, "colour": 0.5, "edges": 1.0}


def pixel_features(frame: np.ndarray) -> np.ndarray:
    """The weight-free embedding of one uint8 RGB frame [H, W, 3]: 776 float32 numbers, L2 norm 1."""
    import cv2

    small = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)  # [64, 64, 3], all channels in 0..255
    thumb = cv2.resize(lab, _THUMB, interpolation=cv2.INTER_AREA)  # [8, 8, 3]
    thumb = (thumb - thumb.reshape(-1, 3).mean(0)).ravel()  # layout, not overall colour
    colour_l = np.bincount((lab[..., 0] // 32).astype(np.int64).ravel(), minlength=8)  # 8 lightness bins
    a, b = (np.clip((lab[..., c] - 64) // 16, 0, 7).astype(np.int64) for c in (1, 2))  # a, b in 64..192: 8 bins each
    colour_ab = np.bincount((a * 8 + b).ravel(), minlength=64)
    colour = np.sqrt(np.concatenate([colour_l, colour_ab]).astype(np.float32))  # Hellinger: sqrt of counts
    grey = lab[..., 0]
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    angle = (np.arctan2(gy, gx) % np.pi) / np.pi * _ORIENTATIONS  # unsigned orientation in [0, 8)
    bins = np.minimum(angle.astype(np.int64), _ORIENTATIONS - 1)
    cell = (np.arange(64) * _GRID // 64)
    cells = cell[:, None] * _GRID + cell[None, :]  # [64, 64] cell index
    edges = np.bincount((cells * _ORIENTATIONS + bins).ravel(), weights=magnitude.ravel(),
                        minlength=_GRID * _GRID * _ORIENTATIONS)
    edges = np.sqrt(edges).astype(np.float32)
    parts = [_WEIGHTS[name] * _unit(block) for name, block in (("thumb", thumb), ("colour", colour), ("edges", edges))]
    return _unit(np.concatenate(parts)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(x))
    return x / norm if norm > 0 else x


# ------------------------------------------------------------------------------------------------------ the stage


class EmbedStage:
    """Per-clip stage ``embed``: ``embed_vector`` (list of floats, L2 norm 1: the normalised mean of the key frames'
    normalised embeddings) and ``embed_model`` (the embedder's name; vectors of different models never mix)."""

    name = "embed"

    def __init__(self, cfg: EmbedConfig):
        self.cfg = cfg
        self.kind = cfg.resolved
        gpu = self.kind != "pixels" and cfg.device.startswith("cuda")
        self.resources = Resources(num_cpus=1.0, num_gpus=1.0 if gpu else 0.0)
        if self.kind == "open-clip" and importlib.util.find_spec("open_clip") is None:
            raise ValueError("embed.embedder open-clip needs the open_clip package: pip install open_clip_torch "
                             "(or use embed.embedder: wan-clip or pixels).")
        if self.kind != "pixels" and not Path(cfg.path).exists():
            raise ValueError(f"embed.path {cfg.path} does not exist; give the embedder's weights.")
        self.model_name = {"pixels": PIXELS_MODEL, "wan-clip": WAN_CLIP_MODEL}.get(
            self.kind, f"open-clip-{cfg.model}-{Path(cfg.path or '').name}")
        self._model = None
        self._preprocess = None

    def setup(self) -> None:
        """Load the embedder's weights once (nothing for ``pixels``)."""
        if self._model is not None or self.kind == "pixels":
            return
        import torch

        if self.kind == "wan-clip":
            from openwan.models import load_clip_encoder

            self._model = load_clip_encoder(self.cfg.path, dtype=torch.float32, device=self.cfg.device)
        else:
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(self.cfg.model, pretrained=self.cfg.path,
                                                                         device=self.cfg.device)
            self._model, self._preprocess = model.eval().requires_grad_(False), preprocess

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """Per-frame embeddings [N, D] (float32, each row L2 norm 1) of uint8 RGB frames [N, H, W, 3]."""
        if self.kind == "pixels":
            return np.stack([pixel_features(f) for f in frames])
        self.setup()
        import torch

        with torch.no_grad():
            if self.kind == "wan-clip":
                from openwan.models.image_encoder import encode_images

                x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.cfg.device)  # [N, H, W, 3] uint8
                images = x.permute(0, 3, 1, 2).float().div(127.5).sub(1)  # [N, 3, H, W] in [-1, 1], as i2v's frames
                out = encode_images(self._model, images)[:, 0]  # class token, [N, width]
            else:
                from PIL import Image

                batch = torch.stack([self._preprocess(Image.fromarray(f)) for f in frames]).to(self.cfg.device)
                out = self._model.encode_image(batch)
            out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy()

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        picks = key_frame_indices(len(frames), self.cfg.frames)
        if not picks:
            raise ValueError(f"clip {clip.get('clip_id')} has no frames to embed.")
        vector = _unit(self.embed_frames(frames.frames[picks]).astype(np.float64).mean(0))
        return StageOutput(values={"embed_vector": [float(v) for v in vector],
                                   "embed_model": self.model_name})


__all__ = ["EmbedConfig", "EmbedStage", "key_frame_indices", "pixel_features", "PIXELS_MODEL", "WAN_CLIP_MODEL"]
