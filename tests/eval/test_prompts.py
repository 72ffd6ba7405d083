"""Prompt-following evaluation: scoring with stand-in generators, and `openwan eval prompts` end to end."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image

from openwan.checkpoints.release import save_release
from openwan.cli import eval as eval_cmd
from openwan.data.synthetic import heldout_prompts, parse_caption, render_clip
from openwan.data.video import probe_video
from openwan.eval.prompts import TARGETS, evaluate_prompts, summarize
from openwan.pipelines import WanOutput
from openwan.pipelines.defaults import FAMILY_DEFAULTS
from tiny import tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")


class RenderingPipe:
    """Stands in for a model: renders what the prompt asks for (``motion`` overrides the motion)."""

    defaults = FAMILY_DEFAULTS["tiny"]

    def __init__(self, motion: str | None = None):
        self.motion = motion
        self.calls = []

    def __call__(self, prompt, negative_prompt=None, *, task, size, frame_num, seed, **kwargs):
        self.calls.append((prompt, seed, task, size, frame_num))
        colour, shape, motion = parse_caption(prompt)
        video = render_clip(colour, shape, self.motion or motion, seed=seed, frames=frame_num or 17)
        return WanOutput(video=video, latents=torch.zeros(1))


def test_a_generator_that_follows_prompts_scores_one(tmp_path):
    pipe = RenderingPipe()
    report = evaluate_prompts(pipe, tmp_path, seeds=[0, 1], save_videos=False, progress=False)
    assert len(pipe.calls) == 2 * len(heldout_prompts()) and {c[2] for c in pipe.calls} == {"t2v"}
    assert report["accuracy"] == {"colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0}
    assert all(v == 1.0 for by in report["accuracy_by_target"].values() for v in by.values())
    assert report["meets_targets"] == {k: True for k in TARGETS}
    assert report["settings"]["sample_steps"] == FAMILY_DEFAULTS["tiny"].sample_steps  # defaults are recorded
    assert json.loads((tmp_path / "report.json").read_text()) == report
    with Image.open(tmp_path / "samples.png") as grid:
        assert grid.width >= 2 * 3 * 96 and grid.height >= len(heldout_prompts()) * 96


def test_a_generator_that_ignores_motion_scores_the_still_prompts_only(tmp_path):
    report = evaluate_prompts(RenderingPipe(motion="still"), tmp_path, seeds=[0], progress=False)
    targets = [parse_caption(p)[2] for p in heldout_prompts()]
    still = targets.count("still") / len(targets)
    assert report["accuracy"] == {"colour": 1.0, "shape": 1.0, "motion": still, "all": still}
    assert report["accuracy_by_target"]["motion"] == {m: float(m == "still") for m in set(targets)}
    assert report["meets_targets"]["motion"] is False
    assert probe_video(tmp_path / report["samples"][0]["video"])["frames"] == 17


def test_summarize():
    def sample(colour, shape, motion):
        return {"target": {"colour": "red", "shape": "circle", "motion": "left"},
                "match": {"colour": colour, "shape": shape, "motion": motion, "all": colour and shape and motion}}

    summary = summarize([sample(True, True, True), sample(True, False, True), sample(False, True, True),
                         sample(True, True, False)])
    assert summary["accuracy"] == {"colour": 0.75, "shape": 0.75, "motion": 0.75, "all": 0.25}
    assert summary["num_videos"] == 4 and summary["accuracy_by_target"]["motion"] == {"left": 0.75}


def test_unknown_prompt_is_a_user_error(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_prompts(RenderingPipe(), tmp_path, prompts=["a cat on a sofa"], progress=False)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    eval_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return args.run(args)


def test_cli_end_to_end_with_a_tiny_random_model(tmp_path, capsys):
    release = save_release(tmp_path / "release", **tiny_components("tiny"))
    out = tmp_path / "report"
    code = _cli("prompts", "--ckpt-dir", str(release), "--seeds", "0", "1", "--limit", "2", "--size", "32*32",
                "--frame-num", "5", "--sample-steps", "2", "--device", "cpu", "--out", str(out))
    assert code == 0 and "4 videos: colour" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"checkpoint", "settings", "prompts", "seeds", "num_videos", "accuracy",
                           "accuracy_by_target", "targets", "meets_targets", "files", "samples"}
    assert report["prompts"] == heldout_prompts()[:2] and report["seeds"] == [0, 1] and report["num_videos"] == 4
    assert report["settings"]["size"] == [32, 32] and report["settings"]["frame_num"] == 5
    assert set(report["accuracy"]) == {"colour", "shape", "motion", "all"}
    assert all(0.0 <= v <= 1.0 for v in report["accuracy"].values())
    for sample in report["samples"]:
        assert set(sample) >= {"prompt", "seed", "target", "detected", "match", "video"}
        assert set(sample["detected"]) >= {"colour", "shape", "motion", "rgb", "fill_ratio", "displacement"}
        assert probe_video(out / sample["video"]) == {"frames": 5, "fps": 16.0, "width": 32, "height": 32}
    with Image.open(out / report["files"]["grid"]) as grid:
        assert grid.size[0] > 2 * 3 * 96 and grid.size[1] > 2 * 96


def test_cli_judges_streams_with_the_frames_asked_for(tmp_path, capsys):
    """``--stream``: each video is frames offset .. offset + frame_num of the prompt's stream (the stream of the
    same seed, read directly, holds the same frames)."""
    from openwan.pipelines import WanPipeline
    from openwan.pipelines.stream import PromptSchedule, StreamConfig, VideoStream

    release = save_release(tmp_path / "release", **tiny_components("tiny"))
    out = tmp_path / "report"
    code = _cli("prompts", "--ckpt-dir", str(release), "--seeds", "3", "--limit", "1", "--size", "32*32",
                "--frame-num", "5", "--stream", "--window", "2", "--steps-per-shift", "1", "--stream-offset", "4",
                "--sample-guide-scale", "1", "--device", "cpu", "--out", str(out))
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["stream"]["window"] == 2 and report["settings"]["stream_offset"] == 4
    pipe = WanPipeline.from_pretrained(release, device="cpu")
    direct = VideoStream(pipe, PromptSchedule.of(heldout_prompts()[0]),
                         StreamConfig(window=2, steps_per_shift=1, guide_scale=1.0, seed=3, size=(32, 32))).read(9)
    detected = report["samples"][0]["detected"]
    from openwan.eval.detector import detect

    assert detected == detect(direct[4:], wrap=True).to_dict()  # streams are read on a torus
    with pytest.raises(ValueError, match="add --stream"):
        _cli("prompts", "--ckpt-dir", str(release), "--window", "2", "--out", str(out))
