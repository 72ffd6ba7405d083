"""Static overlays (watermarks, channel logos, burnt-in captions): edges that stay put while the picture moves.

An overlay is drawn on top of the footage after it was shot, so its edges sit at the same pixels in every frame,
whatever the camera and the scene do. The stage finds *persistent edges* (pixels whose luma gradient is strong in
nearly every analysed frame), groups them into connected regions, and keeps the compact, strongly persistent regions
around which the picture changes on every side: a static edge amid moving content. Where the picture around an edge
is still, a static edge is just a still part of the scene, so it is not an overlay; a logo over a still background is
therefore not found (nothing distinguishes it from the scene), and a clip that barely changes is not judged at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from openwan.curate import measures
from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.curate.filters import need_frames


@dataclass(frozen=True)
class OverlayConfig:
    """Static-overlay detection and limit.

    ``frames``: at most this many frames, evenly spaced, are analysed. ``edge``: luma step (in [0, 1]) that counts as
    an edge. ``persist``: share of the frames in which a pixel must be an edge to be a persistent edge. ``change``:
    temporal standard deviation of luma above which a pixel counts as changing. ``min_moving``: clips with fewer
    changing pixels than this share are not judged (under a still camera a fixed object in front of moving content
    persists as a logo does). A region of persistent edges is an overlay when its edge pixels
    cover at least ``min_area`` of the frame and are edges in at least ``min_mean_persist`` of the frames on average,
    its box covers at most ``max_box`` of the frame and is at least ``min_side`` of the frame's short side in both
    directions, and at least ``min_change`` of the pixels in each band just outside the box change (bands at the
    frame's edge aside), so a still object's edge beside moving content, such as a car's window frame with the street
    passing behind it, is not an overlay. The clip is rejected when the overlays' boxes cover more than ``max_share``
    of the frame (0: any overlay)."""

    enabled: bool = True
    frames: int = 16
    edge: float = 0.07
    persist: float = 0.8
    min_mean_persist: float = 0.9
    change: float = 0.04
    min_moving: float = 0.75
    min_area: float = 0.004
    max_box: float = 0.15
    min_side: float = 0.08
    min_change: float = 0.5
    max_share: float = 0.0

    def __post_init__(self) -> None:
        if not 2 <= self.frames <= 1000:
            raise ValueError(f"overlay.frames must be in [2, 1000]; got {self.frames}.")
        for name in ("edge", "persist", "min_mean_persist", "change", "min_moving", "min_area", "max_box", "min_side",
                     "min_change", "max_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1 or math.isnan(value):
                raise ValueError(f"overlay.{name} must be in [0, 1]; got {value}.")


def _even(n: int, k: int) -> np.ndarray:
    """Indices of ``min(n, k)`` evenly spaced items of ``n``."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def _ring_change(moving: np.ndarray, box: tuple[int, int, int, int], m: int) -> float:
    """The least share of changing pixels over the four bands ``m`` pixels wide just outside ``box``; a band cut off
    by the frame's edge is not counted (a corner logo has two). 0 when no band is left."""
    h, w = moving.shape
    left, top, right, bottom = box
    bands = [moving[max(0, top - m):top, left:right], moving[bottom:bottom + m, left:right],
             moving[top:bottom, max(0, left - m):left], moving[top:bottom, right:right + m]]
    shares = [float(b.mean()) for b in bands if b.size]
    return min(shares) if shares else 0.0


def find_overlays(frames: np.ndarray, cfg: OverlayConfig) -> tuple[list[tuple[int, int, int, int]], float]:
    """Overlay boxes (left, top, right, bottom) in pixels of ``frames`` (uint8 ``[T, H, W, 3]``) and the share of
    the frame's pixels that change over time. No boxes when fewer than ``cfg.min_moving`` of the pixels change."""
    y = measures.luma(frames[_even(len(frames), cfg.frames)])  # [T, H, W]
    t, h, w = y.shape
    moving = y.std(axis=0) > cfg.change  # [H, W]
    moving_share = float(moving.mean())
    if t < 2 or moving_share < cfg.min_moving:
        return [], moving_share
    # A 3x3 Sobel answers 4 per unit luma step; divide so ``cfg.edge`` is a step size.
    grad = np.stack([np.hypot(cv2.Sobel(p, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(p, cv2.CV_32F, 0, 1, ksize=3))
                     for p in y]) / 4.0
    persistence = (grad > cfg.edge).mean(axis=0)  # [H, W] share of frames in which each pixel is an edge
    persistent = (persistence >= cfg.persist).astype(np.uint8)
    k = max(3, round(min(h, w) / 36) | 1)  # joins the strokes of one mark (5 px at 180 px, 7 px at 256 px)
    joined = cv2.morphologyEx(persistent, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    boxes = []
    for i in range(1, count):
        x, y0, bw, bh, _ = stats[i]
        if bw * bh > cfg.max_box * h * w or min(bw, bh) < cfg.min_side * min(h, w):
            continue
        edges = (labels[y0:y0 + bh, x:x + bw] == i) & persistent[y0:y0 + bh, x:x + bw].astype(bool)
        if edges.sum() < cfg.min_area * h * w or persistence[y0:y0 + bh, x:x + bw][edges].mean() < cfg.min_mean_persist:
            continue
        if _ring_change(moving, (x, y0, x + bw, y0 + bh), k) < cfg.min_change:
            continue
        boxes.append((int(x), int(y0), int(x + bw), int(y0 + bh)))
    return boxes, moving_share


def _union_area(boxes: list[tuple[int, int, int, int]], h: int, w: int) -> int:
    mask = np.zeros((h, w), bool)
    for left, top, right, bottom in boxes:
        mask[top:bottom, left:right] = True
    return int(mask.sum())


class OverlayStage:
    """Rejects clips with static overlays. Values: ``overlay_share`` (union of the overlays' boxes / frame area),
    ``overlay_boxes`` ([[left, top, right, bottom], ...] in source pixels) and ``overlay_moving_share`` (share of
    pixels that change; below ``min_moving`` the clip is not judged)."""

    name = "overlay"
    resources = Resources(num_cpus=0.5)

    def __init__(self, cfg: OverlayConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        need_frames(clip, frames, "overlay")
        h, w = frames.frames.shape[1:3]
        boxes, moving = find_overlays(frames.frames, self.cfg)
        share = _union_area(boxes, h, w) / (h * w)
        s, (x0, y0) = frames.scale, (frames.crop or (0, 0))[:2]
        src = [[x0 + math.floor(a / s), y0 + math.floor(b / s), x0 + math.ceil(c / s), y0 + math.ceil(d / s)]
               for a, b, c, d in boxes]
        values = {"overlay_share": round(share, 5), "overlay_boxes": src, "overlay_moving_share": round(moving, 4)}
        reasons = []
        if share > self.cfg.max_share:
            reasons.append(f"A static overlay (logo, watermark or caption) covers {share:.1%} of the frame in "
                           f"{len(boxes)} region(s), above the limit of {self.cfg.max_share:.1%}.")
        return StageOutput(values=values, reasons=reasons)


__all__ = ["OverlayConfig", "OverlayStage", "find_overlays"]
