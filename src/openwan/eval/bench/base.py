"""The contract every bench dimension follows: a :class:`Video` in, a :class:`Score` out.

A dimension is a small class with one job (``temporal.py``, ``camera.py``, ``text.py``, ...):

- ``name``: its key in reports (``temporal_flickering``); ``stands_for``: the Wan-Bench / VBench dimension it
  measures; ``needs``: what it needs beyond frames (``"prompt"``, a model).
- ``available()``: None when it can run, else the sentence ``"not measured: <what to install or give>"``.
- ``setup()``: loads its models (idempotent); construction stays cheap.
- ``score(video)``: a :class:`Score` whose ``value`` lies in [0, 1] with higher better by the dimension's own
  definition (VBench's convention, so dimensions can be averaged); the physical measure it came from goes in
  ``details`` with its unit in the key (``flow_px_per_frame``).

Frames are uint8 RGB ``[T, H, W, 3]`` as :func:`openwan.curate.measures` takes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ANALYSIS_SHORT_SIDE = 256  # frames are measured with their short side at most this many pixels


@dataclass(frozen=True)
class Video:
    """One video to score: ``frames`` uint8 RGB ``[T, H, W, 3]`` at ``fps``, the ``prompt`` that made it (None when
    unknown), the file it came from and an ``id`` unique within a run (the file's stem by default)."""

    frames: np.ndarray
    fps: float
    prompt: str | None = None
    path: str | None = None
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        frames = np.asarray(self.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
            raise ValueError(f"video {self.id or self.path or '?'}: frames must be uint8 [T, H, W, 3] with T >= 1; "
                             f"got {frames.dtype} {tuple(frames.shape)}.")
        if not self.fps > 0:
            raise ValueError(f"video {self.id or self.path or '?'}: fps must be > 0; got {self.fps}.")
        object.__setattr__(self, "frames", frames)
        if not self.id:
            object.__setattr__(self, "id", Path(self.path).stem if self.path else "video")

    def analysis_frames(self, short_side: int = ANALYSIS_SHORT_SIDE) -> np.ndarray:
        """The frames area-resized so the short side is at most ``short_side`` px (never upscaled)."""
        import cv2

        t, h, w, _ = self.frames.shape
        if min(h, w) <= short_side:
            return self.frames
        scale = short_side / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in self.frames])


@dataclass(frozen=True)
class Score:
    """A dimension's verdict on one video. ``value`` in [0, 1], higher better; None with ``not_measured`` (the
    model it needs is missing: "not measured: <what to install>") or ``not_applicable`` (the video or its prompt
    gives the dimension nothing to judge, e.g. a prompt that asks for no text)."""

    value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    not_measured: str | None = None
    not_applicable: str | None = None

    def __post_init__(self):
        if self.value is None and not (self.not_measured or self.not_applicable):
            raise ValueError("a Score without a value must say why: not_measured or not_applicable.")
        if self.value is not None and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a Score's value must lie in [0, 1]; got {self.value}.")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, **({"details": self.details} if self.details else {})}
        if self.not_measured:
            out["not_measured"] = self.not_measured
        if self.not_applicable:
            out["not_applicable"] = self.not_applicable
        return out


@dataclass(frozen=True)
class BenchWeights:
    """Weights the user gives for the dimensions that need a model no package ships; None: not given.

    ``clip``: a transformers CLIP folder (``CLIPModel.from_pretrained``: image and text towers), "wan-clip" (openwan's
    loader of the Wan i2v release's CLIP ViT-H image tower, at ``clip_path``) or an open_clip model name
    (``clip_path`` its pretrained tag or checkpoint file). ``aesthetic_clip_path`` and
    ``aesthetic_head_path``: the LAION predictor's CLIP ViT-L/14 folder and MLP head (as ``openwan curate``'s
    aesthetic section). ``musiq``: a pyiqa metric name (``musiq-spaq``, the MUSIQ VBench uses), scored when pyiqa
    is installed. ``device``: where the models run (None: cuda when available, else cpu)."""

    clip: str | None = None
    clip_path: str | None = None
    aesthetic_clip_path: str | None = None
    aesthetic_head_path: str | None = None
    musiq: str | None = "musiq-spaq"
    device: str | None = None


class Dimension(ABC):
    """One measured dimension; see the module docstring for the contract."""

    name: str = ""
    stands_for: str = ""  # e.g. "VBench temporal flickering; Wan-Bench pixel-level stability"
    needs: tuple[str, ...] = ()  # e.g. ("prompt",) or ("prompt", "CLIP weights")

    def __init__(self, weights: BenchWeights | None = None):
        self.weights = weights or BenchWeights()

    def available(self) -> str | None:
        """None when this dimension can run here; else "not measured: <what to install or give>"."""
        return None

    def setup(self) -> None:
        """Load models (idempotent). Weight-free dimensions have nothing to load."""
        return None

    @abstractmethod
    def score(self, video: Video) -> Score:
        """This dimension's :class:`Score` of ``video``."""
