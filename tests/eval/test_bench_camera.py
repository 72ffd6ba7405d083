"""Camera motion on known camera moves of real stills (a crop window panned, tilted, zoomed, held, or sliding behind
a fixed subject for an orbit): every direction classified right, its speed measured, and prompts matched to it."""

from __future__ import annotations

import json
import math

import bench_damage as dmg
import pytest

from openwan.eval.bench.base import Video
from openwan.eval.bench.camera import PAN_MIN, CameraMotion, camera_motion, requested_motion

SOURCES = ("bunny", "bikes", "carphone")
MOVES = tuple(dmg.MOVES)  # static, pans, tilts, zooms


def _cases(default: str) -> list:
    return [pytest.param(source, move, marks=() if source == default else pytest.mark.slow)
            for source in SOURCES for move in MOVES]


@pytest.mark.parametrize(("source", "move"), _cases("bikes"))
def test_known_camera_moves_are_classified(source, move):
    speed = 0.2
    got = camera_motion(Video(dmg.camera(dmg.still(source), move, speed=speed), dmg.FPS))
    assert got["camera_class"] == move, got
    assert got["moves"] == [move]
    if move.startswith(("pan", "tilt")):
        key = "pan_width_per_s" if move.startswith("pan") else "tilt_height_per_s"
        assert abs(got[key]) == pytest.approx(speed, rel=0.1)  # the window moved `speed` frames per second
    if move.startswith("zoom"):
        ratio = dmg.MOVES[move][2]  # the window's size ratio over the 16 frames
        assert got["zoom_log_per_s"] == pytest.approx(-math.log(ratio) * dmg.FPS / 15, rel=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("move", MOVES)
def test_camera_moves_are_classified_on_small_square_frames(move):
    """17 frames of 64x64 at 16 fps, the smallest videos the bench sees."""
    frames = dmg.camera(dmg.still("carphone"), move, count=17, speed=0.3, fps=16.0, size=(64, 64))
    assert camera_motion(Video(frames, 16.0))["camera_class"] == move


@pytest.mark.parametrize("source", [pytest.param(s, marks=() if s == "bunny" else pytest.mark.slow)
                                    for s in SOURCES])
@pytest.mark.parametrize("direction", ["left", "right"])
def test_orbits_are_told_from_pans(source, direction):
    subject = dmg.still("carphone" if source != "carphone" else "bunny")
    got = camera_motion(Video(dmg.orbit(dmg.still(source), subject, direction, speed=0.3), dmg.FPS))
    assert got["camera_class"] == f"orbit_{direction}", got
    # Orbiting left slides the background left, as turning the camera right (a right pan) does.
    assert ("pan_right" if direction == "left" else "pan_left") in got["moves"]


def test_pan_speed_below_the_threshold_reads_static():
    still = dmg.still("bunny")
    slow = camera_motion(Video(dmg.camera(still, "pan_right", speed=PAN_MIN / 3), dmg.FPS))
    fast = camera_motion(Video(dmg.camera(still, "pan_right", speed=PAN_MIN * 3), dmg.FPS))
    assert slow["camera_class"] == "static" and fast["camera_class"] == "pan_right"


@pytest.mark.parametrize(("prompt", "want"), [
    ("The camera pans left over a city at dusk", [{"pan_left"}]),
    ("camera pans to the right across a field", [{"pan_right"}]),
    ("the camera pans from left to right", [{"pan_right"}]),
    ("a slow zoom in on a face", [{"zoom_in"}]),
    ("the camera zooms into the flower", [{"zoom_in"}]),
    ("the camera pulls back to reveal the valley", [{"zoom_out"}]),
    ("tilt up to the sky", [{"tilt_up"}]),
    ("camera tilts downward to the street", [{"tilt_down"}]),
    ("the camera orbits around the statue", [{"orbit_left", "orbit_right"}]),
    ("camera orbits to the left around a red car", [{"orbit_left"}]),
    ("static camera, a cat sleeps", [{"static"}]),
    ("the camera slowly pans over the sea", [{"pan_left", "pan_right"}]),
    ("pan slowly to the left, then zoom in", [{"pan_left"}, {"zoom_in"}]),
    ("a frying pan on a stove", []),
    ("a still life of fruit; a cat walks left", []),
    ("a red circle moves left", []),  # a circle is a shape, not a camera circling
    ("the camera circles around the subject to the right", [{"orbit_right"}]),
    (None, []),
])
def test_prompts_are_read_for_camera_requests(prompt, want):
    assert [set(g) for g in requested_motion(prompt)] == want


def test_the_score_is_one_when_the_camera_does_what_the_prompt_asks():
    dim = CameraMotion()
    still = dmg.still("bunny")
    left = dmg.camera(still, "pan_left", speed=0.3)
    assert dim.score(Video(left, dmg.FPS, prompt="the camera pans left")).value == 1.0
    assert dim.score(Video(left, dmg.FPS, prompt="the camera pans right")).value == 0.0
    assert dim.score(Video(left, dmg.FPS, prompt="static camera")).value == 0.0
    held = dmg.camera(still, "static")
    assert dim.score(Video(held, dmg.FPS, prompt="a locked-off static shot")).value == 1.0
    assert dim.score(Video(held, dmg.FPS, prompt="zoom in on the bunny")).value == 0.0
    both = dmg.camera(still, "zoom_in")
    assert dim.score(Video(both, dmg.FPS, prompt="camera zooms in")).value == 1.0


def test_not_applicable_without_a_camera_request():
    dim = CameraMotion()
    frames = dmg.camera(dmg.still("bikes"), "tilt_up")
    s = dim.score(Video(frames, dmg.FPS, prompt="two people ride bikes"))
    assert s.value is None and "asks for no camera motion" in s.not_applicable
    assert s.details["camera_class"] == "tilt_up"  # the class is reported all the same
    json.dumps(s.to_json())
    assert "no prompt" in dim.score(Video(frames, dmg.FPS)).not_applicable
    one = dim.score(Video(frames[:1], dmg.FPS, prompt="pan left"))
    assert one.value is None and "1 frame" in one.not_applicable
