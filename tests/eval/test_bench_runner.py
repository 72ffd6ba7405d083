"""The bench's run on real footage: inputs and prompts found, each video decoded once and scored, failures recorded,
"not measured" reported, the aggregate's weights renormalised, and a re-run scoring only what is missing."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from curate.footage import corrupt_copy, footage, garbage, write_video
from openwan.data.manifest import ClipRecord, write_manifest
from openwan.eval.bench.base import Dimension, Score, Video
from openwan.eval.bench.registry import DIMENSIONS
from openwan.eval.bench.runner import (
    AGGREGATE_WEIGHTS,
    DecodeOptions,
    aggregate,
    decode,
    find_videos,
    run_bench,
    score_videos,
)

SIZE = (64, 36)
CLIPS = {"bunny": ("bikes", 150), "bikes": ("bikes", 0), "carphone": ("carphone", 0)}  # name: (footage, start)
CALLS: Counter = Counter()  # (dimension, video id) -> times scored


class Brightness(Dimension):
    """The frames' mean level in [0, 1]: a measure the test can compute from the footage itself."""

    name = "brightness"

    def score(self, video: Video) -> Score:
        CALLS[self.name, video.id] += 1
        level = float(video.frames.mean()) / 255
        return Score(level, {"mean_level_0_255": np.float32(level * 255), "frames": video.frames.shape[0]})


class SaysBunny(Dimension):
    """1 when the prompt names a bunny, 0 when it does not; not applicable without a prompt."""

    name = "says_bunny"
    needs = ("prompt",)

    def score(self, video: Video) -> Score:
        CALLS[self.name, video.id] += 1
        if video.prompt is None:
            return Score(None, not_applicable="no prompt")
        return Score(float("bunny" in video.prompt))


class Uninstalled(Dimension):
    name = "uninstalled"

    def available(self) -> str | None:
        return "not measured: pip install a-package-that-is-not-here"

    def score(self, video: Video) -> Score:
        raise AssertionError("an unavailable dimension is never scored")


class FailsOnBikes(Dimension):
    name = "fails_on_bikes"

    def score(self, video: Video) -> Score:
        CALLS[self.name, video.id] += 1
        if video.id == "bikes":
            raise RuntimeError("this dimension cannot judge bikes")
        return Score(0.5, {"nan_measure": float("nan")})


class BrokenWeights(Dimension):
    """Its weights fail to load: set up once, then not measured with the loader's error."""

    name = "broken_weights"

    def setup(self) -> None:
        CALLS[self.name, "setup"] += 1
        raise OSError("weights.pth is truncated")

    def score(self, video: Video) -> Score:
        raise AssertionError("a dimension that could not load is never scored")


def dims() -> list[Dimension]:
    return [Brightness(), SaysBunny(), Uninstalled(), FailsOnBikes()]


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()


@pytest.fixture
def folder(tmp_path):
    """Three real clips ("bunny" and bikes with a sidecar prompt, carphone without), a truncated mp4 and garbage."""
    src = tmp_path / "videos"
    for name, (source, start) in CLIPS.items():
        write_video(footage(source, start, 12, SIZE), src / f"{name}.mp4", fps=25)
    (src / "bunny.txt").write_text("a bunny wakes up in a forest\n")
    (src / "bikes.txt").write_text("cyclists ride past a wall\n")
    corrupt_copy(src / "bunny.mp4", src / "cut.mp4", keep=0.3)
    garbage(src / "noise.webm")
    (src / "notes.md").write_text("not a video")
    return src


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_scores_records_failures_and_says_what_was_not_measured(folder, tmp_path):
    out = tmp_path / "bench"
    summary = run_bench(folder, out, dimensions=dims())
    rows = {r["id"]: r for r in _jsonl(out / "scores.jsonl")}
    assert sorted(rows) == ["bikes", "bunny", "carphone"]  # notes.md is no video; the two broken files are skipped
    assert rows["bunny"]["prompt"] == "a bunny wakes up in a forest" and rows["carphone"]["prompt"] is None
    for name, (source, start) in CLIPS.items():  # decoded from the file: the footage's level within coding error
        level = footage(source, start, 12, SIZE).mean() / 255
        assert rows[name]["scores"]["brightness"]["value"] == pytest.approx(level, abs=2 / 255)
        assert rows[name]["scores"]["brightness"]["details"]["frames"] == 12
    assert rows["bunny"]["scores"]["says_bunny"] == {"value": 1.0}
    assert rows["bikes"]["scores"]["says_bunny"] == {"value": 0.0}
    assert rows["carphone"]["scores"]["says_bunny"] == {"value": None, "not_applicable": "no prompt"}
    assert rows["bunny"]["scores"]["fails_on_bikes"]["details"] == {"nan_measure": None}  # NaN written as null
    assert "cannot judge bikes" in rows["bikes"]["scores"]["fails_on_bikes"]["error"]

    errors = _jsonl(out / "errors.jsonl")
    assert {(e["id"], e["dimension"]) for e in errors} == {("cut", None), ("noise", None), ("bikes", "fails_on_bikes")}
    assert all(e["error"] for e in errors)

    per = summary["dimensions"]
    assert per["brightness"]["count"] == 3 and per["brightness"]["mean"] == pytest.approx(
        np.mean([rows[n]["scores"]["brightness"]["value"] for n in rows]))
    assert per["says_bunny"].items() >= {"count": 2, "not_applicable": 1, "mean": 0.5}.items()
    reason = "not measured: pip install a-package-that-is-not-here"
    assert per["uninstalled"].items() >= {"count": 0, "mean": None, "not_measured": 3,
                                          "not_measured_reason": reason}.items()
    assert per["fails_on_bikes"].items() >= {"count": 2, "errors": 1, "mean": 0.5}.items()
    assert summary["videos"] == 3 and summary["videos_failed"] == 2
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["aggregate"]["value"] is None  # none of these test dimensions has an aggregate weight
    assert summary["aggregate"]["left_out"]["uninstalled"] == "not measured on any video"


def test_a_rerun_scores_only_what_is_missing(folder, tmp_path):
    out = tmp_path / "bench"
    run_bench(folder, out, dimensions=dims())
    first = (out / "scores.jsonl").read_text()
    CALLS.clear()
    again = run_bench(folder, out, dimensions=dims())
    # Only the (bikes, fails_on_bikes) error is tried again; nothing else is decoded or scored.
    assert CALLS == Counter({("fails_on_bikes", "bikes"): 1}) and again["videos_reused"] == 2
    assert (out / "scores.jsonl").read_text() == first

    CALLS.clear()
    write_video(footage("bikes", 50, 12, SIZE), folder / "more.mp4")
    (folder / "bunny.txt").write_text("a squirrel in a forest\n")  # a new prompt: bunny is scored again
    run_bench(folder, out, dimensions=[Brightness(), SaysBunny()])
    assert set(CALLS) == {("brightness", "more"), ("says_bunny", "more"), ("brightness", "bunny"),
                          ("says_bunny", "bunny")}
    rows = {r["id"]: r for r in _jsonl(out / "scores.jsonl")}
    assert rows["bunny"]["scores"]["says_bunny"]["value"] == 0.0 and set(rows["bunny"]["scores"]) == {
        "brightness", "says_bunny"}

    CALLS.clear()
    run_bench(folder, out, dimensions=[Brightness(), SaysBunny()], resume=False)
    assert len(CALLS) == 2 * 4


def test_decoding_caps_and_resamples_frames(folder):
    source = find_videos(folder / "bunny.mp4")[0]
    assert decode(source).frames.shape == (12, 36, 64, 3) and decode(source).fps == 25
    assert decode(source, DecodeOptions(max_frames=5)).frames.shape[0] == 5
    half = decode(source, DecodeOptions(fps=12.5))
    assert half.fps == 12.5 and half.frames.shape[0] == 6
    with pytest.raises(ValueError, match="max_frames"):
        DecodeOptions(max_frames=1)


def test_a_gif_is_a_video(tmp_path):
    frames = footage("carphone", 0, 6, (48, 32))
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp_path / "loop.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    video = decode(find_videos(tmp_path)[0])
    assert video.id == "loop" and video.fps == 10 and video.frames.shape == (6, 32, 48, 3)
    assert np.abs(video.frames.astype(float) - frames).mean() < 12  # a 256-colour palette, not another picture


def test_prompts_come_from_a_file_matched_to_the_videos(folder, tmp_path):
    good = [folder / f"{n}.mp4" for n in ("carphone", "bunny", "bikes")]
    lines = tmp_path / "prompts.txt"
    lines.write_text("one\n\ntwo\nthree\n")  # matched to the videos sorted by path: bikes, bunny, carphone
    assert {v.id: v.prompt for v in find_videos(good, lines)} == {"bikes": "one", "bunny": "two", "carphone": "three"}
    mapping = tmp_path / "prompts.json"
    mapping.write_text(json.dumps({"bunny.mp4": "a rabbit", "bikes": "bicycles", "carphone": "a call", "cut": "x",
                                   "noise.webm": "y", "unused": "z"}))
    assert {v.id: v.prompt for v in find_videos(folder, mapping)}["bunny"] == "a rabbit"
    rows = tmp_path / "prompts.jsonl"
    rows.write_text("\n".join(json.dumps({"video": p.name, "prompt": p.stem.upper()}) for p in good))
    with pytest.raises(ValueError, match="no prompt for 2 of 5 videos"):  # cut.mp4 and noise.webm have none
        find_videos(folder, rows)
    assert [v.prompt for v in find_videos(str(folder / "b*.mp4"), rows)] == ["BIKES", "BUNNY"]
    lines.write_text("only one\n")
    with pytest.raises(ValueError, match="1 prompts for 5 videos"):
        find_videos(folder, lines)
    (tmp_path / "prompts.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="name it .txt"):
        find_videos(folder, tmp_path / "prompts.csv")


def test_prompts_file_lines_follow_the_sorted_videos(folder, tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("p-bikes\np-bunny\np-carphone\np-cut\np-noise\n")
    found = {v.id: v.prompt for v in find_videos(str(folder / "*"), lines)}
    assert found == {"bikes": "p-bikes", "bunny": "p-bunny", "carphone": "p-carphone", "cut": "p-cut",
                     "noise": "p-noise"}


def test_a_manifest_gives_captions_clip_bounds_and_crops(folder, tmp_path):
    records = [ClipRecord("videos/bunny.mp4", "a bunny", 12, 25.0, 64, 36, id="whole"),
               ClipRecord("videos/bunny.mp4", "a bunny, later", 12, 25.0, 64, 36, start=0.2, end=0.4,
                          crop=(8, 4, 40, 28), id="part")]
    manifest = write_manifest(records, tmp_path / "manifest.jsonl")
    summary = run_bench(manifest, tmp_path / "bench", dimensions=[Brightness(), SaysBunny()])
    rows = {r["id"]: r for r in _jsonl(tmp_path / "bench" / "scores.jsonl")}
    assert rows["part"]["prompt"] == "a bunny, later" and summary["dimensions"]["says_bunny"]["mean"] == 1.0
    part = decode(find_videos(manifest)[1])
    assert part.frames.shape == (5, 24, 32, 3)  # frames 5..9 of 25 fps, cut to the crop


def test_bad_inputs_are_refused_before_any_decoding(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos found"):
        run_bench(tmp_path / "empty", tmp_path / "out", dimensions=dims())
    with pytest.raises(ValueError, match="no videos match"):
        run_bench(str(tmp_path / "*.mp4"), tmp_path / "out", dimensions=dims())
    with pytest.raises(ValueError, match="unknown bench dimension 'sharpnes'"):
        run_bench(tmp_path / "empty", tmp_path / "out", dimensions=["sharpnes"])
    with pytest.raises(ValueError, match="does not exist"):
        find_videos(tmp_path / "missing.mp4")
    assert not (tmp_path / "out").exists()


def test_score_videos_takes_videos_in_memory():
    rng = np.random.default_rng(0)
    bright = Video(np.full((4, 8, 8, 3), 200, np.uint8), fps=16, prompt="a bunny", id="bright")
    noise = Video(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), fps=16, id="noise")
    rows = score_videos([bright, noise], [Brightness(), SaysBunny(), Uninstalled()])
    assert [r["id"] for r in rows] == ["bright", "noise"]
    assert rows[0]["scores"]["brightness"]["value"] == pytest.approx(200 / 255)
    assert rows[0]["scores"]["says_bunny"] == {"value": 1.0}
    assert rows[1]["scores"]["uninstalled"]["not_measured"].startswith("not measured: pip install")


def test_the_aggregate_renormalises_over_measured_dimensions():
    means = {"temporal_flickering": 0.8, "dynamic_degree": 0.4, "prompt_alignment": None, "camera_motion": 0.5,
             "brightness": 0.9}
    agg = aggregate(means)
    quality = (1.0 * 0.8 + 0.5 * 0.4) / 1.5
    assert agg["groups"] == pytest.approx({"quality": quality, "semantic": 0.5})
    assert agg["value"] == pytest.approx((4 * quality + 1 * 0.5) / 5)
    assert agg["weights"] == pytest.approx({"temporal_flickering": 0.8 / 1.5, "dynamic_degree": 0.4 / 1.5,
                                            "camera_motion": 0.2})
    assert sum(agg["weights"].values()) == pytest.approx(1.0)
    assert agg["entered"] == ["camera_motion", "dynamic_degree", "temporal_flickering"]
    assert agg["left_out"] == {"prompt_alignment": "not measured on any video", "brightness": "has no aggregate weight"}
    only_quality = aggregate({"temporal_flickering": 0.8, "dynamic_degree": 0.4})
    assert only_quality["value"] == pytest.approx(quality)  # the semantic group's share goes to quality
    assert aggregate({"prompt_alignment": None})["value"] is None
    assert set(AGGREGATE_WEIGHTS) <= set(DIMENSIONS)  # every weight names a registered dimension


def test_a_dimension_that_cannot_load_is_not_measured_and_tried_once(folder, tmp_path):
    summary = run_bench(folder, tmp_path / "bench", dimensions=[Brightness(), BrokenWeights()])
    assert CALLS["broken_weights", "setup"] == 1
    part = summary["dimensions"]["broken_weights"]
    assert part["not_measured"] == 3 and part["count"] == 0
    assert part["not_measured_reason"] == ("not measured: broken_weights could not load (OSError: weights.pth is "
                                           "truncated)")
    errors = _jsonl(tmp_path / "bench" / "errors.jsonl")
    assert [e for e in errors if e["dimension"] == "broken_weights"] == [
        {"id": None, "path": None, "dimension": "broken_weights", "error": "OSError: weights.pth is truncated"}]
    assert summary["dimensions"]["brightness"]["count"] == 3


def test_an_interrupted_run_keeps_what_it_and_earlier_runs_scored(folder, tmp_path, monkeypatch):
    from openwan.eval.bench import runner

    class StopsAtBunny(Dimension):
        name = "stops_at_bunny"
        stop = True

        def score(self, video: Video) -> Score:
            CALLS[self.name, video.id] += 1
            if video.id == "bunny" and self.stop:
                raise KeyboardInterrupt
            return Score(1.0)

    out = tmp_path / "bench"
    run_bench(folder, out, dimensions=[Brightness()])
    monkeypatch.setattr(runner, "CHECKPOINT_S", 0.0)  # rewrite scores.jsonl after every video
    with pytest.raises(KeyboardInterrupt):
        run_bench(folder, out, dimensions=[Brightness(), StopsAtBunny()])
    rows = {r["id"]: r for r in _jsonl(out / "scores.jsonl")}
    assert sorted(rows) == ["bikes", "bunny", "carphone"]  # the videos after the interruption keep their scores
    assert set(rows["bikes"]["scores"]) == {"brightness", "stops_at_bunny"} and set(rows["bunny"]["scores"]) == {
        "brightness"}
    CALLS.clear()
    StopsAtBunny.stop = False
    run_bench(folder, out, dimensions=[Brightness(), StopsAtBunny()])
    assert CALLS == Counter({("stops_at_bunny", "bunny"): 1, ("stops_at_bunny", "carphone"): 1})
