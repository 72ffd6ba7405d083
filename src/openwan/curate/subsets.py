"""Task subsets (the Wan paper's section 3): which clips suit image-to-video, video continuation and
first-last-frame-to-video training, from weight-free pixel features. Subsets never reject a clip; they add flags
and scores that ``openwan curate select`` filters on.

Two frame features, both from the analysis frames:

- *layout colour*: CIE Lab histograms (4 L x 6 a x 6 b bins) of the four quarters of a 64x64 thumbnail; the
  similarity of two frames (or of two averaged sets of frames) is the mean over the quarters of the Bhattacharyya
  coefficient, in ``[0, 1]`` (1: the same colours in the same places).
- *structure*: the normalised cross-correlation of blurred 16x16 lightness thumbnails, clipped to ``[0, 1]``.

A *cut* is a step between consecutive frames where both similarities fall below ``cut_similarity``: a change
of colour and of structure at once, which camera moves and motion within a shot do not make. The rules:

- **i2v**: the first frame's layout-colour similarity to the mean of the other frames' histograms is at least
  ``i2v_min_similarity`` (the picture the video starts from stays what the video shows), and there is no cut.
- **continuation**: the clip lasts at least ``continuation_min_duration`` s, the mean histograms of its first
  ``continuation_head`` s and its last ``continuation_tail`` s are at least ``continuation_min_similarity``
  similar (the continued part belongs to the same scene), and there is no cut.
- **flf2v**: the first and last frames differ (layout-colour change = 1 - similarity) by at least
  ``flf2v_min_change`` while there is no cut: a clear, continuous transition between two different pictures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput

THUMB = 64  # layout-colour thumbnail side, pixels
STRUCT = 16  # structure thumbnail side, pixels
BINS = (4, 6, 6)  # Lab histogram bins: L over 0..255, a and b over 64..191 (OpenCV's 8-bit Lab, 128 = neutral)


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi or math.isnan(value):
        raise ValueError(f"subsets.{name} must be in [{lo}, {hi}]; got {value}.")


@dataclass(frozen=True)
class SubsetConfig:
    """Thresholds of the subset rules (see the module docstring). Similarities are in ``[0, 1]``, times in s."""

    enabled: bool = True
    i2v_min_similarity: float = 0.9
    continuation_min_duration: float = 5.0
    continuation_head: float = 1.5
    continuation_tail: float = 3.5
    continuation_min_similarity: float = 0.85
    flf2v_min_change: float = 0.5
    cut_similarity: float = 0.8

    def __post_init__(self) -> None:
        for name in ("i2v_min_similarity", "continuation_min_similarity", "flf2v_min_change", "cut_similarity"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("continuation_head", self.continuation_head, 1e-3, 1e4)
        _check_range("continuation_tail", self.continuation_tail, 1e-3, 1e4)
        if not self.continuation_min_duration >= self.continuation_head + self.continuation_tail:
            raise ValueError(f"subsets.continuation_min_duration must be at least continuation_head + "
                             f"continuation_tail ({self.continuation_head + self.continuation_tail:g} s) so the two "
                             f"parts do not overlap; got {self.continuation_min_duration}.")


# ------------------------------------------------------------------------------------------------ features


def layout_histograms(frames: np.ndarray) -> np.ndarray:
    """Per frame, the normalised Lab histograms of the thumbnail's four quarters: float64 ``[T, 4, 144]``."""
    out = np.empty((len(frames), 4, math.prod(BINS)))
    half = THUMB // 2
    for t, frame in enumerate(frames):
        lab = cv2.cvtColor(cv2.resize(frame, (THUMB, THUMB), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2LAB)
        lab = lab.astype(np.int32)
        index = ((lab[..., 0] * BINS[0]) >> 8) * BINS[1] * BINS[2]
        index += np.clip((lab[..., 1] - 64) * BINS[1] // 128, 0, BINS[1] - 1) * BINS[2]
        index += np.clip((lab[..., 2] - 64) * BINS[2] // 128, 0, BINS[2] - 1)
        for q, (r, c) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            cell = index[r * half:(r + 1) * half, c * half:(c + 1) * half].ravel()
            out[t, q] = np.bincount(cell, minlength=out.shape[2]) / cell.size
    return out


def structure_thumbnails(frames: np.ndarray) -> np.ndarray:
    """Per frame, the blurred 16x16 lightness thumbnail: float32 ``[T, 16, 16]`` on 0..255."""
    out = []
    for frame in frames:
        small = cv2.resize(frame, (STRUCT, STRUCT), interpolation=cv2.INTER_AREA)
        light = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32)
        out.append(cv2.GaussianBlur(light, (3, 3), 0))
    return np.stack(out)


def layout_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over quarters of the Bhattacharyya coefficient of two ``[4, bins]`` histogram sets, in [0, 1]."""
    return float(np.sqrt(a * b).sum(axis=-1).mean())


def structure_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two thumbnails, clipped to [0, 1] (a flat thumbnail gives 0)."""
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return max(0.0, float((a * b).sum()) / norm) if norm > 1e-6 else 0.0


def continuity(hists: np.ndarray, thumbs: np.ndarray) -> float:
    """The lowest over consecutive frame pairs of max(layout-colour, structure similarity), in [0, 1]; 1 for
    fewer than two frames. Below ``cut_similarity`` means a cut."""
    steps = [max(layout_similarity(hists[k], hists[k + 1]), structure_similarity(thumbs[k], thumbs[k + 1]))
             for k in range(len(hists) - 1)]
    return min(steps, default=1.0)


# --------------------------------------------------------------------------------------------------- stage


class SubsetStage:
    """Flags each clip for the i2v, continuation and flf2v subsets. Values: ``subset_i2v`` /
    ``subset_continuation`` / ``subset_flf2v`` (bool), their ``*_score`` (similarity, similarity, change; the
    continuation score is None for clips shorter than ``continuation_min_duration``), and
    ``subset_continuity`` (the lowest consecutive-frame similarity; below ``cut_similarity``: a cut). Never
    gives a reason."""

    name = "subsets"
    resources = Resources(num_cpus=0.25)

    def __init__(self, cfg: SubsetConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        cfg = self.cfg
        hists = layout_histograms(frames.frames)
        thumbs = structure_thumbnails(frames.frames)
        smooth = continuity(hists, thumbs)
        no_cut = smooth >= cfg.cut_similarity
        values: dict[str, Any] = {"subset_continuity": round(smooth, 4)}
        if len(frames) >= 2:
            i2v = layout_similarity(hists[0], hists[1:].mean(axis=0))
            change = 1.0 - layout_similarity(hists[0], hists[-1])
        else:
            i2v, change = None, None
        values["subset_i2v"] = bool(i2v is not None and i2v >= cfg.i2v_min_similarity and no_cut)
        values["subset_i2v_score"] = None if i2v is None else round(i2v, 4)
        cont = self._continuation(clip, frames, hists)
        values["subset_continuation"] = bool(cont is not None and cont >= cfg.continuation_min_similarity and no_cut)
        values["subset_continuation_score"] = None if cont is None else round(cont, 4)
        values["subset_flf2v"] = bool(change is not None and change >= cfg.flf2v_min_change and no_cut)
        values["subset_flf2v_score"] = None if change is None else round(change, 4)
        return StageOutput(values=values)

    def _continuation(self, clip: dict[str, Any], frames: ClipFrames, hists: np.ndarray) -> float | None:
        """Layout-colour similarity of the head's and the tail's mean histograms; None for a short clip."""
        cfg = self.cfg
        times = np.asarray(frames.times, dtype=np.float64)
        start = float(clip["start"]) if clip.get("start") is not None else float(times[0])
        end = float(clip["end"]) if clip.get("end") is not None else float(times[-1]) + 1.0 / frames.fps
        if end - start < cfg.continuation_min_duration - 1e-6:
            return None
        head = times < start + cfg.continuation_head - 1e-6
        tail = times >= end - cfg.continuation_tail - 1e-6
        if not head.any() or not tail.any():
            return None
        return layout_similarity(hists[head].mean(axis=0), hists[tail].mean(axis=0))


__all__ = ["SubsetConfig", "SubsetStage", "layout_histograms", "structure_thumbnails", "layout_similarity",
           "structure_similarity", "continuity"]
