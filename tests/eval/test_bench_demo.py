"""The demo dimensions on the synthetic dataset's own files (written by make_dataset, decoded with PyAV) with their
captions as prompts: the right prompt scores 1 on all three, a prompt naming another colour, shape or direction
scores 0 on that attribute alone, and prompts outside the dataset's vocabulary are not applicable."""

from __future__ import annotations

import av
import numpy as np
import pytest

import openwan.eval.bench.demo as demo
from openwan.data.manifest import read_manifest
from openwan.data.synthetic import COLOURS, SHAPE_NOUNS, canonical_caption, make_dataset, parse_caption
from openwan.eval.bench.base import Video
from openwan.eval.bench.demo import DemoColour, DemoMotion, DemoShape

pytestmark = pytest.mark.usefixtures("one_thread")
DIMS = (DemoColour(), DemoShape(), DemoMotion())
OTHER_MOTION = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "left"}


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """(uint8 frames, caption, (colour, shape, motion)) of 12 dataset clips, both splits."""
    folder = tmp_path_factory.mktemp("shapes")
    records = read_manifest(make_dataset(folder / "train", 8, seed=5))
    records += read_manifest(make_dataset(folder / "heldout", 4, seed=5, split="heldout"))
    return [(_decode(r.path), r.caption, parse_caption(r.caption)) for r in records]


def _scores(frames, prompt, name):
    video = Video(frames, 16.0, prompt=prompt, id=name)
    return [d.score(video) for d in DIMS]


def test_the_right_prompt_scores_one(clips):
    seen = [set(attrs) for attrs in zip(*(a for _, _, a in clips))]
    assert len(seen[0]) >= 4 and len(seen[1]) == 3 and len(seen[2]) >= 4, seen  # most colours and motions, all shapes
    for i, (frames, caption, _) in enumerate(clips):
        scores = _scores(frames, caption, f"clip{i}")
        assert [s.value for s in scores] == [1.0, 1.0, 1.0], (caption, scores)
        assert scores[0].details["asked"] == scores[0].details["seen"]


def test_a_wrong_attribute_scores_zero_on_that_attribute_alone(clips):
    colours = list(COLOURS)
    for i, (frames, _, (colour, shape, motion)) in enumerate(clips):
        wrong = (colours[(colours.index(colour) + 1) % len(colours)], shape, motion)
        other_shape = next(s for s in SHAPE_NOUNS if s != shape)
        for k, attrs in enumerate([wrong, (colour, other_shape, motion), (colour, shape, OTHER_MOTION[motion])]):
            values = [s.value for s in _scores(frames, canonical_caption(*attrs), f"clip{i}")]
            expected = [1.0, 1.0, 1.0]
            expected[k] = 0.0
            assert values == expected, (attrs, (colour, shape, motion), values)


def test_one_detection_per_video(clips):
    frames = clips[0][0]
    demo._DETECTIONS.clear()
    _scores(frames, clips[0][1], "shared")
    assert len(demo._DETECTIONS) == 1
    _scores(frames[::-1].copy(), clips[0][1], "shared")  # same id, other frames: detected again
    assert len(demo._DETECTIONS) == 2


def test_prompts_outside_the_vocabulary_are_not_applicable(clips):
    frames = clips[0][0]
    for prompt in ("a cat sleeping on a sofa", "a red ball and a blue box moving left", None):
        for score in _scores(frames, prompt, "other"):
            assert score.value is None and score.not_applicable, (prompt, score)
    motion = DemoMotion().score(Video(frames[:1], 16.0, prompt=clips[0][1]))
    assert motion.value is None and "single frame" in motion.not_applicable
