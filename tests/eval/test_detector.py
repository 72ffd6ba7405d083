"""The shapes detector is right on the dataset's own videos: rendered, and after the mp4 round trip."""

from __future__ import annotations

import pytest
import torch

from openwan.data.manifest import read_manifest
from openwan.data.synthetic import COLOURS, combinations, make_dataset, parse_caption, render_clip, split_combinations
from openwan.data.video import read_video
from openwan.eval.detector import Detection, classify_shape, detect, fit_background, motion_from_displacement

pytestmark = pytest.mark.usefixtures("one_thread")


def _accuracy(pairs) -> dict[str, float]:
    """pairs: (video, (colour, shape, motion)) -> fraction right per attribute and for all three."""
    hits = [detect(video).matches(*attrs) for video, attrs in pairs]
    return {k: sum(h[k] for h in hits) / len(hits) for k in ("colour", "shape", "motion", "all")}


def test_right_on_rendered_clips():
    combos = combinations()
    pairs = ((render_clip(*combos[i % 90], seed=10_000 + i), combos[i % 90]) for i in range(270))
    accuracy = _accuracy(pairs)
    assert min(accuracy.values()) >= 0.99, accuracy


def test_right_on_dataset_files_after_the_mp4_round_trip(tmp_path):
    records = read_manifest(make_dataset(tmp_path / "train", 72, seed=3))
    records += read_manifest(make_dataset(tmp_path / "heldout", 36, seed=3, split="heldout"))
    accuracy = _accuracy((read_video(r.path), parse_caption(r.caption)) for r in records)
    assert min(accuracy.values()) >= 0.99, accuracy


def test_other_sizes_and_lengths():
    combos = split_combinations("heldout")
    pairs = [(render_clip(*c, seed=i, size=(96, 64), frames=9), c) for i, c in enumerate(combos)]
    pairs += [(render_clip(*c, seed=i, size=128, frames=33), c) for i, c in enumerate(combos)]
    accuracy = _accuracy(pairs)
    assert min(accuracy.values()) >= 0.99, accuracy


def test_wrap_reads_objects_that_wrap_around_the_edges():
    """Windows of 49-frame wrapping clips (data synth --paths wrap, what the streaming student trains on): read right
    with wrap=True, whose centroids live on the torus; the plain line fit gets motion wrong on the windows where the
    object crosses an edge. On ordinary clips both readings agree."""
    combos = combinations()[::3]
    wrapping = [render_clip(*c, seed=i, frames=49, paths="wrap") for i, c in enumerate(combos)]
    windows = [(clip[a:a + 17], c) for clip, c in zip(wrapping, combos) for a in (0, 16, 32)]
    hits = [detect(v, wrap=True).matches(*c) for v, c in windows]
    assert all(h["all"] for h in hits), [c for (_, c), h in zip(windows, hits) if not h["all"]]
    plain = [detect(v).matches(*c)["motion"] for v, c in windows]
    assert sum(plain) < 0.9 * len(windows)
    ordinary = [render_clip(*c, seed=100 + i) for i, c in enumerate(combos)]
    assert [detect(v, wrap=True).to_dict()["motion"] for v in ordinary] == [detect(v).motion for v in ordinary]


def test_background_fit_ignores_an_object_on_the_border():
    clip = render_clip("white", "square", "still", seed=0)
    gradient = torch.linspace(0.2, 0.4, 64)[None, :, None].expand(64, 64, 3)  # [H, W, 3]
    frame = gradient.clone()
    frame[:20, :20] = torch.tensor(COLOURS["yellow"])  # in the corner, over the border ring
    background = fit_background(torch.stack([frame, clip[0]]))
    assert (background[0] - gradient).abs().max() < 1e-4


def test_no_object_and_single_frames():
    flat = torch.full((5, 64, 64, 3), 0.3)
    assert detect(flat) == Detection(None, None, None, contrast=0.0)
    noise = 0.3 + 0.02 * torch.randn(5, 64, 64, 3)  # camera noise is not an object
    assert detect(noise).colour is None
    still = detect(render_clip("purple", "triangle", "left", seed=1)[0])
    assert (still.colour, still.shape, still.motion) == ("purple", "triangle", None)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        detect(torch.zeros(5, 3, 64, 64))


def test_decision_rules():
    assert motion_from_displacement((0.05, -0.04)) == "still"
    assert motion_from_displacement((0.3, -0.1)) == "right"
    assert motion_from_displacement((-0.3, 0.1)) == "left"
    assert motion_from_displacement((0.1, -0.3)) == "up"
    assert motion_from_displacement((-0.1, 0.3)) == "down"
    assert classify_shape(0.55, -0.56) == "triangle"
    assert classify_shape(0.79, 0.0) == "circle"
    assert classify_shape(0.99, 0.0) == "square"
    d = Detection("red", "circle", "left")
    assert d.matches("red", "circle", "left") == {"colour": True, "shape": True, "motion": True, "all": True}
    assert d.matches("red", "square", "left") == {"colour": True, "shape": False, "motion": True, "all": False}
