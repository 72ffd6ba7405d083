"""Imaging quality on real footage under graded blur and noise: each step of damage must cost score (a flipped
metric fails), and clean footage must outscore heavily damaged footage of every source."""

from __future__ import annotations

import bench_damage as dmg
import numpy as np
import pytest

from openwan.eval.bench.base import Video
from openwan.eval.bench.imaging import ImagingQuality

SOURCES = ("bunny", "bikes", "carphone")


def _values(frames_list: list[np.ndarray]) -> list[float]:
    dim = ImagingQuality()
    return [dim.score(Video(f, dmg.FPS)).value for f in frames_list]


def _falls(values: list[float], step: float) -> None:
    assert all(b < a - step for a, b in zip(values, values[1:], strict=False)), values


def _some(name: str) -> list:
    return [pytest.param(s, marks=() if s == name else pytest.mark.slow) for s in SOURCES]


@pytest.mark.parametrize("source", _some("carphone"))
@pytest.mark.parametrize("size", [(128, 72), (64, 64)])
def test_blur_lowers_imaging_quality(source, size):
    clean = dmg.clip(source, 8, size=size)
    values = _values([dmg.blur(clean, s) for s in (0.0, 0.5, 0.8)])
    print(source, size, "blur", np.round(values, 3))
    _falls(values, 0.03)
    assert _values([dmg.blur(clean, 2.0)])[0] < 0.2


@pytest.mark.parametrize("source", _some("bunny"))
@pytest.mark.parametrize("size", [(128, 72), (64, 64)])
def test_noise_lowers_imaging_quality(source, size):
    clean = dmg.clip(source, 8, size=size)
    values = _values([dmg.noise(clean, s) for s in (0.0, 5.0, 10.0, 20.0)])
    print(source, size, "noise", np.round(values, 3))
    _falls(values, 0.02)


def test_details_carry_the_measures_and_a_single_frame_is_scored():
    s = ImagingQuality().score(Video(dmg.clip("bikes", 1), dmg.FPS))
    assert 0.0 <= s.value <= 1.0
    assert {"sharpness_luma2", "noise_sigma_luma", "mean_luma", "contrast_luma"} <= set(s.details)
    noisy = ImagingQuality().score(Video(dmg.noise(dmg.clip("bikes", 1), 10.0), dmg.FPS))
    assert noisy.details["noise_sigma_luma"] == pytest.approx(10.0 / 255, rel=0.25)


def test_under_exposure_lowers_imaging_quality():
    clean = dmg.clip("bunny", 4)
    dark = (clean.astype(np.float32) * 0.15).astype(np.uint8)
    assert _values([dark])[0] < _values([clean])[0] - 0.1
