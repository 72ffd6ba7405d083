"""Measuring a long stream (openwan.eval.stream_drift): the report's buckets and clips on the bundled model, the
clips judged against the prompt in force and the switch latency recomputed from the frames, object counting on
drawn frames (one disc, two discs, a disc fading into the background or shrinking), and `openwan eval stream`."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from openwan.cli.eval_stream import parse_span
from openwan.cli.main import main
from openwan.data.synthetic import COLOURS, render_layout, sample_layout
from openwan.eval.detector import detect
from openwan.eval.stream_clips import count_objects, measure_clip, summarize_bucket
from openwan.eval.stream_drift import drift_table, measure_stream, summary_lines
from openwan.pipelines import WanPipeline
from openwan.pipelines.components import BUNDLED
from openwan.pipelines.stream import PromptSchedule, StreamConfig

RED, BLUE = "a red circle moving to the right", "a blue circle moving to the right"
FAST = StreamConfig(window=3, steps_per_shift=2, transition=1)  # the bundled model's frames, few DiT calls
FAST_FLAGS = ["--window", "3", "--steps-per-shift", "2"]


@pytest.fixture(scope="module")
def demo(one_thread):
    return WanPipeline.from_pretrained(BUNDLED, device="cpu")


@pytest.fixture(scope="module")
def measured(demo, tmp_path_factory):
    """3.5 s of red, then blue from 1.5 s, judged in 8-frame clips per 1 s bucket; every frame kept aside."""
    chunks, out = [], tmp_path_factory.mktemp("drift")
    report = measure_stream(demo, PromptSchedule.of(RED, [(1.5, BLUE)]), FAST, seconds=3.5, clip_frames=8,
                            bucket_seconds=1.0, on_frames=chunks.append, out_dir=out)
    return report, torch.cat(chunks), out


def test_buckets_and_clips_cover_the_stream(measured):
    """56 frames in 16-frame buckets: 4 buckets (the last half full) of 8-frame clips; the report on disk is the
    one returned; shares are shares of the judged clips."""
    report, video, out = measured
    assert video.shape == (56, 64, 64, 3)
    assert [b["clips"] for b in report["buckets"]] == [2, 2, 2, 1]
    assert [c["start_s"] for c in report["clips"]] == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    assert [(b["start_s"], b["end_s"]) for b in report["buckets"]] == [(0, 1), (1, 2), (2, 3), (3, 3.5)]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    for b, start in zip(report["buckets"], (0, 2, 4, 6)):
        rows = report["clips"][start:start + b["clips"]]
        judged = [r for r in rows if r["status"] == "judged"]
        assert b["judged"] + b["in_transition"] + b["no_target"] == b["clips"]
        for k in ("colour", "shape", "motion", "all"):
            share = b["agreement"][k]
            assert share is None if not judged else share == pytest.approx(
                sum(r["match"][k] for r in judged) / len(judged))
            assert share is None or 0 <= share <= 1
        for name, dim in b["bench"].items():
            assert dim["value"] is None or 0 <= dim["value"] <= 1, name
    assert report["speed"]["frames"] >= 56 and report["speed"]["dit_evaluations"] > 0
    assert report["buckets"][0]["agreement"]["colour"] == 1.0  # red from the start: a real picture is judged
    table = drift_table(report)
    assert len(table.splitlines()) == 2 + 4 and "| flicker |" in table
    assert any(line.startswith("switch at 1.50 s") for line in summary_lines(report))


def test_clips_are_judged_against_the_prompt_in_force(measured):
    """The switch at 1.5 s (frame 24) fades over latent frame 6 (video frames 21-24) with transition 1: the clips
    holding those frames are not judged; before, red is the target; after, blue. Each clip's detection is the
    detector's on those very frames."""
    report, video, _ = measured
    rows = report["clips"]
    assert [r["status"] for r in rows] == ["judged", "judged", "transition", "transition", "judged", "judged",
                                           "judged"]
    assert [r["prompt"] for r in rows] == [0, 0, None, None, 1, 1, 1]
    for r in rows:
        start = round(r["start_s"] * 16)
        seen = detect(video[start:start + 8])
        assert r["detected"] == {"colour": seen.colour, "shape": seen.shape, "motion": seen.motion}
        if r["prompt"] is not None:
            assert r["match"] == seen.matches(*(("red",) if r["prompt"] == 0 else ("blue",)), "circle", "right")


def test_switch_latency_agrees_with_the_detections(measured):
    """Recomputed by brute force from the frames: the first window start s >= 24 such that every 8-frame window
    starting in s .. s + 16 - 8 shows blue (the prompts differ only in colour), within the 56 frames."""
    report, video, _ = measured
    switch = report["switches"][0]
    assert switch["compared"] == ["colour"] and switch["frame"] == 24
    check_switch(switch, video, end=56, target={"colour": "blue"})


def check_switch(switch: dict, video: torch.Tensor, end: int, target: dict, window: int = 8, hold: int = 16):
    """``switch``'s latency against a brute-force search of the frames: the first window start s at or after the
    switch's frame such that every window starting in s .. s + hold - window shows ``target``, all before ``end``."""
    frame = switch["frame"]

    @functools.cache
    def shows(s):
        seen = detect(video[s:s + window])
        return all(getattr(seen, k) == v for k, v in target.items())

    def latency(reads):
        held = [s for s in range(frame, end - hold + 1) if all(reads(u) for u in range(s, s + hold - window + 1))]
        return None if not held else (held[0] - frame) / 16

    expected = latency(shows)
    assert switch["latency_s"] == expected
    for key, value in target.items():  # each attribute read and held alone
        assert switch["latency_by_attribute_s"][key] == latency(lambda s, k=key, v=value: getattr(
            detect(video[s:s + window]), k) == v)
    assert list(switch["latency_by_attribute_s"]) == list(target)
    assert (switch["status"] == "followed") == (expected is not None)
    firsts = [s for s in range(frame, end - window + 1) if shows(s)]
    assert switch["first_match_s"] == (None if not firsts else (firsts[0] - frame) / 16)
    return expected


@pytest.mark.slow
def test_two_switches_on_the_default_stream(demo):
    """The bundled model's own stream settings, red -> blue (colour) at 2 s -> blue square (colour and shape) at
    4 s, 6 s of video: each latency is the brute-force one; the first switch's windows end where the second one's
    fade begins (frame 64 lies in latent frame 16, whose video frames start at 61)."""
    chunks = []
    schedule = PromptSchedule.of(RED, [(2.0, BLUE), (4.0, "a blue square moving to the right")])
    report = measure_stream(demo, schedule, seconds=6, clip_frames=17, bucket_seconds=2, on_frames=chunks.append)
    video = torch.cat(chunks)
    first, second = report["switches"]
    assert first["compared"] == ["colour"] and second["compared"] == ["colour", "shape"]
    check_switch(first, video, end=61, target={"colour": "blue"})
    check_switch(second, video, end=96, target={"colour": "blue", "shape": "square"})
    assert [b["clips"] for b in report["buckets"]] == [1, 1, 1]


def test_refuses_bad_settings_before_streaming(demo):
    schedule = PromptSchedule.of(RED)
    for bad, word in (({"seconds": 0}, "seconds"), ({"seconds": 1, "clip_frames": 2}, "clip_frames"),
                      ({"seconds": 1, "bucket_seconds": math.inf}, "bucket_seconds"),
                      ({"seconds": 1, "save_video": "x.avi"}, "mp4")):
        with pytest.raises(ValueError, match=word):
            measure_stream(demo, schedule, FAST, **bad)


# ------------------------------------------------------------------------------------------ drawn frames


def draw(discs, frames: int = 17, size: int = 64) -> torch.Tensor:
    """A grey gradient background with ``discs``: (colour, radius px, x0, y0, dx px/frame, alpha per frame or a
    number) each; [T, size, size, 3] in [0, 1]."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    base = (0.35 + 0.15 * x / size)[..., None].expand(size, size, 3)
    video = base.expand(frames, size, size, 3).clone()
    for colour, radius, x0, y0, dx, alpha in discs:
        alphas = [alpha] * frames if isinstance(alpha, (int, float)) else list(alpha)
        for t in range(frames):
            cover = ((x - x0 - dx * t) ** 2 + (y - y0) ** 2).sqrt().sub(radius).neg().add(0.5).clamp(0, 1)  # AA edge
            a = (alphas[t] * cover)[..., None]
            video[t] = (1 - a) * video[t] + a * torch.tensor(COLOURS[colour])
    return video


def test_counts_one_disc_two_discs_and_none():
    assert count_objects(draw([("red", 7, 20, 32, 1.0, 1.0)]))["objects"] == 1
    two = count_objects(draw([("red", 7, 16, 20, 1.0, 1.0), ("red", 6, 20, 46, 0.5, 1.0)]))
    assert two["objects"] == 2 and two["per_frame"] == [2] * 17
    assert count_objects(draw([("blue", 7, 16, 20, 0, 1.0), ("yellow", 7, 44, 44, 0, 1.0)]))["objects"] == 2
    assert count_objects(draw([]))["objects"] == 0  # the gradient alone is background


def test_a_fading_disc_loses_contrast_and_a_shrinking_one_area():
    """Clips of a red disc at falling opacity: the contrast falls with it (and the bucket summary's contrast
    relative to the first clip), the count stays one until the disc is gone; a smaller disc has less area."""
    fades = [1.0, 0.7, 0.45, 0.25, 0.02]
    counts = [count_objects(draw([("red", 7, 20, 32, 1.0, a)])) for a in fades]
    contrasts = [c["contrast"] for c in counts]
    assert all(a > b for a, b in zip(contrasts, contrasts[1:])), contrasts
    assert [c["objects"] for c in counts] == [1, 1, 1, 1, 0]
    rows = [measure_clip(draw([("red", 7, 20, 32, 1.0, a)]), fps=16, target=("red", "circle", "right"))
            for a in fades[:3]]
    assert all(r["match"]["all"] for r in rows[:2])
    first = summarize_bucket(rows[:1])
    faded = summarize_bucket(rows[2:], reference=first)
    assert faded["identity"]["contrast_rel"] < 0.7 and faded["identity"]["one_object"] == 1.0
    areas = [count_objects(draw([("red", r, 30, 32, 0.5, 1.0)]))["area"] for r in (9, 7, 5)]
    assert areas[0] > areas[1] > areas[2]
    shrunk = summarize_bucket([measure_clip(draw([("red", 5, 30, 32, 0.5, 1.0)]), fps=16, target=None)],
                              reference=summarize_bucket([measure_clip(draw([("red", 9, 30, 32, 0.5, 1.0)]),
                                                                       fps=16, target=None)]))
    assert shrunk["identity"]["area_rel"] < 0.5 and shrunk["judged"] == 0


def test_a_disc_that_splits_is_counted_as_two_within_the_clip():
    """One disc for the first half of the clip, two after: the per-frame counts say so; a bucket of such clips
    shows no clip with exactly one object."""
    clip = draw([("green", 7, 20, 32, 0.0, 1.0), ("green", 7, 46, 32, 0.0, [0.0] * 6 + [1.0] * 11)])
    counted = count_objects(clip)
    assert counted["per_frame"] == [1] * 6 + [2] * 11 and counted["objects"] == 2
    row = measure_clip(clip, fps=16, target=("green", "circle", "still"))
    assert summarize_bucket([row])["identity"]["one_object"] == 0.0


def test_an_object_wrapping_around_the_edges_counts_once_on_the_torus():
    """A 49-frame clip whose square leaves by the right edge and comes back by the left (data synth --paths wrap):
    split over the edges in some frames, it counts as two (four across a corner) there on the plain frame and as one
    on the torus, where the clip's row also reads its motion right."""
    layouts = [sample_layout("yellow", "square", "right", seed, frames=49, paths="wrap") for seed in range(20)]
    layout = next(lay for lay in layouts if any(lay.centre(t)[0] < 4 for t in range(49)))
    clip = render_layout(layout)
    plain, torus = count_objects(clip), count_objects(clip, wrap=True)
    assert max(plain["per_frame"]) >= 2 and torus["per_frame"] == [1] * 49
    row = measure_clip(clip, fps=16, target=("yellow", "square", "right"), wrap=True)
    assert row["objects"] == 1 and row["match"]["all"]


# ------------------------------------------------------------------------------------------ command line


def test_cli_writes_the_report(tmp_path, capsys, one_thread):
    code = main(["eval", "stream", "--prompt", RED, "--duration", "1s", "--bucket", "1s", "--clip-frames", "8",
                 *FAST_FLAGS, "--threads", "1", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["buckets"]) == 1 and report["buckets"][0]["clips"] == 2
    assert report["settings"]["window"] == 3 and report["settings"]["frames"] == 16
    out = capsys.readouterr().out
    assert "| colour |" in out and "speed: first frame after" in out


@pytest.mark.parametrize("args", [["--duration", "10x"], ["--duration", "0s"],
                                  ["--duration", "2s", "--bucket", "0f"], ["--duration", "2s", "--then", "1s", ""],
                                  ["--duration", "2s", "--save-file", "a.avi"], ["--duration", "2s", "--threads", "0"]])
def test_cli_refuses_bad_input_in_one_line(args, capsys):
    code = main(["eval", "stream", "--prompt", RED, "--ckpt-dir", "/nonexistent", *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error:" in err  # refused before any load


def test_times_read_minutes_too():
    assert parse_span("10m", "--duration", 16) == 9600
    assert parse_span("1.5m", "--duration", 16) == 1440
    assert parse_span("30s", "--duration", 16) == 480 and parse_span("480f", "--duration", 16) == 480
