"""Weight-free visual quality: sharpness, exposure, noise and colourfulness of a clip's frames, each mapped to a
score in [0, 1] and combined into ``quality_score``.

Components (measures from :mod:`openwan.curate.measures`, on up to ``max_frames`` evenly spaced analysis frames):

- sharpness ``s`` (squared luma units), less the sharpness that white noise of the measured noise sigma alone gives
  at the frames' size (noise raises the Laplacian's variance without adding detail): ``d = max(s - s_noise, 0)``,
  scored ``clip(log(d / sharp_low) / log(sharp_high / sharp_low), 0, 1)``, a log scale because blur divides the
  Laplacian's variance by factors, not differences.
- exposure: ``mean_part * clip_part * contrast_part`` with ``mean_part = clip(1 - max(0, |mean_luma - luma_target|
  - luma_tolerance) / luma_span, 0, 1)`` (full marks for a mean luma within the tolerance of the target),
  ``clip_part = clip(1 - (dark_share + bright_share) / max_clipped_share, 0, 1)`` and ``contrast_part =
  clip((contrast - contrast_low) / (contrast_high - contrast_low), 0, 1)`` (washed-out or murky pictures).
- noise ``n`` (luma units): ``clip(1 - (n - noise_low) / (noise_high - noise_low), 0, 1)``.
- colourfulness ``c`` (Hasler-Suesstrunk, 0..255 scale): ``clip(c / colour_full, 0, 1)``.

``quality_score`` is the weighted geometric mean of the four components (each floored at 0.01 so one zero does not
erase the others' ranking): one badly failed aspect pulls the score down more than an average would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.curate.measures import colourfulness, contrast, exposure, noise_sigma, sharpness

COMPONENTS = ("sharpness", "exposure", "noise", "colour")


@dataclass(frozen=True)
class QualityConfig:
    """The ``quality`` section: the component mappings, their weights, and ``min_score`` below which a clip is
    rejected (0 keeps every clip). Defaults put clean real footage at 0.6 to 1.0 and reject below 0.3."""

    enabled: bool = True
    max_frames: int = 8  # evenly spaced analysis frames measured per clip
    sharp_low: float = 1e-5  # sharpness scoring 0 (a 2-pixel Gaussian blur of ordinary footage)
    sharp_high: float = 5e-4  # sharpness scoring 1
    luma_target: float = 0.45
    luma_tolerance: float = 0.15
    luma_span: float = 0.3  # beyond the tolerance, the mean-luma part falls to 0 over this much luma
    max_clipped_share: float = 0.5  # crushed-dark plus clipped-bright share scoring 0
    contrast_low: float = 0.03  # RMS luma contrast scoring 0
    contrast_high: float = 0.12  # RMS luma contrast scoring 1 (ordinary footage reads 0.13 to 0.27)
    noise_low: float = 0.015  # noise sigma (luma units) scoring 1; fine texture alone reads up to about this
    noise_high: float = 0.05  # noise sigma scoring 0 (about 13 of 255 levels)
    colour_full: float = 33.0  # colourfulness scoring 1 (Hasler-Suesstrunk's "moderately colourful")
    weights: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)  # sharpness, exposure, noise, colour
    min_score: float = 0.3

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ValueError(f"quality.max_frames must be at least 1; got {self.max_frames}.")
        pairs = (("sharp_low", "sharp_high"), ("noise_low", "noise_high"), ("contrast_low", "contrast_high"))
        for low, high in pairs:
            lo, hi = getattr(self, low), getattr(self, high)
            if not 0 < lo < hi:
                raise ValueError(f"quality.{low} and quality.{high} must satisfy 0 < {low} < {high}; got {lo}, {hi}.")
        for name in ("luma_target", "luma_tolerance", "luma_span", "max_clipped_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1 or (name in ("luma_span", "max_clipped_share") and value == 0):
                raise ValueError(f"quality.{name} must be in [0, 1] (and > 0 for spans); got {value}.")
        if not self.colour_full > 0:
            raise ValueError(f"quality.colour_full must be > 0; got {self.colour_full}.")
        if len(self.weights) != 4 or any(not w >= 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"quality.weights must be four weights >= 0 ({', '.join(COMPONENTS)}) with a positive "
                             f"sum; got {self.weights}.")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"quality.min_score must be in [0, 1]; got {self.min_score}.")


def _unit(x: float) -> float:
    return min(1.0, max(0.0, x))


def _noise_sharpness(shape: tuple[int, int], sigma: float) -> float:
    """The sharpness that white luma noise of std ``sigma`` alone gives on a grey frame of ``shape`` (H, W): the
    part of a noisy clip's sharpness that is noise, not detail (fixed seed, so deterministic)."""
    rng = np.random.default_rng(0)
    grey = np.clip(np.round(127.5 + rng.normal(0.0, sigma * 255.0, shape)), 0, 255).astype(np.uint8)
    return sharpness(np.repeat(grey[None, :, :, None], 3, axis=-1))


def quality_components(frames: np.ndarray, cfg: QualityConfig | None = None) -> dict[str, float]:
    """The raw measures (``sharpness``, ``mean_luma``, ``dark_share``, ``bright_share``, ``contrast``, ``noise_sigma``,
    ``colourfulness``) and the component scores in [0, 1] (``score_sharpness``, ``score_exposure``, ``score_noise``,
    ``score_colour``) and ``score`` of uint8 RGB frames ``[T, H, W, 3]``, by the formulas in the module docstring."""
    cfg = cfg or QualityConfig()
    frames = np.asarray(frames)
    if frames.ndim == 4 and len(frames) > cfg.max_frames:
        frames = frames[np.round(np.linspace(0, len(frames) - 1, cfg.max_frames)).astype(int)]
    sharp = sharpness(frames)
    exp = exposure(frames)
    noise = noise_sigma(frames)
    colour = colourfulness(frames)
    mean_part = _unit(1 - max(0.0, abs(exp["mean_luma"] - cfg.luma_target) - cfg.luma_tolerance) / cfg.luma_span)
    clip_part = _unit(1 - (exp["dark_share"] + exp["bright_share"]) / cfg.max_clipped_share)
    rms = contrast(frames)
    contrast_part = _unit((rms - cfg.contrast_low) / (cfg.contrast_high - cfg.contrast_low))
    detail = max(sharp - _noise_sharpness(frames.shape[-3:-1], noise), 1e-12)
    parts = {
        "score_sharpness": _unit(math.log(detail / cfg.sharp_low) / math.log(cfg.sharp_high / cfg.sharp_low)),
        "score_exposure": mean_part * clip_part * contrast_part,
        "score_noise": _unit(1 - (noise - cfg.noise_low) / (cfg.noise_high - cfg.noise_low)),
        "score_colour": _unit(colour / cfg.colour_full),
    }
    total = sum(cfg.weights)
    log_score = sum(w * math.log(max(p, 0.01)) for w, p in zip(cfg.weights, parts.values(), strict=True)) / total
    return {"sharpness": sharp, **exp, "contrast": rms, "noise_sigma": noise, "colourfulness": colour, **parts,
            "score": math.exp(log_score)}


class QualityStage:
    """The ``quality`` stage: values ``quality_score`` (in [0, 1]), ``quality_sharpness`` (squared luma units),
    ``quality_mean_luma``, ``quality_dark_share``, ``quality_bright_share`` (in [0, 1]), ``quality_contrast`` and
    ``quality_noise_sigma`` (luma units), ``quality_colourfulness`` (0..255 scale) and the component scores
    ``quality_score_sharpness``, ``quality_score_exposure``, ``quality_score_noise``, ``quality_score_colour`` (in
    [0, 1]); a reason when ``quality_score`` is below ``min_score``."""

    name = "quality"
    resources = Resources(num_cpus=1.0)

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        """Nothing to load: the measures need no weights."""

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        v = quality_components(frames.frames, self.cfg)
        values = {f"quality_{k}": float(f"{x:.6g}") for k, x in v.items()}  # six significant digits
        reasons = []
        if v["score"] < self.cfg.min_score:
            weakest = min(COMPONENTS, key=lambda c: v[f"score_{c}"])
            reasons.append(f"visual quality {v['score']:.2f} is below quality.min_score {self.cfg.min_score} "
                           f"(weakest: {weakest} scores {v[f'score_{weakest}']:.2f}).")
        return StageOutput(values=values, reasons=reasons)


__all__ = ["QualityConfig", "QualityStage", "quality_components", "COMPONENTS"]
