"""Weight-free visual quality on real footage: blurred, noisy, darkened, washed-out and over-exposed versions of real
clips score lower than the clean originals, clean footage passes the default limit, and ruined footage is rejected."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from curate.footage import footage, resize
from openwan.curate.base import ClipFrames
from openwan.curate.quality import COMPONENTS, QualityConfig, QualityStage, quality_components

# (source, first frame, analysis size): clean real clips of 8 frames
CLEAN = [("bunny", 0, (320, 180)), ("bunny", 40, (160, 90)), ("bikes", 100, (320, 136)),
         ("bikes", 200, (320, 136)), ("carphone", 60, (176, 144))]


def clean_clip(name: str, start: int, size: tuple[int, int]) -> np.ndarray:
    return resize(footage(name, start, 8), size)


def degraded(clip: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Versions of ``clip`` that look worse: blurred, noisy, darkened, washed out, over-exposed."""
    rng = np.random.default_rng(seed)
    f = clip.astype(np.float32)

    def u8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x), 0, 255).astype(np.uint8)

    out = {f"blur {s}": np.stack([cv2.GaussianBlur(x, (0, 0), s) for x in clip]) for s in (1.5, 3.0)}
    out.update({f"noise {s}": u8(f + rng.normal(0, s, f.shape)) for s in (8.0, 16.0, 30.0)})
    out.update({f"dark {g}": u8(f * g) for g in (0.3, 0.15)})
    out.update({f"washed {a}": u8(f * a + 255 * (1 - a) * 0.9) for a in (0.5, 0.3)})
    out["over-exposed"] = u8(f * 2.0 + 40)
    return out


def _frames(clip: np.ndarray) -> ClipFrames:
    return ClipFrames(clip, np.arange(len(clip)) / 8.0, 8.0, (clip.shape[2], clip.shape[1]))


def test_degraded_versions_score_lower_than_clean():
    stage = QualityStage(QualityConfig())
    pairs, lower, clean_scores, ruined = 0, 0, [], []
    for name, start, size in CLEAN:
        clip = clean_clip(name, start, size)
        clean = stage({}, _frames(clip))
        assert clean.reasons == [], (name, start, clean.values)
        clean_scores.append(clean.values["quality_score"])
        for label, bad in degraded(clip, seed=start).items():
            out = stage({}, _frames(bad))
            pairs += 1
            lower += out.values["quality_score"] < clean.values["quality_score"]
            if label in ("blur 3.0", "noise 30.0", "dark 0.15"):
                ruined.append(bool(out.reasons))
    assert lower >= 0.9 * pairs, f"{lower} of {pairs} degraded versions scored lower"
    assert min(clean_scores) >= 0.6, clean_scores
    assert sum(ruined) >= 0.9 * len(ruined), f"{sum(ruined)} of {len(ruined)} ruined clips rejected"


def test_values_reason_and_determinism():
    clip = clean_clip("bunny", 0, (320, 180))
    stage = QualityStage(QualityConfig())
    out = stage({}, _frames(clip))
    keys = {"quality_score", "quality_sharpness", "quality_mean_luma", "quality_dark_share", "quality_bright_share",
            "quality_contrast", "quality_noise_sigma", "quality_colourfulness"}
    keys |= {f"quality_score_{c}" for c in COMPONENTS}
    assert set(out.values) == keys and all(isinstance(v, float) for v in out.values.values())
    assert 0 <= out.values["quality_score"] <= 1 and stage({}, _frames(clip)) == out
    dark = stage({}, _frames((clip * 0.12).astype(np.uint8)))
    assert len(dark.reasons) == 1 and "below quality.min_score 0.3" in dark.reasons[0]
    assert "weakest: exposure" in dark.reasons[0]
    assert QualityStage(QualityConfig(min_score=0.0))({}, _frames((clip * 0.12).astype(np.uint8))).reasons == []
    # max_frames subsamples evenly: measuring 8 of 32 frames of a steady shot changes the score little.
    long = clean_clip("bunny", 0, (320, 180)).repeat(4, axis=0)
    assert abs(quality_components(long)["score"] - out.values["quality_score"]) < 0.02


@pytest.mark.parametrize("field,value", [("max_frames", 0), ("sharp_low", 1.0), ("noise_high", 0.001),
                                         ("luma_target", 1.5), ("luma_span", 0.0), ("contrast_low", 0.5),
                                         ("colour_full", 0.0),
                                         ("weights", (0.5, 0.5)), ("weights", (1.0, -1.0, 1.0, 1.0)),
                                         ("min_score", 2.0)])
def test_config_range_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"quality.{field}"):
        dataclasses.replace(QualityConfig(), **{field: value})
