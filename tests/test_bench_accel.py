"""benchmarks/bench_accel.py on a tiny random pipeline with two settings, so it cannot rot: the rows it prints and
writes hold the counts compare_settings' meter gives, the drift of each setting and the prompt following."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from openwan.pipelines import WanPipeline
from openwan.pipelines.defaults import FAMILY_DEFAULTS
from tiny import tiny_components

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_accel  # noqa: E402  (a script folder, put on the path above)

PROMPTS = ["a red circle moving to the left", "a blue square moving up"]


def _loader():
    return WanPipeline(**tiny_components("tiny"), defaults=FAMILY_DEFAULTS["tiny"])


def test_main_runs_two_settings_against_the_reference(tmp_path, capsys, one_thread):
    out = tmp_path / "accel.json"
    report = bench_accel.main(["--steps", "8", "--settings", "cache-fast,fewer-steps", "--prompts", PROMPTS[0],
                               "--seeds", "0", "--json", str(out), "--markdown"], loader=_loader)
    assert json.loads(out.read_text()) == json.loads(json.dumps(bench_accel.to_json(report)))
    (run,) = report["runs"]
    rows = {r["setting"]: r for r in run["rows"]}
    assert list(rows) == ["reference", "cache-fast", "fewer-steps"]
    ref, fast, fewer = rows["reference"], rows["cache-fast"], rows["fewer-steps"]
    assert ref["dit_evals_per_video"] == 16  # guided: two evaluations per step
    assert fewer["dit_evals_per_video"] == 2 * run["fewer_steps"] < 16
    assert 0 < fast["dit_evals_per_video"] < 16
    assert fast["evals_saved_per_video"] == pytest.approx(16 - fast["dit_evals_per_video"])
    for row in (fast, fewer):
        assert math.isfinite(row["psnr_db"]) and row["psnr_db_min"] <= row["psnr_db"]
        assert 0 < row["ssim_min"] <= row["ssim"] <= 1
        assert 0 < row["latent_rel_error"] <= row["latent_rel_error_max"]
        assert row["speedup"] > 0 and set(row["prompt_following"]) == {"colour", "shape", "motion", "all"}
    assert set(ref["prompt_following"]) == {"colour", "shape", "motion", "all"}
    printed = capsys.readouterr().out
    assert "| cache-fast |" in printed and "| fewer-steps |" in printed
    assert "cache-fast: " in printed and "fewer steps" in printed


def test_unknown_settings_are_refused_before_anything_runs():
    loads = []
    with pytest.raises(ValueError, match="unknown setting 'cache-turbo'"):
        bench_accel.main(["--steps", "8", "--settings", "cache-turbo", "--prompts", PROMPTS[0], "--seeds", "0",
                          "--fewer-steps", "4"], loader=lambda: loads.append(1) or _loader())
    assert not loads  # refused before the model loads


def test_a_setting_this_machine_cannot_run_is_listed_with_its_reason(one_thread):
    pipe = _loader()
    lanes = bench_accel.make_lanes(pipe, _loader, {"attention-flash": {"sample_steps": 8, "attention": "flash"}}, 8)
    if lanes[1].skipped is None:
        pytest.skip("flash attention runs here")
    assert lanes[1].skipped.startswith("not run: ") and "flash" in lanes[1].skipped


def _row(name, evals, psnr, follow=1.0):
    return {"setting": name, "dit_evals_per_video": evals, "evals_ratio": 100 / evals, "psnr_db": psnr,
            "follows_worse": [] if follow >= 1 else ["all"]}


def test_the_issue_target_and_the_fewer_steps_comparison_read_the_numbers():
    rows = [_row("cache-safe", 60, 40), _row("cache-fast", 38, 31), _row("fewer-steps", 38, 29.5)]
    lines = bench_accel.verdicts(rows, 50)
    assert any(line.startswith("cache-fast: 38 evals at 31.00 dB") and "beats it" in line for line in lines)
    assert "MET by cache-fast" in lines[-1]
    rows[1] = _row("cache-fast", 38, 29.0, follow=0.5)
    lines = bench_accel.verdicts(rows, 50)
    assert any("cache-fast" in line and "does not beat it" in line for line in lines)
    assert any("MISSED" in line for line in lines) and "cache-fast (all)" in lines[-1]
    assert not any("issue target" in line for line in bench_accel.verdicts(rows, 20))
