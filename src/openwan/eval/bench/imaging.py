"""Imaging quality without weights: how sharp, clean and well exposed the frames are (VBench imaging quality
asks the same of MUSIQ, a learned model: blur, noise and over- or under-exposure lower it).

The measures and their maps to [0, 1] are :func:`openwan.curate.quality.quality_components`' (sharpness less what
noise alone adds, on a log scale between :data:`SHARP_LOW` and :data:`SHARP_HIGH`; noise sigma between
``noise_low`` and ``noise_high``; exposure from mean luma, clipped shares and contrast), with colourfulness left
out (a grey picture is not a distorted one). ``value`` is their weighted geometric mean with :data:`WEIGHTS`.
The sharpness scale reaches higher than curation's (:data:`SHARP_HIGH`), so that sharp footage is ranked rather
than all scored 1 and a light blur already costs score.
"""

from __future__ import annotations

from openwan.curate.quality import QualityConfig, quality_components
from openwan.eval.bench.base import Dimension, Score, Video

MAX_FRAMES = 8  # evenly spaced frames measured per video
SHARP_LOW = 1e-5  # sharpness (squared luma units) scoring 0: a 2-pixel Gaussian blur of ordinary footage
SHARP_HIGH = 3e-3  # sharpness scoring 1: crisp, detailed footage (Big Buck Bunny at 320x180 reads about 1.2e-3)
WEIGHTS = (0.4, 0.2, 0.4, 0.0)  # sharpness, exposure, noise, colour
CONFIG = QualityConfig(max_frames=MAX_FRAMES, sharp_low=SHARP_LOW, sharp_high=SHARP_HIGH, weights=WEIGHTS,
                       min_score=0.0)


class ImagingQuality(Dimension):
    """Weight-free imaging quality in [0, 1] (formula in the module docstring); details carry the measures:
    ``sharpness_luma2`` (variance of the Laplacian, squared luma units), ``noise_sigma_luma`` (luma units),
    ``mean_luma``, ``dark_share``, ``bright_share``, ``contrast_luma`` and the component scores."""

    name = "imaging_quality"
    stands_for = "VBench imaging quality; Wan-Bench image quality (weight-free: sharpness, noise, exposure)"

    def score(self, video: Video) -> Score:
        frames = video.analysis_frames()
        if min(frames.shape[1:3]) < 3:
            return Score(None, not_applicable=f"the frames are {frames.shape[2]}x{frames.shape[1]} pixels; "
                                              "sharpness and noise need at least 3x3.")
        q = quality_components(frames, CONFIG)
        details = {"sharpness_luma2": q["sharpness"], "noise_sigma_luma": q["noise_sigma"],
                   "mean_luma": q["mean_luma"], "dark_share": q["dark_share"], "bright_share": q["bright_share"],
                   "contrast_luma": q["contrast"], "score_sharpness": q["score_sharpness"],
                   "score_noise": q["score_noise"], "score_exposure": q["score_exposure"]}
        return Score(min(1.0, max(0.0, q["score"])), details)


__all__ = ["ImagingQuality", "CONFIG", "SHARP_LOW", "SHARP_HIGH", "WEIGHTS", "MAX_FRAMES"]
