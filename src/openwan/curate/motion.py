"""Motion quality from dense optical flow: how much moves, how much of it the camera explains, how shaky the camera
is, and the paper's six motion tiers.

Per pair of consecutive analysis frames (luma, shrunk to ``flow_short_side``) the stage computes dense optical flow
(OpenCV DIS or Farneback), fits a global camera model (similarity or affine) to the flow on a grid by RANSAC, so
moving objects do not pull the fit, and splits the flow into the camera part and the residual (object) part.
Over the clip:

- ``motion_magnitude``: mean flow length, in frame diagonals per second (independent of fps and frame size).
- ``motion_camera_share``: the share of the flow the camera model explains, ``1 - sum|residual| / sum|flow|``
  over all pairs, in ``[0, 1]`` (0 when nothing moves).
- ``motion_object``: mean residual (object) flow length, frame diagonals per second. A residual within the RANSAC
  inlier threshold (``ransac_threshold`` flow pixels) counts as explained by the camera: flow is not more precise.
- ``motion_jitter``: the high-frequency part of the camera trajectory: the standard deviation of the second
  differences of the cumulative camera position (translation, plus rotation and zoom as the displacement they give
  half a diagonal from the centre) per analysis frame, scaled so a camera whose position jitters independently by
  ``s`` frame diagonals per axis per frame reads ``s``. Smooth pans and zooms read ~0.
- ``motion_flicker``: mean relative change of mean luma between consecutive frames (strobing, flashes).
- ``motion_warp_error``: the median absolute luma difference left after moving each frame onto the next along the
  flow, mean over pairs, in luma units (``[0, 1]``): what the flow cannot explain. The median ignores the few pixels
  at occlusions and motion edges, so real motion reads ~0.005 to 0.02 and heavy noise or chaos 0.03 and up.
- ``motion_tier``: one of :data:`TIERS`, decided by :func:`motion_tier` from the values above.

Determinism: DIS and Farneback are deterministic for the same input, and OpenCV's RANSAC uses a fixed seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.curate.measures import luma

Tier = Literal["optimal", "medium", "static", "camera", "low_quality", "shaky"]
TIERS: tuple[str, ...] = ("optimal", "medium", "static", "camera", "low_quality", "shaky")
MIN_SIDE = 16  # pixels: the smallest frame side optical flow is measured on (DIS needs 12)
DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


@dataclass(frozen=True)
class MotionConfig:
    """The ``motion`` section: how flow is measured and the thresholds of the six tiers.

    Tier rules, first match wins (speeds in frame diagonals per second, ``jitter`` in frame diagonals):
    ``low_quality`` when ``flicker > max_flicker`` or ``warp_error > max_warp_error``; ``static`` when ``magnitude <
    static_magnitude``; ``shaky`` when ``jitter > shaky_jitter``; ``camera`` when ``camera_share >=
    camera_share_min`` (the camera explains most of the motion); ``optimal`` when ``optimal_object_min <= object <=
    optimal_object_max`` and ``magnitude <= optimal_magnitude_max``; ``medium`` otherwise. Clips whose tier is in
    ``reject_tiers`` get a reason (default: shaky only, as the paper excludes shaky footage and samples the other
    tiers by weight).
    """

    enabled: bool = True
    method: Literal["dis", "farneback"] = "dis"
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    flow_short_side: int = 160  # flow is computed with the short side at most this many pixels
    flow_fps: float = 8.0  # frames are subsampled to at most this rate before the flow
    camera_model: Literal["similarity", "affine"] = "similarity"
    grid_step: int = 4  # flow pixels between the grid points the camera model is fitted on
    ransac_threshold: float = 0.3  # flow pixels: grid points whose flow the camera model misses by more are objects
    border: float = 0.05  # share of each side left out of the fit and the statistics (flow is poor at borders)
    max_flicker: float = 0.15
    max_warp_error: float = 0.03
    static_magnitude: float = 0.01
    shaky_jitter: float = 0.002
    camera_share_min: float = 0.7
    optimal_object_min: float = 0.01
    optimal_object_max: float = 0.5
    optimal_magnitude_max: float = 1.0
    reject_tiers: tuple[Tier, ...] = ("shaky",)

    def __post_init__(self) -> None:
        if self.flow_short_side < 16:
            raise ValueError(f"motion.flow_short_side must be at least 16 pixels; got {self.flow_short_side}.")
        if not self.flow_fps > 0:
            raise ValueError(f"motion.flow_fps must be > 0; got {self.flow_fps}.")
        if not 0 < self.ransac_threshold <= 10:
            raise ValueError(f"motion.ransac_threshold must be in (0, 10] flow pixels; got {self.ransac_threshold}.")
        if not 1 <= self.grid_step <= 64:
            raise ValueError(f"motion.grid_step must be in [1, 64] pixels; got {self.grid_step}.")
        if not 0 <= self.border < 0.4:
            raise ValueError(f"motion.border must be in [0, 0.4); got {self.border}.")
        for name in ("max_flicker", "max_warp_error", "static_magnitude", "shaky_jitter", "optimal_object_min",
                     "optimal_object_max", "optimal_magnitude_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"motion.{name} must be a finite number >= 0; got {value!r}.")
        if not 0 <= self.camera_share_min <= 1:
            raise ValueError(f"motion.camera_share_min must be in [0, 1]; got {self.camera_share_min}.")
        if self.optimal_object_min > self.optimal_object_max:
            raise ValueError(f"motion.optimal_object_min ({self.optimal_object_min}) must not exceed "
                             f"motion.optimal_object_max ({self.optimal_object_max}).")
        for tier in self.reject_tiers:
            if tier not in TIERS:
                raise ValueError(f"motion.reject_tiers holds {tier!r}; the tiers are {', '.join(TIERS)}.")


def _flow_frames(frames: np.ndarray, fps: float, times: np.ndarray | None,
                 cfg: MotionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Luma as uint8 ``[T', h, w]`` at the flow's size and rate (short side at least ``MIN_SIDE``), and the seconds
    between consecutive kept frames ``[T' - 1]``. With ``times``, a frame shown at the same source time as the one
    before (a source slower than the analysis rate repeats frames) is dropped and the real gaps are used (sampling the
    nearest frame of a 25 fps source at 8 fps gives gaps of 3 and 4 source frames)."""
    keep = np.arange(len(frames))
    if times is not None:
        t = np.asarray(times, dtype=np.float64)
        keep = keep[np.concatenate([[True], np.diff(t) > 1e-6])]
    keep = keep[::max(1, round(fps / cfg.flow_fps))]
    nominal = (keep[1:] - keep[:-1]) / fps
    if times is None:
        gaps = nominal
    else:
        gaps = np.diff(t[keep])
        gaps = np.where(np.isfinite(gaps) & (gaps > 0), gaps, nominal)
    y = luma(frames[keep])  # [T', H, W] in [0, 1]
    h, w = y.shape[1:]
    s = min(1.0, max(cfg.flow_short_side, MIN_SIDE) / min(h, w))
    planes = [(p * 255.0 + 0.5).astype(np.uint8) for p in y]
    if s < 1.0:
        size = (max(MIN_SIDE, round(w * s)), max(MIN_SIDE, round(h * s)))
        planes = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in planes]
    return np.stack(planes), gaps


def dis_flow(preset: str = "medium") -> Any:
    """An OpenCV DIS optical-flow estimator at ``preset`` (a key of :data:`DIS_PRESETS`): ``.calc(a, b, None)``
    gives the dense flow ``[h, w, 2]`` in pixels from uint8 luma ``a`` to ``b``. One estimator per thread."""
    if preset not in DIS_PRESETS:
        raise ValueError(f"unknown DIS preset {preset!r}; use one of: {', '.join(DIS_PRESETS)}.")
    return cv2.DISOpticalFlow_create(DIS_PRESETS[preset])


def _flow(a: np.ndarray, b: np.ndarray, cfg: MotionConfig, dis: Any) -> np.ndarray:
    """Dense flow ``[h, w, 2]`` in pixels from luma ``a`` to ``b`` (where each pixel of ``a`` moved to in ``b``)."""
    if dis is not None:
        return dis.calc(a, b, None)
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def fit_camera(points: np.ndarray, flow: np.ndarray, model: str = "similarity", threshold: float = 0.3) -> np.ndarray:
    """A 2x3 matrix ``M`` with ``M @ [x, y, 1]`` the position the camera moves point ``(x, y)`` to, fitted to
    ``points -> points + flow`` (both ``[N, 2]``, pixels) by RANSAC with an inlier ``threshold`` in pixels and a
    least-squares refinement on the inliers, so independently moving objects, even large ones, do not pull it. OpenCV
    seeds its RANSAC generator with a constant, so the fit is deterministic. Where RANSAC finds no model, the camera
    is the median flow's translation."""
    src = points.astype(np.float32)
    dst = (points + flow).astype(np.float32)
    estimate = cv2.estimateAffinePartial2D if model == "similarity" else cv2.estimateAffine2D
    m, _ = estimate(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold, maxIters=2000, confidence=0.99,
                    refineIters=10)
    if m is None:
        med = np.median(flow, axis=0)
        m = np.array([[1.0, 0.0, med[0]], [0.0, 1.0, med[1]]])
    return m.astype(np.float64)


def measure_motion(frames: np.ndarray, fps: float, cfg: MotionConfig | None = None,
                   times: np.ndarray | None = None) -> dict[str, float]:
    """The motion values of uint8 RGB frames ``[T, H, W, 3]`` sampled at ``fps``: ``magnitude``, ``camera_share``,
    ``object``, ``jitter``, ``flicker``, ``warp_error`` (meanings and units in the module docstring). ``times`` (the
    frames' source times in seconds, optional) give the real gaps between frames: speeds are per real second, each
    camera step is rescaled to the nominal gap before the jitter, and repeated frames are dropped. Fewer than two
    distinct frames show no motion: every value is 0."""
    cfg = cfg or MotionConfig()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"measure_motion needs uint8 RGB frames [T, H, W, 3]; got {frames.dtype} "
                         f"{tuple(frames.shape)}. Decode the clip to RGB24 first.")
    if min(frames.shape[1:3]) < MIN_SIDE:
        raise ValueError(f"measure_motion needs frames of at least {MIN_SIDE}x{MIN_SIDE} pixels for optical flow; got "
                         f"{frames.shape[2]}x{frames.shape[1]}. Raise run.analysis_size or drop such small sources "
                         "with the limits stage.")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"measure_motion needs a finite fps > 0; got {fps}.")
    if times is not None and len(times) != len(frames):
        raise ValueError(f"measure_motion got {len(frames)} frames but {len(times)} times; give one time per frame.")
    planes, gaps = _flow_frames(frames, fps, times, cfg)
    out = dict.fromkeys(("magnitude", "camera_share", "object", "jitter", "flicker", "warp_error"), 0.0)
    if len(planes) < 2:
        return out
    h, w = planes.shape[1:]
    diag = math.hypot(w, h)
    my, mx = round(cfg.border * h), round(cfg.border * w)
    gy, gx = np.mgrid[my:h - my:cfg.grid_step, mx:w - mx:cfg.grid_step]
    grid = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)  # [N, 2] pixel positions
    centred = grid - [(w - 1) / 2, (h - 1) / 2]
    mapx, mapy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    dis = None
    if cfg.method == "dis":
        dis = dis_flow(cfg.dis_preset)

    nominal = float(np.median(gaps))  # seconds between analysis frames, for the jitter's per-frame steps
    flow_sum = resid_sum = speed_sum = object_sum = 0.0
    motions, flicker, warp = [], [], []  # per pair
    for a, b, gap in zip(planes[:-1], planes[1:], gaps.tolist(), strict=True):
        f = _flow(a, b, cfg, dis)  # [h, w, 2]
        fg = f[gy.ravel(), gx.ravel()].astype(np.float64)  # [N, 2]
        m = fit_camera(centred, fg, cfg.camera_model, cfg.ransac_threshold)
        cam = centred @ m[:, :2].T + m[:, 2] - centred  # camera flow at the grid, [N, 2]
        moved = float(np.hypot(fg[:, 0], fg[:, 1]).mean())
        miss = np.hypot(*(fg - cam).T)  # [N]
        # Points the camera model explains within the inlier threshold are explained: flow is not more precise.
        missed = float(np.where(miss > cfg.ransac_threshold, miss, 0.0).mean())
        flow_sum, resid_sum = flow_sum + moved, resid_sum + missed
        speed_sum, object_sum = speed_sum + moved / gap, object_sum + missed / gap
        scale = math.hypot((m[0, 0] + m[1, 1]) / 2, (m[1, 0] - m[0, 1]) / 2)
        angle = math.atan2((m[1, 0] - m[0, 1]) / 2, (m[0, 0] + m[1, 1]) / 2)
        # Camera step as displacements in frame diagonals: the centre's, and rotation and zoom at half a diagonal.
        step = np.array([m[0, 2] / diag, m[1, 2] / diag, angle / 2, math.log(max(scale, 1e-6)) / 2])
        motions.append(step * (nominal / gap))  # as if the frames were evenly spaced
        ma, mb = float(a.mean()), float(b.mean())
        flicker.append(abs(mb - ma) / max((ma + mb) / 2, 5.0))
        warped = cv2.remap(b, mapx + f[..., 0], mapy + f[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        diff = np.abs(warped.astype(np.float32) - a.astype(np.float32))[my:h - my, mx:w - mx]
        warp.append(float(np.median(diff)) / 255.0)

    pairs = len(motions)
    out["magnitude"] = speed_sum / pairs / diag
    out["object"] = object_sum / pairs / diag
    out["camera_share"] = min(1.0, max(0.0, 1.0 - resid_sum / flow_sum)) if flow_sum / pairs > 1e-3 else 0.0
    if pairs >= 2:
        steps = np.diff(np.asarray(motions), axis=0)  # second differences of the trajectory, [pairs - 1, 4]
        # An independent per-frame jitter of std s per axis gives second differences of variance 6 s^2 per axis.
        out["jitter"] = float(math.sqrt(float(steps.var(axis=0).sum()) / 12.0))
    out["flicker"] = float(np.mean(flicker))
    out["warp_error"] = float(np.mean(warp))
    return out


def motion_tier(values: dict[str, float], cfg: MotionConfig) -> str:
    """The tier of a clip from its :func:`measure_motion` values, by the rules in :class:`MotionConfig`."""
    if values["flicker"] > cfg.max_flicker or values["warp_error"] > cfg.max_warp_error:
        return "low_quality"
    if values["magnitude"] < cfg.static_magnitude:
        return "static"
    if values["jitter"] > cfg.shaky_jitter:
        return "shaky"
    if values["camera_share"] >= cfg.camera_share_min:
        return "camera"
    if (cfg.optimal_object_min <= values["object"] <= cfg.optimal_object_max
            and values["magnitude"] <= cfg.optimal_magnitude_max):
        return "optimal"
    return "medium"


def _why(tier: str, v: dict[str, float], cfg: MotionConfig) -> str:
    """A sentence saying why a clip is in a rejected tier, with the measured value and its limit."""
    if tier == "shaky":
        return (f"the camera shakes: jitter {v['jitter']:.4f} frame diagonals per frame (limit {cfg.shaky_jitter}).")
    if tier == "static":
        return (f"nothing moves: motion {v['magnitude']:.4f} frame diagonals per second (at least "
                f"{cfg.static_magnitude} needed).")
    if tier == "low_quality":
        return (f"the motion is unreliable: luma flicker {v['flicker']:.3f} (limit {cfg.max_flicker}) and flow warp "
                f"error {v['warp_error']:.3f} (limit {cfg.max_warp_error}).")
    return (f"motion tier {tier!r} is rejected by motion.reject_tiers (motion {v['magnitude']:.3f} diagonals/s, "
            f"camera share {v['camera_share']:.2f}, object motion {v['object']:.3f} diagonals/s).")


class MotionStage:
    """The ``motion`` stage: values ``motion_magnitude``, ``motion_camera_share``, ``motion_object``,
    ``motion_jitter``, ``motion_flicker``, ``motion_warp_error`` (floats, units in the module docstring) and
    ``motion_tier`` (str); a reason when the tier is in ``cfg.reject_tiers``."""

    name = "motion"
    resources = Resources(num_cpus=1.0)

    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        """Nothing to load: optical flow needs no weights."""

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        values = measure_motion(frames.frames, frames.fps, self.cfg, frames.times)
        tier = motion_tier(values, self.cfg)
        out: dict[str, Any] = {f"motion_{k}": float(f"{v:.6g}") for k, v in values.items()}  # six significant digits
        out["motion_tier"] = tier
        reasons = [_why(tier, values, self.cfg)] if tier in self.cfg.reject_tiers else []
        return StageOutput(values=out, reasons=reasons)


__all__ = ["MotionConfig", "MotionStage", "measure_motion", "motion_tier", "fit_camera", "TIERS", "Tier", "MIN_SIDE"]
