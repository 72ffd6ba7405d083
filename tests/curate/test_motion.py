"""Motion tiers on simulated camera moves over real footage: a crop window held still, panned, zoomed and shaken
over a still frame of Big Buck Bunny / bikes / carphone and over Big Buck Bunny's own (steady-camera) motion, real
moving patches over still backgrounds, and noisy or strobing versions; every clip is 8 fps analysis frames."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from curate.footage import footage, window
from openwan.curate.base import ClipFrames
from openwan.curate.motion import TIERS, MotionConfig, MotionStage, measure_motion, motion_tier

FPS = 8.0
STILLS = {"bunny": 10, "bikes": 205, "carphone": 30}  # frame index of each source used as a still picture


def still(name: str) -> np.ndarray:
    """One real frame ``[H, W, 3]`` of a bundled video."""
    return footage(name, STILLS[name], 1)[0]


def moving(count: int) -> np.ndarray:
    """Big Buck Bunny's own motion (a steady camera, the bunny moving), every third frame (25 -> ~8 fps)."""
    return footage("bunny", 0, 3 * count)[::3]


def _boxes(src: np.ndarray, count: int, rng: np.random.Generator, *, pan: tuple[float, float] = (0.0, 0.0),
           zoom: float = 1.0, shake: float = 0.0, frac: float = 0.6, size: tuple[int, int] = (320, 180)):
    """Crop boxes (cx, cy, w, h) in source pixels: ``pan`` in window widths/heights per second, ``zoom`` the window's
    size ratio over the clip (< 1 zooms in), ``shake`` the jitter std in output pixels per axis per frame."""
    h_src, w_src = src.shape[-3:-1]
    aspect = size[0] / size[1]
    w0 = min(w_src * frac, h_src * frac * aspect)
    h0 = w0 / aspect
    boxes = []
    for i in range(count):
        t = i / FPS
        s = zoom ** (i / max(1, count - 1))
        w, h = w0 * s, h0 * s
        cx = w_src / 2 + pan[0] * w0 * (t - count / FPS / 2)
        cy = h_src / 2 + pan[1] * h0 * (t - count / FPS / 2)
        if shake:
            jx, jy = rng.normal(0.0, shake, 2) * w / size[0]
            cx, cy = cx + jx, cy + jy
        boxes.append((cx, cy, w, h))
    return boxes


def camera_clip(src: np.ndarray, count: int = 16, seed: int = 0, size: tuple[int, int] = (320, 180),
                **move) -> np.ndarray:
    """A simulated camera move over ``src`` (a still ``[H, W, 3]`` or frames ``[T, H, W, 3]``) as uint8 frames."""
    rng = np.random.default_rng(seed)
    return window(src, _boxes(src, count, rng, size=size, **move), size)


def pasted_object(background: np.ndarray, patch_source: np.ndarray, count: int = 16, speed: float = 0.25,
                  direction: float = 0.0, size: tuple[int, int] = (320, 180)) -> np.ndarray:
    """A real patch (a quarter of ``patch_source``'s height) moving over a still real ``background`` seen by a
    still camera; ``speed`` in frame widths per second, ``direction`` in radians."""
    bg = window(background, [(background.shape[1] / 2, background.shape[0] / 2, background.shape[1] * 0.6,
                              background.shape[1] * 0.6 * size[1] / size[0])], size)[0]
    ph = size[1] // 3
    patch = window(patch_source, [(patch_source.shape[1] / 2, patch_source.shape[0] / 2, patch_source.shape[0] / 2,
                                   patch_source.shape[0] / 2)], (ph, ph))[0]
    out = []
    for i in range(count):
        d = speed * size[0] * (i - count / 2) / FPS
        x = round(size[0] / 2 + d * np.cos(direction) - ph / 2)
        y = round(size[1] / 2 + d * np.sin(direction) - ph / 2)
        frame = bg.copy()
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + ph, size[0]), min(y + ph, size[1])
        if x1 > x0 and y1 > y0:
            frame[y0:y1, x0:x1] = patch[y0 - y:y1 - y, x0 - x:x1 - x]
        out.append(frame)
    return np.stack(out)


def tier_of(frames: np.ndarray, cfg: MotionConfig | None = None) -> str:
    cf = ClipFrames(frames, np.arange(len(frames)) / FPS, FPS, (frames.shape[2], frames.shape[1]))
    return MotionStage(cfg or MotionConfig())({}, cf).values["motion_tier"]


def through_h264(frames: np.ndarray, tmp_path, name: str) -> np.ndarray:
    """``frames`` after a real H.264 round trip (crf 23), so codec noise is in them as in real footage."""
    import av

    from curate.footage import write_video

    path = write_video(frames, tmp_path / f"{name}.mp4", fps=FPS, crf=23)
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def noisy(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0.0, sigma, frames.shape), 0, 255).astype(np.uint8)


def strobed(frames: np.ndarray, gain: float = 0.4) -> np.ndarray:
    out = frames.astype(np.float32)
    out[::2] *= gain
    return out.astype(np.uint8)


def default_cases(tmp_path) -> list[tuple[str, str, np.ndarray]]:
    """(label, expected tier, frames): >= 4 variants each of static, pan, zoom and shake, plus object motion with a
    still camera and low-quality motion."""
    bunny, bikes, carphone = still("bunny"), still("bikes"), still("carphone")
    mv = moving(16)
    small = (160, 90)
    return [
        ("static bunny still", "static", camera_clip(bunny)),
        ("static bikes still 160x90", "static", camera_clip(bikes, size=small)),
        ("frozen bunny motion frame", "static", camera_clip(np.repeat(mv[12:13], 16, 0))),
        ("static carphone through H.264", "static", through_h264(camera_clip(carphone), tmp_path, "static")),
        ("pan right bunny", "camera", camera_clip(bunny, pan=(0.3, 0), frac=0.5)),
        ("pan left bikes", "camera", camera_clip(bikes, pan=(-0.2, 0), frac=0.5)),
        ("pan up carphone", "camera", camera_clip(carphone, pan=(0, 0.3), frac=0.5)),
        ("pan down bunny 160x90", "camera", camera_clip(bunny, pan=(0, -0.3), frac=0.5, size=small)),
        ("pan diagonal bikes through H.264", "camera",
         through_h264(camera_clip(bikes, pan=(0.3, 0.2), frac=0.5), tmp_path, "pan")),
        ("zoom in bunny", "camera", camera_clip(bunny, zoom=0.6)),
        ("zoom out bikes", "camera", camera_clip(bikes, zoom=1.5)),
        ("zoom in carphone", "camera", camera_clip(carphone, zoom=0.6)),
        ("zoom out bunny 160x90", "camera", camera_clip(bunny, zoom=1.5, size=small)),
        ("shake 2px bunny", "shaky", camera_clip(bunny, shake=2.0, seed=1)),
        ("shake 3px + slow pan bikes", "shaky", camera_clip(bikes, shake=3.0, pan=(0.1, 0), frac=0.5, seed=2)),
        ("shake 1.5px carphone 160x90", "shaky", camera_clip(carphone, shake=1.5, size=small, seed=3)),
        ("shake 2px over moving bunny", "shaky", camera_clip(mv, shake=2.0, seed=4)),
        ("shake 2px + pan over moving bunny", "shaky", camera_clip(mv, shake=2.0, pan=(0.1, 0), frac=0.5, seed=5)),
        ("bunny moving, still camera", "optimal", camera_clip(mv)),
        ("real patch moving over a still", "optimal", pasted_object(bikes, bunny)),
        ("heavy noise over a pan", "low_quality", noisy(camera_clip(bunny, pan=(0.2, 0), frac=0.5), 40.0)),
        ("heavy noise over a still", "low_quality", noisy(camera_clip(carphone), 30.0, seed=1)),
        ("strobing pan", "low_quality", strobed(camera_clip(bikes, pan=(0.2, 0), frac=0.5))),
    ]


def test_tiers_on_simulated_camera_moves(tmp_path):
    cases = default_cases(tmp_path)
    for tier in ("static", "camera", "shaky"):
        assert sum(want == tier for _, want, _ in cases) >= 4
    wrong = [(label, want, got) for label, want, frames in cases if (got := tier_of(frames)) != want]
    assert not wrong, wrong


def test_values_are_normalised_for_fps_and_size():
    bunny = still("bunny")
    at8 = measure_motion(camera_clip(bunny, pan=(0.3, 0), frac=0.5, count=24), FPS)
    small = measure_motion(camera_clip(bunny, pan=(0.3, 0), frac=0.5, count=24, size=(160, 90)), FPS)
    # The same move sampled at 4 fps: every second frame.
    at4 = measure_motion(camera_clip(bunny, pan=(0.3, 0), frac=0.5, count=24)[::2], FPS / 2)
    # The window moves 0.3 of its width per second: 0.3 * 320 / hypot(320, 180) diagonals per second.
    truth = 0.3 * 320 / np.hypot(320, 180)
    for v in (at8, small, at4):
        assert abs(v["magnitude"] - truth) < 0.05 * truth, (v, truth)
        assert v["camera_share"] > 0.95 and v["jitter"] < 0.0005


def test_jitter_reads_the_shake_in_frame_diagonals():
    bikes = still("bikes")
    for shake in (1.0, 2.0, 4.0):  # output pixels per axis per frame
        v = measure_motion(camera_clip(bikes, shake=shake, seed=7, count=32), FPS)
        truth = shake / np.hypot(320, 180)
        assert 0.75 * truth < v["jitter"] < 1.25 * truth, (shake, v["jitter"], truth)


def test_stage_output_reasons_and_config():
    bunny = still("bunny")
    shaky = camera_clip(bunny, shake=3.0, seed=1, count=16)
    frames = ClipFrames(shaky, np.arange(16) / FPS, FPS, (320, 180))
    out = MotionStage(MotionConfig())({}, frames)
    assert out.values["motion_tier"] == "shaky" and set(out.values) == {
        "motion_magnitude", "motion_camera_share", "motion_object", "motion_jitter", "motion_flicker",
        "motion_warp_error", "motion_tier"}
    assert len(out.reasons) == 1 and "shakes" in out.reasons[0] and "0.002" in out.reasons[0]
    assert MotionStage(MotionConfig())({}, frames) == out  # deterministic, whatever OpenCV's thread count
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        assert MotionStage(MotionConfig())({}, frames) == out
    finally:
        cv2.setNumThreads(threads)
    kept = MotionStage(MotionConfig(reject_tiers=()))({}, frames)
    assert kept.reasons == [] and kept.values == out.values
    still_frames = ClipFrames(camera_clip(bunny, count=8), np.arange(8) / FPS, FPS, (320, 180))
    static = MotionStage(MotionConfig(reject_tiers=("static", "shaky")))({}, still_frames)
    assert static.values["motion_tier"] == "static" and "nothing moves" in static.reasons[0]
    one = ClipFrames(shaky[:1], np.zeros(1), FPS, (320, 180))
    assert MotionStage(MotionConfig())({}, one).values["motion_tier"] == "static"
    assert set(TIERS) == {"optimal", "medium", "static", "camera", "low_quality", "shaky"}


@pytest.mark.parametrize("field,value", [("flow_short_side", 8), ("flow_fps", 0.0), ("grid_step", 0),
                                         ("ransac_threshold", -1.0), ("shaky_jitter", float("nan")),
                                         ("camera_share_min", 1.5), ("optimal_object_min", 2.0),
                                         ("reject_tiers", ("wobbly",)), ("border", 0.5)])
def test_config_range_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"motion.{field}"):
        dataclasses.replace(MotionConfig(), **{field: value})


@pytest.mark.slow
def test_tier_sweep_over_sources_speeds_and_seeds():
    """Every static / pan / zoom / shake variant over every still, several speeds, sizes and seeds."""
    wrong, total = [], 0
    for name in STILLS:
        src = still(name)
        for size in ((320, 180), (256, 144), (160, 90)):
            cases = [("static", {})]
            cases += [("camera", {"pan": p, "frac": 0.5}) for p in
                      ((0.1, 0), (-0.3, 0), (0, 0.15), (0, -0.3), (0.5, 0.3), (-0.6, -0.2))]
            cases += [("camera", {"zoom": z}) for z in (0.5, 0.75, 1.3, 1.6)]
            cases += [("shaky", {"shake": s, "seed": seed}) for s in (1.5, 3.0, 5.0) for seed in (0, 1)]
            cases += [("shaky", {"shake": 2.0, "pan": (0.15, 0.05), "frac": 0.5, "seed": 2}),
                      ("shaky", {"shake": 2.0, "zoom": 0.7, "seed": 3})]
            for want, move in cases:
                total += 1
                got = tier_of(camera_clip(src, size=size, **move))
                if got != want:
                    wrong.append((name, size, move, want, got))
    assert not wrong, f"{len(wrong)} of {total} wrong: {wrong}"


@pytest.mark.parametrize("frames,fps,match", [(np.zeros((4, 10, 40, 3), np.uint8), FPS, "at least 16x16"),
                                              (np.zeros((4, 32, 32, 3), np.float32), FPS, "uint8 RGB"),
                                              (np.zeros((32, 32, 3), np.uint8), FPS, "uint8 RGB"),
                                              (np.zeros((4, 32, 32, 3), np.uint8), 0.0, "fps > 0")])
def test_bad_frames_are_refused_before_flow(frames, fps, match):
    with pytest.raises(ValueError, match=match):
        measure_motion(frames, fps)


def test_tier_rules_in_order():
    cfg = MotionConfig()
    base = {"magnitude": 0.2, "camera_share": 0.3, "object": 0.1, "jitter": 0.0, "flicker": 0.0, "warp_error": 0.01}
    cases = [({}, "optimal"), ({"object": 0.8}, "medium"), ({"object": 0.005}, "medium"),
             ({"magnitude": 1.5}, "medium"), ({"camera_share": 0.9}, "camera"), ({"jitter": 0.01}, "shaky"),
             ({"magnitude": 0.001, "jitter": 0.01}, "static"), ({"flicker": 0.5, "magnitude": 0.0}, "low_quality"),
             ({"warp_error": 0.05}, "low_quality")]
    for change, want in cases:
        assert motion_tier({**base, **change}, cfg) == want, (change, want)


def test_uneven_and_repeated_source_frames_are_timed_by_their_times():
    """The core samples the nearest source frame at each analysis time: a 25 fps source gives gaps of 3 and 4 source
    frames, a 5 fps source repeats frames. A steady pan must still read as a steady camera at its real speed."""
    bikes = still("bikes")
    for source_fps in (25.0, 5.0):
        count = int(source_fps * 3)
        rng = np.random.default_rng(0)
        boxes = _boxes(bikes, count, rng, pan=(0.3, 0), frac=0.5)  # one box per source frame
        shown = window(bikes, boxes, (320, 180))
        idx = np.minimum(np.floor(np.arange(24) / FPS * source_fps + 0.5).astype(int), count - 1)
        frames, times = shown[idx], idx / source_fps
        v = measure_motion(frames, FPS, times=times)
        truth = 0.3 * 320 / np.hypot(320, 180) * source_fps / FPS  # the boxes advance per source frame
        assert abs(v["magnitude"] - truth) < 0.05 * truth, (source_fps, v, truth)
        assert v["jitter"] < 0.0005 and v["camera_share"] > 0.95, (source_fps, v)
        cf = ClipFrames(frames, times, FPS, (320, 180))
        assert MotionStage(MotionConfig())({}, cf).values["motion_tier"] == "camera"
