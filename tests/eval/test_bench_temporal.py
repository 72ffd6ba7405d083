"""The bench's temporal dimensions on real footage under controlled, graded damage: each score must move the right
way, step by step, as the damage grows (a flipped metric fails every sweep), and the physical measures behind them
must agree with what the damage put in (pan speeds, noise levels)."""

from __future__ import annotations

import json
import math

import bench_damage as dmg
import numpy as np
import pytest

from openwan.eval.bench.base import Score, Video
from openwan.eval.bench.registry import build_dimensions
from openwan.eval.bench.temporal import (
    DynamicDegree,
    LargeMotion,
    MotionSmoothness,
    PixelStability,
    TemporalFlickering,
)

SOURCES = ("bunny", "bikes", "carphone")
TEMPORAL = ("temporal_flickering", "motion_smoothness", "dynamic_degree", "large_motion", "pixel_stability")


def _score(dim, frames: np.ndarray, fps: float = dmg.FPS) -> Score:
    return dim.score(Video(frames, fps))


def _sweep(dim, clean: np.ndarray, damage, strengths) -> list[float]:
    values = [_score(dim, damage(clean, s)).value for s in strengths]
    print(dim.name, damage.__name__, dict(zip(strengths, np.round(values, 3), strict=True)))
    return values


def _falls(values: list[float], step: float = 0.005) -> None:
    """Each value at least ``step`` below the one before (a flipped metric rises and fails)."""
    assert all(b < a - step for a, b in zip(values, values[1:], strict=False)), values


def _some(name: str) -> list:
    """``name`` in the default tier, the other sources in the slow one."""
    return [pytest.param(s, marks=() if s == name else pytest.mark.slow) for s in SOURCES]


def test_the_registry_builds_every_temporal_dimension():
    dims = build_dimensions(list(TEMPORAL))
    assert [d.name for d in dims] == list(TEMPORAL)
    assert all(d.stands_for and d.available() is None for d in dims)


@pytest.mark.parametrize("source", _some("bunny"))
def test_gain_flicker_lowers_temporal_flickering(source):
    clean = dmg.clip(source)
    values = _sweep(TemporalFlickering(), clean, dmg.flicker, [0.0, 0.02, 0.05, 0.1])
    _falls(values, 0.03)
    assert values[0] > 0.85  # clean real footage barely flickers
    assert values[-1] < 0.7


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_regional_flicker_lowers_temporal_flickering(source):
    _falls(_sweep(TemporalFlickering(), dmg.clip(source), dmg.regional_flicker, [0.0, 0.03, 0.06, 0.12]), 0.02)


def test_camera_motion_is_not_flicker():
    """A fast pan of a still changes every pixel but no brightness: the flow explains it."""
    for speed in (0.1, 0.4):
        s = _score(TemporalFlickering(), dmg.camera(dmg.still("bunny"), "pan_left", speed=speed))
        assert s.value > 0.9, s.details
        assert s.details["vbench_raw"] < 1.0


@pytest.mark.parametrize("source", _some("bikes"))
def test_jitter_lowers_motion_smoothness(source):
    values = _sweep(MotionSmoothness(), dmg.clip(source), dmg.jitter, [0.0, 0.5, 1.0, 2.0])
    _falls(values, 0.05)


@pytest.mark.parametrize("source", [pytest.param("bikes"), pytest.param("bunny", marks=pytest.mark.slow)])
def test_dropped_frames_lower_motion_smoothness(source):
    """A dropped frame shown twice (every 6th, 3rd, 2nd frame); carphone's handheld footage already stutters."""
    _falls(_sweep(MotionSmoothness(), dmg.clip(source), dmg.drop, [0, 6, 3, 2]), 0.01)


@pytest.mark.parametrize("source", _some("carphone"))
def test_frozen_frames_lower_dynamic_degree(source):
    values = _sweep(DynamicDegree(), dmg.clip(source), dmg.freeze, [0.0, 0.25, 0.5, 0.75])
    _falls(values, 0.04)
    assert values[-1] <= 0.3


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_repeated_frames_lower_dynamic_degree_and_large_motion(source):
    clean = dmg.clip(source)
    _falls(_sweep(DynamicDegree(), clean, dmg.repeat, [1, 2, 3]), 0.04)
    values = _sweep(LargeMotion(), clean, dmg.repeat, [1, 2, 3])  # slow footage scores low: compare ratios
    assert all(b < 0.8 * a for a, b in zip(values, values[1:], strict=False)), values


@pytest.mark.parametrize("source", _some("bunny"))
def test_large_motion_grows_with_pan_speed_and_measures_it(source):
    """Pans of a still at known speeds: the score rises with speed, and the measured speed is the true one."""
    still = dmg.still(source)
    values = []
    for speed in (0.05, 0.1, 0.2, 0.4):  # window widths per second
        s = _score(LargeMotion(), dmg.camera(still, "pan_left", speed=speed))
        truth = speed * dmg.SIZE[0] / math.hypot(*dmg.SIZE)  # frame diagonals per second
        assert s.details["speed_diag_per_s"] == pytest.approx(truth, rel=0.12)
        values.append(s.value)
    assert all(b > a + 0.05 for a, b in zip(values, values[1:], strict=False)), values


def test_dynamic_degree_threshold_separates_still_and_moving():
    still = dmg.still("bikes")
    assert _score(DynamicDegree(), dmg.camera(still, "static")).value == 0.0
    moving = _score(DynamicDegree(), dmg.camera(still, "pan_right", speed=0.3))
    assert moving.value == 1.0 and moving.details["dynamic"]


@pytest.mark.parametrize("source", _some("bunny"))
def test_noise_in_static_regions_lowers_pixel_stability(source):
    """Big Buck Bunny's opening has a still camera; carphone's car interior stands still around the speaker."""
    clean = dmg.clip(source) if source != "bikes" else dmg.camera(dmg.still(source), "static", count=20)
    values = _sweep(PixelStability(), clean, dmg.noise, [0.0, 2.0, 4.0, 8.0])
    _falls(values, 0.05)


def test_pixel_stability_reads_the_noise_level():
    """Grey noise of std s levels on a still picture changes each pixel by 2 s / sqrt(pi) on average."""
    for sigma in (3.0, 6.0):
        s = _score(PixelStability(), dmg.noise(dmg.camera(dmg.still("carphone"), "static"), sigma))
        assert s.details["change_luma"] == pytest.approx(2 * sigma / math.sqrt(math.pi) / 255, rel=0.1)
        assert s.details["static_share"] > 0.9


def test_single_frames_are_not_applicable_with_a_sentence():
    one = Video(dmg.clip("bunny", 1), dmg.FPS)
    for dim in build_dimensions(list(TEMPORAL)):
        s = dim.score(one)
        assert s.value is None and "1 frame" in s.not_applicable
    two = Video(dmg.clip("bunny", 2), dmg.FPS)
    assert "at least 3" in MotionSmoothness().score(two).not_applicable
    assert TemporalFlickering().score(two).value is not None


def test_a_whole_frame_in_motion_has_no_static_region():
    s = _score(PixelStability(), dmg.camera(dmg.still("bikes"), "pan_left", speed=0.4))
    assert s.value is None and "stand still" in s.not_applicable


def test_scores_are_deterministic_in_range_and_json():
    """A second video object recomputes the flow; the same object reuses it: all three agree."""
    frames = dmg.jitter(dmg.clip("carphone", 12), 1.0)
    video = Video(frames, dmg.FPS)
    first = [d.score(video).to_json() for d in build_dimensions(list(TEMPORAL))]
    cached = [d.score(video).to_json() for d in build_dimensions(list(TEMPORAL))]
    again = [d.score(Video(frames.copy(), dmg.FPS)).to_json() for d in build_dimensions(list(TEMPORAL))]
    assert first == cached == again
    assert all(s["value"] is None or 0.0 <= s["value"] <= 1.0 for s in first)
    json.dumps(first)
