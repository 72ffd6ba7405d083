"""`torchrun -m openwan generate --cache` under context parallel and CFG-parallel gives the one-process cached result
(the step cache's decision sums over every rank's tokens; under CFG-parallel each rank keeps its own branch)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from safetensors.torch import load_file

COMMON = ["--prompt", "a blue box drifting up", "--frame-num", "9", "--sample-steps", "12", "--base-seed", "3"]


def _generate(tmp_path, name, *extra, procs=1):
    latents = tmp_path / f"{name}.safetensors"
    launcher = [sys.executable, "-m", "openwan"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m", "openwan"]
    proc = subprocess.run([*launcher, "generate", *COMMON, *extra, "--save-file", str(tmp_path / f"{name}.mp4"),
                           "--save-latents", str(latents)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, (load_file(latents)["latents"] if proc.returncode == 0 else None)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--ulysses-size", "2"], ["--cfg-parallel"]], ids=["ulysses", "cfg"])
def test_cached_parallel_run_equals_one_process(tmp_path, flags):
    proc, single = _generate(tmp_path, "single", "--cache", "safe")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = int(re.search(r"cache safe: (\d+) of 24 DiT evaluations run", proc.stdout).group(1))
    assert run < 24  # blocks were skipped
    proc, parallel = _generate(tmp_path, "parallel", "--cache", "safe", *flags, procs=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    diff = ((parallel - single).abs().max() / single.abs().max()).item()
    print(f"{flags}: max rel diff {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.slow
def test_cfg_cache_under_cfg_parallel_is_refused(tmp_path):
    proc, _ = _generate(tmp_path, "x", "--cache", "fast", "--cfg-parallel", procs=2)
    assert proc.returncode != 0 and "--cfg-parallel" in proc.stderr and not (tmp_path / "x.mp4").exists()
