"""Text coverage by OCR: the paper drops text-heavy videos, and the recognised text goes to the caption stage.

The detector and recogniser are PaddleOCR's PP-OCRv4 models as ``rapidocr-onnxruntime`` ships them (ONNX files
inside the package; nothing is downloaded). A few frames evenly spaced over the clip are read; a frame's coverage is
the union area of its detected text boxes over the frame's area, and the clip's coverage is the *largest* over those
frames: text shown on part of the clip (a title, a lower third) still marks the clip, where an average would dilute
it by the frames without text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.curate.filters import need_frames


@dataclass(frozen=True)
class OCRConfig:
    """Text-coverage limit. ``frames``: how many frames, evenly spaced, are read. ``det_size``: the short side in
    pixels the text detector works at (smaller frames are upscaled to it, so small captions are found).
    ``min_score``: recognition confidence below which a detected box is dropped. ``max_text_coverage``: the largest
    share of a frame that text may cover. ``threads``: onnxruntime threads per copy of the stage."""

    enabled: bool = True
    frames: int = 3
    det_size: int = 360
    min_score: float = 0.5
    max_text_coverage: float = 0.01
    threads: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.frames <= 100:
            raise ValueError(f"ocr.frames must be in [1, 100]; got {self.frames}.")
        if not 32 <= self.det_size <= 4096:
            raise ValueError(f"ocr.det_size must be in [32, 4096] pixels; got {self.det_size}.")
        for name in ("min_score", "max_text_coverage"):
            value = getattr(self, name)
            if not 0 <= value <= 1 or math.isnan(value):
                raise ValueError(f"ocr.{name} must be in [0, 1]; got {value}.")
        if not 1 <= self.threads <= 256:
            raise ValueError(f"ocr.threads must be in [1, 256]; got {self.threads}.")


def text_mask(boxes: list, height: int, width: int) -> np.ndarray:
    """uint8 ``[height, width]`` mask (1 inside any of the quadrilateral ``boxes``, each four (x, y) corners)."""
    mask = np.zeros((height, width), np.uint8)
    for box in boxes:
        cv2.fillPoly(mask, [np.round(np.asarray(box, np.float64)).astype(np.int32)], 1)
    return mask


class OCRStage:
    """Rejects clips whose text covers too much of a frame. Values: ``ocr_text_coverage`` (largest share of a frame
    covered by text boxes, in [0, 1]), ``ocr_text`` (the recognised text of all read frames, each distinct line
    once, in reading order, joined by " | "; "" when none) and ``ocr_boxes`` (how many text boxes were found)."""

    name = "ocr"

    def __init__(self, cfg: OCRConfig) -> None:
        self.cfg = cfg
        self.resources = Resources(num_cpus=float(cfg.threads))
        self._engine = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_engine": None}  # ONNX Runtime objects do not pickle; each worker runs setup()

    def setup(self) -> None:
        """Loads the detector and recogniser (once)."""
        if self._engine is not None:
            return
        from rapidocr_onnxruntime import RapidOCR

        self._engine = RapidOCR(intra_op_num_threads=self.cfg.threads, inter_op_num_threads=1,
                                det_limit_side_len=self.cfg.det_size, det_limit_type="min",
                                text_score=self.cfg.min_score)

    def read(self, frame: np.ndarray) -> list[tuple[list, str, float]]:
        """(box corners, text, confidence) of each line of text in one uint8 RGB frame ``[H, W, 3]``; lines
        without a letter or digit are dropped."""
        self.setup()
        # RapidOCR takes an array as BGR (as OpenCV reads it); the angle classifier is skipped: captions are upright.
        result, _ = self._engine(np.ascontiguousarray(frame[..., ::-1]), use_cls=False)
        # A line with no letter or digit (a lone block or dash read off a flat patch) is not text.
        return [(box, str(text), float(score)) for box, text, score in result or []
                if any(ch.isalnum() for ch in str(text))]

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        need_frames(clip, frames, "ocr")
        cfg = self.cfg
        t, h, w = frames.frames.shape[:3]
        picks = np.unique(np.linspace(0, t - 1, min(t, cfg.frames)).round().astype(int))
        coverage, lines, count = 0.0, [], 0
        for i in picks:
            found = self.read(frames.frames[i])
            count += len(found)
            coverage = max(coverage, float(text_mask([b for b, _, _ in found], h, w).mean()))
            lines += [text for _, text, _ in found if text not in lines]
        values = {"ocr_text_coverage": round(coverage, 5), "ocr_text": " | ".join(lines), "ocr_boxes": count}
        reasons = []
        if coverage > cfg.max_text_coverage:
            reasons.append(f"Text covers {coverage:.1%} of a frame, above the limit of {cfg.max_text_coverage:.1%}.")
        return StageOutput(values=values, reasons=reasons)


__all__ = ["OCRConfig", "OCRStage", "text_mask"]
