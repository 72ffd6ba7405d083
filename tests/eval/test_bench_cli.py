"""`openwan eval bench` and `openwan eval bench-report` end to end on real footage with the real temporal dimensions:
one summary line per dimension, the report's files with embedded pictures, bad input refused with exit 2."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re

import pytest
from PIL import Image
from test_bench_semantic import clip_folder  # noqa: F401 - the small random CLIP folder fixture

from curate.footage import corrupt_copy, footage, write_video
from openwan.cli.main import main

DIMS = "temporal_flickering,motion_smoothness,dynamic_degree"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A still shot (a repeated frame), a moving street and a phone call, with sidecar prompts, and a broken file."""
    folder = tmp_path_factory.mktemp("bench") / "videos"
    still = footage("carphone", 0, 1, (64, 48)).repeat(16, axis=0)
    write_video(still, folder / "still.mp4", fps=25)
    write_video(footage("bikes", 0, 16, (64, 36)), folder / "street.mp4", fps=25)
    write_video(footage("carphone", 0, 16, (64, 48)), folder / "call.mp4", fps=25)
    for name, prompt in (("still", "a man on the phone, still"), ("street", "cyclists ride past"),
                         ("call", "a man on the phone")):
        (folder / f"{name}.txt").write_text(prompt + "\n")
    corrupt_copy(folder / "street.mp4", folder / "broken.mp4", keep=0.3)
    return folder


def _images(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_bench_scores_a_folder_and_writes_its_report(videos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "bench", str(videos), "--dimensions", DIMS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 videos scored (0 from an earlier run), 1 unreadable (errors.jsonl)" in printed
    for name in DIMS.split(","):
        assert re.search(rf"^  {name} +0\.\d{{4}}  \(3 measured\)$", printed, re.M), printed
    assert re.search(r"^  aggregate +0\.\d{4} over dynamic_degree, motion_smoothness, temporal_flickering$",
                     printed, re.M)
    summary = json.loads((out / "summary.json").read_text())
    rows = {json.loads(line)["id"]: json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()}
    assert sorted(rows) == ["call", "still", "street"] and rows["street"]["prompt"] == "cyclists ride past"
    # The still shot is the least dynamic video, and its frames do not flicker.
    degree = {k: r["scores"]["dynamic_degree"]["value"] for k, r in rows.items()}
    assert degree["still"] == min(degree.values())
    assert rows["still"]["scores"]["temporal_flickering"]["value"] >= max(
        r["scores"]["temporal_flickering"]["value"] for r in rows.values()) - 1e-9
    assert [json.loads(line)["id"] for line in (out / "errors.jsonl").read_text().splitlines()] == ["broken"]
    assert summary["aggregate"]["entered"] == sorted(DIMS.split(","))

    page = (out / "report.html").read_text()
    images = _images(page)
    assert len(images) == 1 + 2 * 3  # the chart, then the best and the worst video of each dimension
    assert images[0].size == Image.open(out / "report.png").size and images[0].width > 400
    assert all(im.height == 96 and im.width > 3 * 96 for im in images[1:])  # four frames side by side
    assert "<img" in page and "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere

    assert main(["eval", "bench", str(videos), "--dimensions", DIMS, "--out", str(out), "--no-report"]) == 0
    assert "3 videos scored (3 from an earlier run)" in capsys.readouterr().out


def test_bench_report_compares_runs(videos, tmp_path, capsys):
    first, second = tmp_path / "model-a", tmp_path / "model-b"
    assert main(["eval", "bench", str(videos / "call.mp4"), "--dimensions", DIMS, "--out", str(first),
                 "--no-report"]) == 0
    assert main(["eval", "bench", str(videos / "s*.mp4"), "--dimensions", DIMS, "--out", str(second),
                 "--no-report"]) == 0
    report = tmp_path / "compare" / "models.html"
    assert main(["eval", "bench-report", str(first), str(second), "--out", str(report), "--no-strips"]) == 0
    page = report.read_text()
    assert "model-a" in page and "model-b" in page and len(_images(page)) == 1
    assert (tmp_path / "compare" / "models.png").is_file()
    capsys.readouterr()


@pytest.mark.parametrize(("argv", "message"), [
    (["{empty}"], "no videos found in"),
    (["{videos}", "--dimensions", "temporal_flickering,sharpness"], "unknown bench dimension 'sharpness'"),
    (["{videos}", "--prompts", "{short}"], "has 1 prompts for 4 videos"),
    (["{videos}", "--max-frames", "1"], "max_frames must be at least 2"),
    ([], "give the videos to score"),
    (["--suite", "{short}"], "give the model with --ckpt-dir"),
    (["{videos}", "--suite", "{short}", "--ckpt-dir", "x"], "not both"),
    (["--suite", "vbench", "--ckpt-dir", "x"], "--suite vbench needs: pip install vbench"),
    (["--suite", "{short}", "--ckpt-dir", "x", "--prompts", "{short}"], "leave out --prompts"),
    (["{videos}", "--ckpt-dir", "x"], "--ckpt-dir belong to --suite"),
])
def test_bad_input_exits_2_with_one_sentence(videos, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "short.txt").write_text("one prompt\n")
    names = {"empty": tmp_path / "empty", "videos": videos, "short": tmp_path / "short.txt"}
    argv = [a.format(**names) for a in argv] + ["--out", str(tmp_path / "out")]
    if "--dimensions" not in argv:
        argv += ["--dimensions", DIMS]
    if "vbench" in argv and importlib.util.find_spec("vbench") is not None:
        pytest.skip("vbench is installed here")
    assert main(["eval", "bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_bench_report_refuses_a_folder_that_is_no_bench_run(tmp_path, capsys):
    assert main(["eval", "bench-report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "holds no summary.json" in capsys.readouterr().err
    assert main(["eval", "bench-report", str(tmp_path), "--out", str(tmp_path / "r.pdf")]) == 2
    assert "name the report .html" in capsys.readouterr().err


def test_a_dimension_without_its_weights_is_reported_not_measured(videos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "bench", str(videos / "call.mp4"), "--dimensions", "prompt_alignment,temporal_flickering",
                 "--out", str(out), "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^  prompt_alignment +not measured: give --clip", printed, re.M), printed
    summary = json.loads((out / "summary.json").read_text())
    part = summary["dimensions"]["prompt_alignment"]
    assert part["mean"] is None and part["count"] == 0 and part["not_measured"] == 1
    assert part["not_measured_reason"].startswith("not measured: give --clip")
    # The aggregate is the one measured dimension's mean, its weight renormalised to 1.
    agg = summary["aggregate"]
    assert agg["weights"] == {"temporal_flickering": 1.0} and agg["left_out"] == {
        "prompt_alignment": "not measured on any video"}
    assert agg["value"] == summary["dimensions"]["temporal_flickering"]["mean"]



def test_clip_weights_reach_the_clip_dimensions(videos, clip_folder, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert main(["eval", "bench", str(videos / "[cs]*.mp4"), "--dimensions", "prompt_alignment,subject_consistency",
                 "--clip", str(clip_folder), "--device", "cpu", "--out", str(out), "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^  prompt_alignment +[01]\.\d{4}  \(3 measured\)$", printed, re.M), printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dimensions"]["subject_consistency"]["count"] == 3
    rows = {json.loads(line)["id"]: json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()}
    # A repeated frame is perfectly consistent, whatever the (random) CLIP makes of it.
    assert rows["still"]["scores"]["subject_consistency"]["value"] == pytest.approx(1.0, abs=1e-5)
    assert rows["street"]["scores"]["subject_consistency"]["value"] < 1.0 - 1e-4
