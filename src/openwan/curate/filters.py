"""The paper's fundamental filters that need no model: duration and resolution limits, black borders, exposure, blur.

Each is a per-clip stage (see :mod:`openwan.curate.base`): a frozen ``<X>Config`` (its YAML section) and an
``<X>Stage`` that measures the clip, returns the measurements as ``<section>_*`` columns and a reason for every
limit the clip breaks. Luma is BT.709 Y' in ``[0, 1]`` throughout (:mod:`openwan.curate.measures`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from openwan.curate import measures
from openwan.curate.base import ClipFrames, Resources, StageOutput


def _need(clip: dict[str, Any], keys: tuple[str, ...], stage: str) -> None:
    missing = [k for k in keys if clip.get(k) is None]
    if missing:
        raise ValueError(f"the {stage} stage needs the clip row's {', '.join(missing)} (set by the probe); clip "
                         f"{clip.get('clip_id', '?')!r} has none. Probe the source before running the stages.")


def need_frames(clip: dict[str, Any], frames: ClipFrames, stage: str) -> None:
    """ValueError naming the clip when ``frames`` holds no frame (a clip that decoded to nothing)."""
    if len(frames) == 0:
        raise ValueError(f"the {stage} stage needs at least one frame of clip {clip.get('clip_id', '?')!r}; it "
                         "decoded to none. Check the clip's start and end against the source's duration.")


def _check_range(section: str, name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi) or math.isnan(value):
        raise ValueError(f"{section}.{name} must be in [{lo}, {hi}]; got {value}.")


# --------------------------------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class LimitsConfig:
    """Duration, resolution, shape and frame-rate limits, read from the probe's columns (no frames needed).

    ``min_short_side`` is the source's short side in pixels; ``max_aspect`` the long side over the short side; a
    limit of 0 is off."""

    enabled: bool = True
    min_duration: float = 2.0  # seconds
    max_duration: float = 60.0  # seconds; 0: no upper limit
    min_short_side: int = 256  # pixels
    max_aspect: float = 2.5  # long side / short side; 0: no limit
    min_fps: float = 10.0  # frames per second; 0: no limit

    def __post_init__(self) -> None:
        _check_range("limits", "min_duration", self.min_duration, 0, 1e6)
        _check_range("limits", "max_duration", self.max_duration, 0, 1e6)
        if self.max_duration and self.max_duration < self.min_duration:
            raise ValueError(f"limits.max_duration ({self.max_duration}) must be 0 (no limit) or at least "
                             f"limits.min_duration ({self.min_duration}).")
        _check_range("limits", "min_short_side", self.min_short_side, 0, 100_000)
        if self.max_aspect and self.max_aspect < 1:
            raise ValueError(f"limits.max_aspect must be 0 (no limit) or at least 1; got {self.max_aspect}.")
        _check_range("limits", "min_fps", self.min_fps, 0, 1000)


class LimitsStage:
    """Rejects clips too short, too long, too small, too elongated or too choppy; values ``limits_short_side``
    (pixels) and ``limits_aspect`` (long / short side)."""

    name = "limits"
    resources = Resources(num_cpus=0.1)

    def __init__(self, cfg: LimitsConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, clip: dict[str, Any], frames: ClipFrames | None = None) -> StageOutput:
        _need(clip, ("duration", "width", "height", "fps"), "limits")
        cfg = self.cfg
        duration, fps = float(clip["duration"]), float(clip["fps"])
        width, height = int(clip["width"]), int(clip["height"])
        short, long = min(width, height), max(width, height)
        aspect = long / short if short > 0 else math.inf
        reasons = []
        if duration < cfg.min_duration:
            reasons.append(f"The clip lasts {duration:.2f} s, shorter than the minimum of {cfg.min_duration:g} s.")
        if cfg.max_duration and duration > cfg.max_duration:
            reasons.append(f"The clip lasts {duration:.2f} s, longer than the maximum of {cfg.max_duration:g} s.")
        if short < cfg.min_short_side:
            reasons.append(f"The video is {width}x{height}: its short side of {short} px is below the minimum of "
                           f"{cfg.min_short_side} px.")
        if cfg.max_aspect and aspect > cfg.max_aspect:
            reasons.append(f"The video's aspect ratio is {aspect:.2f}:1 ({width}x{height}), above the maximum of "
                           f"{cfg.max_aspect:g}:1.")
        if cfg.min_fps and fps < cfg.min_fps:
            reasons.append(f"The video runs at {fps:.2f} fps, below the minimum of {cfg.min_fps:g} fps.")
        return StageOutput(values={"limits_short_side": short,
                                   "limits_aspect": round(aspect, 4) if math.isfinite(aspect) else None},
                           reasons=reasons)


# -------------------------------------------------------------------------------------------------- borders


@dataclass(frozen=True)
class BordersConfig:
    """Letterbox / pillarbox detection. A border row (column) is one that is flat in every frame (luma standard
    deviation along it at most ``flat_std``), keeps the same level over time, and is no brighter than ``max_luma``
    (1.0 accepts bars of any colour). Bars thinner than ``min_bar`` of the frame's height (width) are left alone;
    a clip whose picture keeps less than ``min_kept_share`` of the frame's area is rejected."""

    enabled: bool = True
    flat_std: float = 0.01  # luma units (about 2.5 of 255 levels)
    max_luma: float = 0.07  # luma units (about 18 of 255 levels: black, also when decoded at the wrong range)
    min_bar: float = 0.01  # share of the frame's height (top/bottom bars) or width (left/right bars)
    min_kept_share: float = 0.4  # share of the frame's area the picture must keep

    def __post_init__(self) -> None:
        _check_range("borders", "flat_std", self.flat_std, 0, 1)
        _check_range("borders", "max_luma", self.max_luma, 0, 1)
        _check_range("borders", "min_bar", self.min_bar, 0, 0.5)
        _check_range("borders", "min_kept_share", self.min_kept_share, 0, 1)


def _bar_lines(y: np.ndarray, flat_std: float, max_luma: float) -> np.ndarray:
    """For luma ``[T, N, L]`` (N lines of L pixels each): whether each line is a border line (``[N]`` bool)."""
    mean = y.mean(axis=2)  # [T, N]
    flat = y.std(axis=2).max(axis=0) <= flat_std  # flat in every frame
    steady = (mean.max(axis=0) - mean.min(axis=0)) <= 2 * flat_std  # the same level all clip long
    return flat & steady & (mean.max(axis=0) <= max_luma)


def _run_length(mask: np.ndarray) -> int:
    """How many leading entries of ``mask`` are True."""
    return len(mask) if mask.all() else int(np.argmin(mask))


def find_borders(frames: np.ndarray, cfg: BordersConfig) -> tuple[int, int, int, int]:
    """Bar widths (left, top, right, bottom) in pixels of ``frames`` (uint8 ``[T, H, W, 3]``): the lines from each
    edge inward that are border lines in every frame. Bars under ``cfg.min_bar`` of the frame count as 0. A clip
    whose every row is a border line (no picture at all) gives ``(0, H, 0, 0)``."""
    y = measures.luma(frames)  # [T, H, W]
    _, h, w = y.shape
    rows = _bar_lines(y, cfg.flat_std, cfg.max_luma)
    top, bottom = _run_length(rows), _run_length(rows[::-1])
    if top + bottom >= h:
        return 0, h, 0, 0  # nothing but bar: the whole picture is uniform
    inner = y[:, top:h - bottom]  # columns are judged only where there is picture between top and bottom bars
    cols = _bar_lines(inner.transpose(0, 2, 1), cfg.flat_std, cfg.max_luma)
    left, right = _run_length(cols), _run_length(cols[::-1])
    min_rows, min_cols = cfg.min_bar * h, cfg.min_bar * w
    top, bottom = (v if v >= min_rows else 0 for v in (top, bottom))
    left, right = (v if v >= min_cols else 0 for v in (left, right))
    return left, top, right, bottom


class BordersStage:
    """Finds black (or flat) bars around the picture and returns the crop that removes them (``StageOutput.crop``,
    source pixels, even-aligned inward). Values: ``borders_crop_share`` (area removed / frame area) and
    ``borders_bars`` ([left, top, right, bottom] bar widths in source pixels)."""

    name = "borders"
    resources = Resources(num_cpus=0.25)

    def __init__(self, cfg: BordersConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        need_frames(clip, frames, "borders")
        src_w, src_h = frames.source_size
        base = (0, 0, src_w, src_h) if frames.crop is None else frames.crop
        h, w = frames.frames.shape[1:3]
        left, top, right, bottom = find_borders(frames.frames, self.cfg)
        if top == h:
            return StageOutput(values={"borders_crop_share": 1.0, "borders_bars": None},
                               reasons=["Every frame is one flat colour from edge to edge: there is no picture."])
        if not (left or top or right or bottom):
            return StageOutput(values={"borders_crop_share": 0.0, "borders_bars": [0, 0, 0, 0]})
        s = frames.scale  # analysis pixels per source pixel
        # Inward to even source pixels, so no bar is kept and the picture stays encodable as yuv420.
        box = (base[0] + 2 * math.ceil(left / s / 2), base[1] + 2 * math.ceil(top / s / 2),
               base[2] - 2 * math.ceil(right / s / 2), base[3] - 2 * math.ceil(bottom / s / 2))
        area = (base[2] - base[0]) * (base[3] - base[1])
        kept = max(0, box[2] - box[0]) * max(0, box[3] - box[1]) / area
        values = {"borders_crop_share": round(1.0 - kept, 4),
                  "borders_bars": [box[0] - base[0], box[1] - base[1], base[2] - box[2], base[3] - box[3]]}
        reasons = []
        if kept < self.cfg.min_kept_share:
            reasons.append(f"Black borders take {1 - kept:.0%} of the frame: the picture keeps {kept:.0%} of it, "
                           f"below the minimum of {self.cfg.min_kept_share:.0%}.")
        return StageOutput(values=values, reasons=reasons, crop=box)


# ------------------------------------------------------------------------------------------------- exposure


@dataclass(frozen=True)
class ExposureConfig:
    """Under- and over-exposure limits on luma statistics over all analysed frames: mean luma, the share of
    crushed-dark pixels (luma < 0.06) and of clipped-bright pixels (luma > 0.94). A limit of 0 (for ``min_*``) or 1
    (for ``max_*``) is off."""

    enabled: bool = True
    min_mean_luma: float = 0.13
    max_mean_luma: float = 0.75
    max_dark_share: float = 0.4
    max_bright_share: float = 0.3

    def __post_init__(self) -> None:
        for name in ("min_mean_luma", "max_mean_luma", "max_dark_share", "max_bright_share"):
            _check_range("exposure", name, getattr(self, name), 0, 1)
        if self.min_mean_luma >= self.max_mean_luma:
            raise ValueError(f"exposure.min_mean_luma ({self.min_mean_luma}) must be below exposure.max_mean_luma "
                             f"({self.max_mean_luma}).")


class ExposureStage:
    """Rejects under- and over-exposed clips. Values: ``exposure_mean_luma``, ``exposure_dark_share``,
    ``exposure_bright_share`` (all in [0, 1])."""

    name = "exposure"
    resources = Resources(num_cpus=0.25)

    def __init__(self, cfg: ExposureConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        need_frames(clip, frames, "exposure")
        cfg = self.cfg
        e = measures.exposure(frames.frames)
        mean, dark, bright = e["mean_luma"], e["dark_share"], e["bright_share"]
        reasons = []
        if mean < cfg.min_mean_luma:
            reasons.append(f"Underexposed: mean luma is {mean:.3f}, below the minimum of {cfg.min_mean_luma:g}.")
        if mean > cfg.max_mean_luma:
            reasons.append(f"Overexposed: mean luma is {mean:.3f}, above the maximum of {cfg.max_mean_luma:g}.")
        if dark > cfg.max_dark_share:
            reasons.append(f"Underexposed: {dark:.0%} of the pixels are crushed to black (limit "
                           f"{cfg.max_dark_share:.0%}).")
        if bright > cfg.max_bright_share:
            reasons.append(f"Overexposed: {bright:.0%} of the pixels are clipped to white (limit "
                           f"{cfg.max_bright_share:.0%}).")
        return StageOutput(values={"exposure_mean_luma": round(mean, 5), "exposure_dark_share": round(dark, 5),
                                   "exposure_bright_share": round(bright, 5)}, reasons=reasons)


# ----------------------------------------------------------------------------------------------------- blur


@dataclass(frozen=True)
class BlurConfig:
    """Blur limit on *focus*: the sharpness (:func:`openwan.curate.measures.sharpness`, variance of the
    Laplacian of luma at a 256-pixel short side) of the sharpest cell of a ``grid`` x ``grid`` division of each
    frame, median over ``frames`` evenly spaced frames. The sharpest cell rather than the whole frame, so a shallow
    depth of field with one subject in focus passes while a clip blurred all over does not."""

    enabled: bool = True
    min_focus: float = 0.00028  # squared luma units
    grid: int = 4
    frames: int = 8

    def __post_init__(self) -> None:
        _check_range("blur", "min_focus", self.min_focus, 0, 1)
        _check_range("blur", "grid", self.grid, 1, 16)
        _check_range("blur", "frames", self.frames, 1, 1000)


def focus(frames: np.ndarray, grid: int = 4) -> float:
    """Median over frames of the sharpness of each frame's sharpest cell in a ``grid`` x ``grid`` division, each
    cell measured at the scale the whole frame would have with a 256-pixel short side (squared luma units)."""
    t, h, w = frames.shape[:3]
    if min(h, w) < 3 * grid:
        raise ValueError(f"blur focus needs frames of at least {3 * grid} px per side for a {grid}x{grid} grid; "
                         f"got {w}x{h}. Decode at a larger analysis size or lower blur.grid.")
    scale = measures.REF_SHORT_SIDE / min(h, w)
    per_frame = []
    for frame in frames:
        cells = []
        for i in range(grid):
            for j in range(grid):
                cell = frame[i * h // grid:(i + 1) * h // grid, j * w // grid:(j + 1) * w // grid]
                ref = max(8, round(min(cell.shape[:2]) * scale))
                cells.append(measures.sharpness(cell, ref_short_side=ref))
        per_frame.append(max(cells))
    return float(np.median(per_frame))


class BlurStage:
    """Rejects clips with no region in focus. Values: ``blur_focus`` (the sharpest cell's sharpness) and
    ``blur_sharpness`` (the whole frame's, :func:`openwan.curate.measures.sharpness`), both in squared luma units
    over the same ``frames`` evenly spaced frames."""

    name = "blur"
    resources = Resources(num_cpus=0.25)

    def __init__(self, cfg: BlurConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        need_frames(clip, frames, "blur")
        t = len(frames.frames)
        picked = frames.frames[np.unique(np.linspace(0, t - 1, min(t, self.cfg.frames)).round().astype(int))]
        f = focus(picked, self.cfg.grid)
        values = {"blur_focus": round(f, 7), "blur_sharpness": round(measures.sharpness(picked), 7)}
        reasons = []
        if f < self.cfg.min_focus:
            reasons.append(f"Blurred: the sharpest part of the frame measures {f:.6f}, below the minimum focus of "
                           f"{self.cfg.min_focus:g}.")
        return StageOutput(values=values, reasons=reasons)


__all__ = ["LimitsConfig", "LimitsStage", "BordersConfig", "BordersStage", "find_borders", "ExposureConfig",
           "ExposureStage", "BlurConfig", "BlurStage", "focus", "need_frames"]
