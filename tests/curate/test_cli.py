"""``openwan curate``: run, report, select, label-sheet and train-scorer through the command line, and its errors
(one sentence, exit status 2, nothing computed)."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.corpus import build_small_corpus
from openwan.cli.main import build_parser, main
from openwan.data.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
# clips of 1-2 s, so three videos give the expert scorer enough clips to label; on clips this short the overlay
# stage and the shake limit judge from a dozen frames, so they stay out of the way here
FAST = ["--config", str(REPO / "configs" / "curate-fast.yaml"), "limits.min_short_side=64", "limits.min_duration=1",
        "split.min_clip_s=1", "split.max_clip_s=2", "overlay.enabled=false", "motion.reject_tiers=[]", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    raw = build_small_corpus(root)
    out = root / "out"
    assert main(["curate", "run", str(raw), "--out", str(out), *FAST, "report.enabled=false"]) == 0
    return out


def test_run_writes_every_output_and_says_what_it_did(run_dir):
    for name in ("manifest.parquet", "clips.parquet", "errors.parquet", "sources.parquet"):
        assert (run_dir / name).is_file(), name
    assert read_manifest(run_dir / "manifest.parquet")
    assert len(pq.read_table(run_dir / "clips.parquet")) >= 4


def test_report_rebuilds_from_the_tables(run_dir, capsys):
    assert main(["curate", "report", str(run_dir), "--thumbnails", "1"]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (run_dir / "report.html").read_text()
    for part in ("Rejections by reason", "motion_tier", "cluster_id", "Scores", "Thumbnails", "Errors", "noise.mp4"):
        assert part in html, part
    assert html.count("data:image/png;base64,") >= 2  # the histograms and a thumbnail


@pytest.mark.slow
def test_report_as_png(run_dir):
    assert main(["curate", "report", str(run_dir), "--format", "png"]) == 0
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_select_writes_a_weighted_phase_manifest(run_dir, tmp_path):
    phase = tmp_path / "phase.yaml"
    phase.write_text("phase: motion\ntier_weights: {static: 0.0}\n")
    out = tmp_path / "phase.parquet"
    assert main(["curate", "select", "--clips", str(run_dir / "clips.parquet"), "--config", str(phase),
                 "--out", str(out)]) == 0
    records = read_manifest(out)
    kept = [r for r in pq.read_table(run_dir / "clips.parquet").to_pylist() if r["decision"] == "kept"]
    moving = [r for r in kept if r["motion_tier"] not in ("static", "shaky")]  # shaky weighs 0 by default
    assert moving
    assert sorted(r.id for r in records) == sorted(r["clip_id"] for r in moving)
    assert sum(r.weight for r in records) == pytest.approx(len(records))


def test_the_expert_scorer_from_label_sheet_to_trained_scorer(run_dir, tmp_path, capsys):
    sheet = tmp_path / "labels.csv"
    assert main(["curate", "label-sheet", "--clips", str(run_dir / "clips.parquet"), "--all", "--per-cluster", "3",
                 "--out", str(sheet)]) == 0
    rows = list(csv.DictReader(sheet.open()))
    assert len(rows) >= 4 and all(r["score"] == "" for r in rows)
    for i, row in enumerate(rows):  # a person's scores
        row["score"] = str(i % 5 + 1)
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    scorer = tmp_path / "scorer"
    assert main(["curate", "train-scorer", "--clips", str(run_dir / "clips.parquet"), "--labels", str(sheet),
                 "--out", str(scorer), "--folds", "2"]) == 0
    assert (scorer / "scorer.safetensors").is_file() and "Spearman" in capsys.readouterr().out


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("openwan curate: error: "), err
    return err


@pytest.mark.parametrize("argv, words", [
    (["run", "--out", "{tmp}/o"], "no inputs given"),
    (["run", "{tmp}/missing", "--out", "{tmp}/o"], "does not exist"),
    (["run", "{tmp}", "--out", "{tmp}/o"], "no videos found"),
    (["run", "{tmp}", "--out", "{tmp}/o", "split.detector=magic"], "split.detector"),
    (["run", "{tmp}", "--out", "{tmp}/o", "nosuch.x=1"], "unknown config field 'nosuch'"),
    (["run", "{tmp}", "--out", "{tmp}/o", "--workers", "0"], "run.workers"),
    (["run", "{tmp}", "--out", "{tmp}/o", "--config", "{tmp}/nope.yaml"], "does not exist"),
    (["report", "{tmp}"], "holds no clips.parquet"),
    (["select", "--clips", "{tmp}/clips.parquet", "--out", "{tmp}/p.parquet"], "does not exist"),
    (["label-sheet", "--clips", "{tmp}/clips.parquet", "--out", "{tmp}/l.csv"], "does not exist"),
    (["train-scorer", "--clips", "{tmp}/c.parquet", "--labels", "{tmp}/l.csv", "--out", "{tmp}/s"], "does not exist"),
])
def test_errors_are_one_sentence_and_exit_2(argv, words, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["curate", *argv]) == 2
    assert words in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_help_texts_name_every_command_and_the_outputs(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["curate", "--help"])
    text = capsys.readouterr().out
    for command in ("run", "select", "label-sheet", "train-scorer", "report"):
        assert command in text
    with pytest.raises(SystemExit):
        parser.parse_args(["curate", "run", "--help"])
    text = capsys.readouterr().out
    for word in ("manifest.parquet", "clips.parquet", "errors.parquet", "sources.parquet", "--executor",
                 "--ray-address", "--workers", "FIELD=VALUE"):
        assert word in text
