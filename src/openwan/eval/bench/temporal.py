"""Weight-free temporal dimensions of the bench, all from dense optical flow between consecutive frames.

Every dimension here works on :meth:`Video.analysis_frames`, turned into luma (:func:`openwan.curate.measures.luma`)
and shrunk so the short side is at most :data:`FLOW_SHORT_SIDE` pixels; the flow is OpenCV's DIS (medium preset,
as :mod:`openwan.curate.motion` measures it) from each frame to the next, at the video's own frame rate. Speeds are
per second of the video (``fps``), lengths in flow pixels or in frame diagonals, luma in ``[0, 1]``. A strip of
:data:`BORDER` of each side is left out of every statistic (flow is poor where content enters the frame).

- :class:`TemporalFlickering` (VBench temporal flickering): brightness changes that motion does not explain.
- :class:`MotionSmoothness` (VBench motion smoothness, Wan-Bench smoothness): how well each frame is predicted
  halfway along the flow between its neighbours.
- :class:`DynamicDegree` (VBench dynamic degree): the share of frame pairs that move.
- :class:`LargeMotion` (Wan-Bench large-motion generation): a saturating map of the mean flow speed.
- :class:`PixelStability` (Wan-Bench pixel-level stability): temporal pixel change where nothing moves.

The flow of a video is computed once and kept for the last :data:`FLOW_CACHE_SIZE` videos scored, so the
dimensions of one video share it. DIS is deterministic for the same input, so every score is.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from openwan.curate.measures import luma
from openwan.curate.motion import MIN_SIDE, dis_flow
from openwan.eval.bench.base import Dimension, Score, Video

FLOW_SHORT_SIDE = 160  # pixels: flow is measured with the short side at most this long
BORDER = 0.05  # share of each side left out of every statistic
FLOW_CACHE_SIZE = 2  # videos whose flow is kept

# TemporalFlickering
FLICKER_GRID = 4  # the frame is split into FLICKER_GRID x FLICKER_GRID cells whose mean luma is compared
FLICKER_SCALE = 0.02  # luma units: a mean unexplained cell change of this much scores exp(-1) ~ 0.37

# MotionSmoothness
SMOOTH_SCALE = 0.02  # luma units: a mean midpoint prediction error of this much scores exp(-1) ~ 0.37

# DynamicDegree (VBench: mean of the top 5% flow lengths of a pair above 6 px at a 256 px short side and 8 fps)
DYNAMIC_TOP_SHARE = 0.05  # the share of largest flow lengths averaged per pair
DYNAMIC_THRESHOLD_PX = 6.0  # flow pixels per 1/8 s at a 256 px short side
DYNAMIC_REF_SHORT_SIDE = 256
DYNAMIC_REF_FPS = 8.0
DYNAMIC_SHARE = 0.25  # VBench calls a video dynamic when about 4 of each 16 sampled pairs move

# LargeMotion
LARGE_MOTION_SCALE = 0.2  # frame diagonals per second scoring 1 - exp(-1) ~ 0.63

# PixelStability
STATIC_FLOW_PX = 0.3  # flow pixels per frame: slower pixels count as static
STATIC_MIN_SHARE = 0.02  # below this share of static pixel pairs the dimension has nothing to judge
STABILITY_SCALE = 0.02  # luma units: a mean absolute static-pixel change of this much scores exp(-1) ~ 0.37


@dataclass(frozen=True)
class ClipFlow:
    """A video's luma ``planes`` (uint8 ``[T, h, w]`` at flow size), its ``flows`` (float32 ``[T - 1, h, w, 2]``,
    where each pixel of frame t moved to in frame t + 1, flow pixels) and ``fps``."""

    planes: np.ndarray
    flows: np.ndarray
    fps: float

    @property
    def diagonal(self) -> float:
        """The frame diagonal in flow pixels."""
        return math.hypot(self.planes.shape[1], self.planes.shape[2])

    def interior(self) -> tuple[slice, slice]:
        """The rows and columns inside the :data:`BORDER`."""
        h, w = self.planes.shape[1:]
        my, mx = round(BORDER * h), round(BORDER * w)
        return slice(my, h - my), slice(mx, w - mx)


DIS_PRESET = "medium"
_CACHE: OrderedDict[int, tuple[weakref.ref, ClipFlow]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def flow_planes(frames: np.ndarray, short_side: int = FLOW_SHORT_SIDE) -> np.ndarray:
    """Luma of uint8 RGB frames ``[T, H, W, 3]`` as uint8 ``[T, h, w]``, area-shrunk so the short side is at most
    ``short_side`` pixels."""
    y = luma(frames)
    planes = [(p * 255.0 + 0.5).astype(np.uint8) for p in y]
    h, w = y.shape[1:]
    s = short_side / min(h, w)
    if s < 1.0:
        size = (max(MIN_SIDE, round(w * s)), max(MIN_SIDE, round(h * s)))
        planes = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in planes]
    return np.stack(planes)


def warp(plane: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``plane`` sampled at each pixel plus ``flow`` (bilinear, edges replicated): float32 ``[h, w]``."""
    h, w = plane.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(plane.astype(np.float32), gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def clip_flow(video: Video) -> ClipFlow:
    """The :class:`ClipFlow` of ``video`` (its analysis frames), computed once per video object."""
    key = id(video)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is video:
            _CACHE.move_to_end(key)
            return hit[1]
    planes = flow_planes(video.analysis_frames())
    dis = dis_flow(DIS_PRESET)
    flows = [dis.calc(a, b, None) for a, b in zip(planes[:-1], planes[1:], strict=True)]
    h, w = planes.shape[1:]
    out = ClipFlow(planes, np.stack(flows) if flows else np.zeros((0, h, w, 2), np.float32), float(video.fps))
    with _CACHE_LOCK:
        _CACHE[key] = (weakref.ref(video), out)
        while len(_CACHE) > FLOW_CACHE_SIZE:
            _CACHE.popitem(last=False)
    return out


def unmeasurable(video: Video, needs_frames: int = 2) -> str | None:
    """The sentence saying why ``video`` gives a flow-based dimension nothing to judge, or None."""
    t, h, w = video.frames.shape[:3]
    if t < needs_frames:
        return (f"the video has {t} frame{'s' if t != 1 else ''}; motion over time needs at least {needs_frames}.")
    if min(h, w) < MIN_SIDE:
        return f"the frames are {w}x{h} pixels; optical flow needs at least {MIN_SIDE}x{MIN_SIDE}."
    return None


def _na(video: Video, needs_frames: int = 2) -> Score | None:
    why = unmeasurable(video, needs_frames)
    return Score(None, not_applicable=why) if why else None


class TemporalFlickering(Dimension):
    """Brightness flicker that motion does not explain; higher is steadier.

    For each pair of consecutive frames, frame t + 1 is warped back onto frame t along the flow, and both are split
    into a :data:`FLICKER_GRID` x :data:`FLICKER_GRID` grid of cells (inside the border, pixels whose flow leaves
    the frame left out). The flicker of the pair is the mean over cells of ``|mean(warped t+1) - mean(t)|`` in luma
    units: a global or regional gain or offset shows in full, while texture the flow misaligns averages out within
    a cell. ``flicker_luma`` is the mean over pairs and ``value = exp(-flicker_luma / FLICKER_SCALE)``. VBench's
    own figure, ``(255 - MAE) / 255`` of the raw frame difference (meant for static scenes), is in details as
    ``vbench_raw``.
    """

    name = "temporal_flickering"
    stands_for = "VBench temporal flickering"

    def score(self, video: Video) -> Score:
        if (na := _na(video)) is not None:
            return na
        cf = clip_flow(video)
        rows, cols = cf.interior()
        h, w = cf.planes.shape[1:]
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        cells_y = np.minimum((gy[rows, cols] - rows.start) * FLICKER_GRID // (rows.stop - rows.start),
                             FLICKER_GRID - 1).astype(int)
        cells_x = np.minimum((gx[rows, cols] - cols.start) * FLICKER_GRID // (cols.stop - cols.start),
                             FLICKER_GRID - 1).astype(int)
        cell = (cells_y * FLICKER_GRID + cells_x).ravel()
        per_pair, raw = [], []
        for t, f in enumerate(cf.flows):
            a = cf.planes[t].astype(np.float32) / 255.0
            b = warp(cf.planes[t + 1], f) / 255.0
            tx, ty = gx + f[..., 0], gy + f[..., 1]
            inside = ((tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1))[rows, cols].ravel()
            d = (b - a)[rows, cols].ravel()
            n = np.bincount(cell, weights=inside, minlength=FLICKER_GRID ** 2)
            s = np.bincount(cell, weights=d * inside, minlength=FLICKER_GRID ** 2)
            ok = n > 0
            per_pair.append(float(np.mean(np.abs(s[ok] / n[ok]))) if ok.any() else 0.0)
            raw.append(float(np.abs(cf.planes[t + 1].astype(np.float32) - cf.planes[t]).mean()))
        flicker = float(np.mean(per_pair))
        return Score(math.exp(-flicker / FLICKER_SCALE), {
            "flicker_luma": flicker, "flicker_max_luma": float(np.max(per_pair)),
            "vbench_raw": (255.0 - float(np.mean(raw))) / 255.0, "pairs": len(per_pair)})


class MotionSmoothness(Dimension):
    """How well each frame is predicted from its two neighbours by moving along the flow between them; jitter,
    dropped or repeated frames and stutter lower it.

    For each frame t with neighbours t - 1 and t + 1, the flow ``F`` from t - 1 to t + 1 is measured and frame t
    predicted as ``(I[t-1](p - F(p)/2) + I[t+1](p + F(p)/2)) / 2`` (the midpoint of steady motion; VBench
    interpolates the same frames with a learned model instead). ``error_luma`` is the mean absolute luma error of
    the prediction inside the border, averaged over frames, and ``value = exp(-error_luma / SMOOTH_SCALE)``. VBench's
    mapping ``(255 - MAE) / 255`` is in details as ``vbench_style``. Needs 3 frames.
    """

    name = "motion_smoothness"
    stands_for = "VBench motion smoothness; Wan-Bench smoothness"

    def score(self, video: Video) -> Score:
        if (na := _na(video, needs_frames=3)) is not None:
            return na
        cf = clip_flow(video)
        rows, cols = cf.interior()
        dis = dis_flow(DIS_PRESET)
        errors = []
        for t in range(1, len(cf.planes) - 1):
            f = dis.calc(cf.planes[t - 1], cf.planes[t + 1], None)
            pred = 0.5 * (warp(cf.planes[t - 1], -0.5 * f) + warp(cf.planes[t + 1], 0.5 * f))
            errors.append(float(np.abs(pred - cf.planes[t])[rows, cols].mean()) / 255.0)
        error = float(np.mean(errors))
        return Score(math.exp(-error / SMOOTH_SCALE), {
            "error_luma": error, "error_max_luma": float(np.max(errors)), "vbench_style": 1.0 - error,
            "frames_predicted": len(errors)})


def _speeds(cf: ClipFlow) -> np.ndarray:
    """Flow lengths ``[T - 1, h', w']`` inside the border, flow pixels per frame."""
    rows, cols = cf.interior()
    return np.hypot(cf.flows[:, rows, cols, 0], cf.flows[:, rows, cols, 1])


class DynamicDegree(Dimension):
    """The share of consecutive frame pairs that move, by VBench's rule; frozen or repeated frames lower it.

    A pair moves when the mean of its top :data:`DYNAMIC_TOP_SHARE` (5%) flow lengths exceeds
    ``DYNAMIC_THRESHOLD_PX * short_side / DYNAMIC_REF_SHORT_SIDE * DYNAMIC_REF_FPS / fps`` flow pixels, i.e. VBench's
    6 px at a 256 px short side between frames 1/8 s apart, scaled to the flow's size and to the video's frame gap
    (every consecutive pair is measured, not a subsample). ``value`` is the share of moving pairs; ``dynamic`` says
    whether it reaches :data:`DYNAMIC_SHARE` (VBench's 4 moving pairs per 16 frames, its per-video verdict).
    """

    name = "dynamic_degree"
    stands_for = "VBench dynamic degree"

    def score(self, video: Video) -> Score:
        if (na := _na(video)) is not None:
            return na
        cf = clip_flow(video)
        speeds = _speeds(cf).reshape(len(cf.flows), -1)
        k = max(1, round(DYNAMIC_TOP_SHARE * speeds.shape[1]))
        top = np.sort(speeds, axis=1)[:, -k:].mean(axis=1)  # [T - 1]
        threshold = (DYNAMIC_THRESHOLD_PX * min(cf.planes.shape[1:]) / DYNAMIC_REF_SHORT_SIDE
                     * DYNAMIC_REF_FPS / cf.fps)
        share = float((top > threshold).mean())
        return Score(share, {"moving_pairs": int((top > threshold).sum()), "pairs": len(top),
                             "top_flow_px_per_frame": float(top.mean()), "threshold_px_per_frame": threshold,
                             "dynamic": share >= DYNAMIC_SHARE})


class LargeMotion(Dimension):
    """How large the motion is: the mean flow length in frame diagonals per second, mapped through
    ``value = 1 - exp(-speed / LARGE_MOTION_SCALE)`` (0.2 diagonals/s gives 0.63; a frame crossed in a second about
    0.99). ``speed_diag_per_s`` is the same measure as :mod:`openwan.curate.motion`'s ``motion_magnitude``, here at
    the video's full frame rate."""

    name = "large_motion"
    stands_for = "Wan-Bench large-motion generation"

    def score(self, video: Video) -> Score:
        if (na := _na(video)) is not None:
            return na
        cf = clip_flow(video)
        speeds = _speeds(cf)
        speed = float(speeds.mean()) * cf.fps / cf.diagonal
        return Score(1.0 - math.exp(-speed / LARGE_MOTION_SCALE), {
            "speed_diag_per_s": speed, "speed_px_per_frame": float(speeds.mean()),
            "top5_speed_diag_per_s": float(np.quantile(speeds, 0.95)) * cf.fps / cf.diagonal})


class PixelStability(Dimension):
    """How still the pixels are where nothing moves: noise, boiling texture or flicker in static regions lower it.

    A pixel of a pair is static when its flow is shorter than :data:`STATIC_FLOW_PX` flow pixels. The
    measure ``change_luma`` is the mean absolute luma change of static pixels from one frame to the next (inside
    the border, over all pairs), and ``value = exp(-change_luma / STABILITY_SCALE)``. Pure white noise of std
    ``s`` in luma gives a change of about ``1.13 s`` (std 4.5 of 255 levels scores about 0.37). With fewer than
    :data:`STATIC_MIN_SHARE` of pixel pairs static, the video has no static region to judge and the score is not
    applicable.
    """

    name = "pixel_stability"
    stands_for = "Wan-Bench pixel-level stability"

    def score(self, video: Video) -> Score:
        if (na := _na(video)) is not None:
            return na
        cf = clip_flow(video)
        rows, cols = cf.interior()
        static = _speeds(cf) < STATIC_FLOW_PX  # [T - 1, h', w']
        share = float(static.mean())
        if share < STATIC_MIN_SHARE:
            return Score(None, {"static_share": share}, not_applicable=(
                f"only {share:.1%} of the pixels stand still (at least {STATIC_MIN_SHARE:.0%} needed): the whole "
                "frame moves, so no static region shows the pixels' stability."))
        planes = cf.planes[:, rows, cols].astype(np.float32) / 255.0
        change = float(np.abs(np.diff(planes, axis=0))[static].mean())
        return Score(math.exp(-change / STABILITY_SCALE), {"change_luma": change, "static_share": share})


__all__ = ["TemporalFlickering", "MotionSmoothness", "DynamicDegree", "LargeMotion", "PixelStability", "ClipFlow",
           "clip_flow", "flow_planes", "warp", "unmeasurable", "FLOW_SHORT_SIDE", "BORDER"]
