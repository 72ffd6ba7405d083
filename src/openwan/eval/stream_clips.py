"""What a long stream is judged on, one clip of frames at a time, and the per-bucket summary of those clips.

Each clip (consecutive frames of the stream, 17 by default as the detector's motion call is tuned on) gets:

- prompt following: :func:`openwan.eval.detector.detect`'s colour, shape and motion, and which of them agree
  with the target of the prompt in force over the whole clip (none when the clip lies in a switch's cross-fade);
- identity: :func:`count_objects`, the objects standing out from the fitted background frame by frame (a
  fading object loses contrast, a shrinking one area, a multiplying one shows more than one);
- the weight-free temporal dimensions of ``openwan eval bench`` (flicker, smoothness, pixel stability), through
  their own classes.

:func:`summarize_bucket` turns the clip rows of a bucket (a minute of video by default) into shares and means;
area and contrast are also given relative to the first bucket's.
"""

from __future__ import annotations

import statistics

import cv2
import numpy as np
import torch

from openwan.eval.bench.base import BenchWeights, Dimension, Video
from openwan.eval.bench.registry import build_dimensions
from openwan.eval.detector import MIN_CONTRAST, Detection, detect, fit_background

ATTRIBUTES = ("colour", "shape", "motion")
FOREGROUND = 0.5  # a pixel belongs to an object above this share of the contrast from the background (as detect)
MIN_OBJECT_SHARE = 0.2  # a component smaller than this share of its frame's largest one is not an object
MIN_OBJECT_PIXELS = 0.001  # nor one smaller than this share of the frame (at least 4 pixels)
DEFAULT_DIMENSIONS = ("temporal_flickering", "motion_smoothness", "pixel_stability")
# the physical measure each weight-free dimension reports beside its [0, 1] value (luma units)
MEASURES = {"temporal_flickering": "flicker_luma", "motion_smoothness": "error_luma", "pixel_stability": "change_luma"}


def count_objects(video: torch.Tensor, contrast: float | None = None, wrap: bool = False) -> dict:
    """The objects of ``video`` [T, H, W, 3] in [0, 1]: pixels farther than :data:`FOREGROUND` x ``contrast`` (RGB
    distance; default: detect()'s contrast of the clip) from the fitted background, split into 8-connected
    components; a component counts when it holds at least :data:`MIN_OBJECT_SHARE` of its frame's largest and
    :data:`MIN_OBJECT_PIXELS` of the frame. Returns ``objects`` (the median count over frames), ``per_frame``,
    ``area`` (the largest component's mean area over frames showing one, share of the frame) and ``contrast``.
    Nothing counts when the contrast is below the detector's :data:`MIN_CONTRAST`. ``wrap``: the frame is a torus
    (objects that wrap around the edges, as ``detect(wrap=True)`` reads them): each frame is rolled to put an
    empty column and an empty row at its edges before its components are found, so an object split across an edge
    counts once."""
    frames = video.detach().float().cpu()
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video must be [T, H, W, 3] in [0, 1]; got shape {tuple(video.shape)}.")
    if contrast is None:
        contrast = detect(frames).contrast
    t, h, w, _ = frames.shape
    if contrast < MIN_CONTRAST:
        return {"objects": 0, "per_frame": [0] * t, "area": 0.0, "contrast": float(contrast)}
    dist = (frames - fit_background(frames)).norm(dim=-1)  # [T, H, W]
    masks = (dist > FOREGROUND * contrast).numpy().astype(np.uint8)
    min_pixels = max(4, round(MIN_OBJECT_PIXELS * h * w))
    counts, areas = [], []
    for mask in masks:
        if wrap:
            mask = _rolled_to_gaps(mask)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        sizes = stats[1:n, cv2.CC_STAT_AREA]  # label 0 is the background
        largest = int(sizes.max()) if len(sizes) else 0
        kept = sizes[(sizes >= MIN_OBJECT_SHARE * largest) & (sizes >= min_pixels)]
        counts.append(len(kept))
        if len(kept):
            areas.append(largest / (h * w))
    return {"objects": int(statistics.median_low(counts)), "per_frame": counts,
            "area": float(np.mean(areas)) if areas else 0.0, "contrast": float(contrast)}


def _rolled_to_gaps(mask: np.ndarray) -> np.ndarray:
    """``mask`` [H, W] rolled so that its first empty column and first empty row (if it has them) become its first
    column and row: an object split across the edges of a torus comes out whole."""
    for axis in (1, 0):
        empty = np.flatnonzero(~mask.any(axis=1 - axis))
        if len(empty):
            mask = np.roll(mask, -int(empty[0]), axis=axis)
    return np.ascontiguousarray(mask)


def bench_dimensions(names: tuple[str, ...] | list[str] = DEFAULT_DIMENSIONS,
                     weights: BenchWeights | None = None) -> tuple[list[Dimension], dict[str, str]]:
    """The bench dimensions ``names`` that can run here, set up, and {name: "not measured: ..."} for the others."""
    ready, skipped = [], {}
    for dim in build_dimensions(list(names), weights):
        why = dim.available()
        if why:
            skipped[dim.name] = why
        else:
            dim.setup()
            ready.append(dim)
    return ready, skipped


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, H, W, 3] in [0, 1] -> uint8 [T, H, W, 3] (what the bench's :class:`Video` holds)."""
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def measure_clip(frames: torch.Tensor, *, fps: float, target: tuple[str, str, str] | None,
                 dimensions: list[Dimension] = (), prompt: str | None = None, still_threshold: float = 0.1,
                 name: str = "clip", wrap: bool = False) -> dict:
    """One clip's row: ``detected`` (colour, shape, motion), ``match`` (per attribute and ``all``; None without a
    ``target``), the :func:`count_objects` figures (objects, area, contrast) and each dimension's value and
    physical measure (``bench``: {name: [value or None, measure or None]}). ``wrap``: read the object on a torus
    (``detect(wrap=True)``, :func:`count_objects`), as an object that runs on past the edges comes back."""
    seen: Detection = detect(frames, still_threshold=still_threshold, wrap=wrap)
    objects = count_objects(frames, contrast=seen.contrast, wrap=wrap)
    video = Video(to_uint8(frames), fps=fps, prompt=prompt, id=name)
    bench = {}
    for dim in dimensions:
        score = dim.score(video)
        measure = score.details.get(MEASURES.get(dim.name, ""))
        bench[dim.name] = [score.value, measure]
    return {"detected": {k: getattr(seen, k) for k in ATTRIBUTES},
            "match": None if target is None else seen.matches(*target),
            "objects": objects["objects"], "area": round(objects["area"], 5), "contrast": round(objects["contrast"], 4),
            "bench": bench}


def summarize_bucket(rows: list[dict], reference: dict | None = None) -> dict:
    """Shares and means over the clip rows of one bucket. ``agreement``: the share of judged clips (those with a
    ``match``) agreeing on each attribute and on all three; ``identity``: the share of clips with exactly one
    object, the mean count, the mean area (share of the frame) and contrast (RGB distance) of the clips showing
    an object, and both relative to ``reference`` (the first bucket's summary); ``bench``: each dimension's mean
    value and measure over the clips it applied to."""
    judged = [r for r in rows if r.get("match") is not None]
    agreement = {k: _mean([r["match"][k] for r in judged]) for k in (*ATTRIBUTES, "all")}
    shown = [r for r in rows if r["objects"] > 0]
    area, contrast = _mean([r["area"] for r in shown]), _mean([r["contrast"] for r in shown])
    identity = {"one_object": _mean([r["objects"] == 1 for r in rows]),
                "mean_objects": _mean([r["objects"] for r in rows]), "no_object": sum(r["objects"] == 0 for r in rows),
                "area": area, "contrast": contrast,
                "area_rel": _ratio(area, None if reference is None else reference["identity"]["area"]),
                "contrast_rel": _ratio(contrast, None if reference is None else reference["identity"]["contrast"])}
    bench = {}
    for name in (rows[0]["bench"] if rows else {}):
        values = [r["bench"][name][0] for r in rows if r["bench"][name][0] is not None]
        measures = [r["bench"][name][1] for r in rows if r["bench"][name][1] is not None]
        bench[name] = {"value": _mean(values), "measure": _mean(measures), "clips": len(values)}
    status = [r.get("status") for r in rows]
    return {"clips": len(rows), "judged": len(judged), "in_transition": status.count("transition"),
            "no_target": status.count("no_target"), "agreement": agreement, "identity": identity, "bench": bench}


def _mean(values: list) -> float | None:
    return round(float(np.mean([float(v) for v in values])), 5) if len(values) else None


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 4)


__all__ = ["count_objects", "measure_clip", "summarize_bucket", "bench_dimensions", "to_uint8", "DEFAULT_DIMENSIONS",
           "FOREGROUND", "MIN_OBJECT_SHARE", "MIN_OBJECT_PIXELS"]
