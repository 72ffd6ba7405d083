"""`openwan eval bench --suite`: generate every prompt x seed with a tiny random model, then score; a re-run generates
nothing that is there, and VBench's prompt lists are read from the installed package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openwan.checkpoints.release import save_release
from openwan.cli.main import main
from openwan.data.video import probe_video
from openwan.eval.bench import suite as suite_mod
from openwan.eval.bench.suite import suite_prompts, vbench_prompts
from openwan.pipelines import WanPipeline
from tiny import tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")
DIMS = "temporal_flickering,dynamic_degree"
FAST = ["--size", "32*32", "--frame-num", "5", "--sample-steps", "2", "--device", "cpu", "--dimensions", DIMS]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return save_release(tmp_path_factory.mktemp("suite") / "release", **tiny_components("tiny"))


def test_a_suite_is_generated_scored_and_resumed(release, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moves left\n\na blue square stays still\n")
    out = tmp_path / "suite"
    argv = ["eval", "bench", "--suite", str(prompts), "--ckpt-dir", str(release), "--seeds", "0", "1", *FAST,
            "--out", str(out), "--no-report"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "suite: 4 videos generated, 0 already there" in printed and "4 videos scored" in printed
    names = sorted(p.name for p in (out / "videos").iterdir())
    assert names == ["0000_seed0.mp4", "0000_seed0.txt", "0000_seed1.mp4", "0000_seed1.txt",
                     "0001_seed0.mp4", "0001_seed0.txt", "0001_seed1.mp4", "0001_seed1.txt"]
    assert probe_video(out / "videos" / "0001_seed1.mp4") == {"frames": 5, "fps": 16.0, "width": 32, "height": 32}
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red circle moves left"] * 2 + ["a blue square stays still"] * 2
    assert all(0 <= r["scores"][d]["value"] <= 1 for r in rows for d in DIMS.split(","))
    first = (out / "videos" / "0000_seed0.mp4").read_bytes()
    record = json.loads((out / "suite.json").read_text())
    assert record["seeds"] == [0, 1]
    assert {k: record["settings"][k] for k in ("size", "frame_num", "sample_steps", "solver")} == {
        "size": [32, 32], "frame_num": 5, "sample_steps": 2, "solver": "unipc"}
    assert record["settings"]["guide_scale"] == WanPipeline.from_pretrained(release, device="cpu").defaults.for_task(
        "t2v").guide_scale  # the model's default, recorded as used

    # Nothing left to generate: the model is never loaded, no video is scored again.
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded with nothing to generate")

    monkeypatch.setattr(WanPipeline, "from_pretrained", no_model)
    assert main(argv) == 0
    assert "suite: 0 videos generated, 4 already there" in capsys.readouterr().out
    assert json.loads((out / "suite.json").read_text())["settings"] == record["settings"]
    monkeypatch.undo()

    # A changed prompt and a new one: only their videos are made; the others keep their bytes.
    prompts.write_text("a red circle moves left\na green square moves right\na yellow star moves up\n")
    assert main([*argv[:argv.index("--seeds") + 1], "0", *argv[argv.index("--seeds") + 3:]]) == 0
    printed = capsys.readouterr().out
    assert "suite: 2 videos generated, 1 already there" in printed and "3 videos scored (1 from an earlier run)" \
        in printed
    assert (out / "videos" / "0000_seed0.mp4").read_bytes() == first
    assert (out / "videos" / "0001_seed0.txt").read_text().strip() == "a green square moves right"
    assert len(json.loads((out / "summary.json").read_text())["dimensions"]) == 2


def test_suite_prompt_files(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["one", {"prompt_en": "two", "dimension": ["scene"]}]))
    assert suite_prompts(tmp_path / "list.json") == ["one", "two"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        suite_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="does not exist"):
        suite_prompts(tmp_path / "missing.txt")


def test_vbench_prompt_lists_are_read_from_the_installed_package(tmp_path, monkeypatch):
    """A stand-in ``vbench`` package laid out as the real one ships its lists (VBench_full_info.json with each
    prompt's dimensions, prompts_per_category/*.txt), so the reader is shown without the package installed."""
    package = tmp_path / "site" / "vbench"
    (package / "prompts_per_category").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "VBench_full_info.json").write_text(json.dumps([
        {"prompt_en": "a cat sleeping", "dimension": ["subject_consistency", "dynamic_degree"]},
        {"prompt_en": "a city at night, zoom in", "dimension": ["camera_motion"]},
        {"prompt_en": "a cat sleeping", "dimension": ["motion_smoothness"]}]))
    (package / "prompts_per_category" / "animal.txt").write_text("a dog running\na horse grazing\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(__import__("sys").modules, "vbench", raising=False)
    assert vbench_prompts() == ["a cat sleeping", "a city at night, zoom in"]  # each prompt once
    assert suite_prompts("vbench:camera_motion") == ["a city at night, zoom in"]
    assert suite_prompts("vbench:animal") == ["a dog running", "a horse grazing"]
    with pytest.raises(ValueError, match="no prompt list 'plants'.*camera_motion.*animal"):
        suite_prompts("vbench:plants")
    assert suite_mod.VBENCH_HINT == "--suite vbench needs: pip install vbench"


@pytest.mark.slow
def test_the_demo_model_follows_held_out_prompts_through_the_suite(tmp_path, capsys):
    """The bundled model generates held-out prompts at its defaults; the bench reads the mp4s back and its demo
    dimensions agree, video by video, with the detector run on the same files decoded by read_video."""
    from openwan.data.synthetic import heldout_prompts, parse_caption
    from openwan.data.video import read_video
    from openwan.eval.detector import detect

    demo = Path(__file__).resolve().parents[2] / "src" / "openwan" / "weights" / "openwan-demo"
    prompts = heldout_prompts()[::6]  # 3 of the 18 held-out combinations
    (tmp_path / "suite.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "demo"
    assert main(["eval", "bench", "--suite", str(tmp_path / "suite.txt"), "--ckpt-dir", str(demo), "--device", "cpu",
                 "--dimensions", "demo_colour,demo_shape,demo_motion,temporal_flickering", "--out", str(out)]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        seen = detect(read_video(row["path"]))
        asked = parse_caption(row["prompt"])
        for attribute, value in zip(("colour", "shape", "motion"), asked):
            assert row["scores"][f"demo_{attribute}"]["value"] == float(getattr(seen, attribute) == value), row
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dimensions"]["demo_colour"]["mean"] == 1.0  # the model gets every held-out colour right
    assert (out / "report.html").is_file()
