"""The GPU suite (benchmarks/gpu_suite.sh -> bench_gpu.py) on its tiny CPU configuration, so it cannot rot: every
section runs and lands in the JSON, and the analytic FLOP count matches torch's flop counter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu  # noqa: E402  (a script folder, put on the path above)


def test_tiny_suite_writes_every_section(tmp_path, one_thread):
    out = tmp_path / "suite.json"
    results = bench_gpu.main(["--tiny", "--out", str(out), "--steps", "6", "--reps", "1"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results, default=str))
    for name in bench_gpu.SECTIONS:
        assert "error" not in results[name], (name, results[name])
    step = results["dit_step"]
    assert step["ours_s"] > 0 and step["peer_s"] > 0
    e2e = results["end_to_end"]
    assert e2e["ours"]["total_s"] > 0 and e2e["diffusers"]["total_s"] > 0
    acc = results["accelerations"]
    assert acc["int8"]["weight_bytes"] < acc["baseline"]["weight_bytes"] / 1.9
    assert 1e-5 < acc["int8"]["rel_l2_vs_baseline"] < 1e-2
    for name in ("flash", "sage", "compile"):
        assert "skipped" in acc[name] or "s" in acc[name]
    assert set(results["memory"]) == {"default", "offload_model", "stream_blocks"}
    assert "none" in results["cache"] or "skipped" in results["cache"]
    # SDPA's CPU kernel is invisible to torch's flop counter: it counted exactly the matmuls of the analytic count
    flops = results["mfu"]["flops_analytic"]
    assert results["mfu"]["flops_counted"] == flops["matmul"] and flops["attention"] > 0
    assert results["mfu"]["peak_tflops"] is None and "not measured" in results["mfu"]["mfu_note"]


def test_flop_count_matches_the_counter_at_a_larger_grid():
    from torch.utils.flop_counter import FlopCounterMode

    from openwan.configs import DIT_PRESETS
    from openwan.models import WanDiT

    cfg = DIT_PRESETS["tiny"].replace(num_layers=1)
    dit = WanDiT(cfg).eval()
    grid = (3, 12, 8)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        dit(torch.randn(1, cfg.in_dim, *grid), torch.tensor([500.0]), torch.randn(1, 7, cfg.text_dim))
    assert counter.get_total_flops() == bench_gpu.dit_forward_flops(cfg, grid)["matmul"]
    # the attention terms, by hand for this grid: 72 tokens, 32 context rows, width 64, one block
    assert bench_gpu.dit_forward_flops(cfg, grid)["attention"] == 4 * 72 * 72 * 64 + 4 * 72 * 32 * 64


def test_suite_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], check=True)
