"""`torchrun -m openwan generate` with context / CFG parallelism gives the single-process result (bundled model)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

# One denoising step with guidance 5: the float32 reduction-order differences of a parallel forward (~1e-6) come
# out of the guidance combine about 9x larger and compound over steps (3 steps of the trained demo model: 2.8e-5);
# one step compares the whole path (sharding, gathers, CFG split, decode, rank-0 writes) at the forward's precision.
COMMON = ["--prompt", "a blue box drifting up", "--frame-num", "9", "--sample-steps", "1", "--base-seed", "3",
          "--sample-guide-scale", "5"]


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """{"bundled": the demo model when it ships (else a tiny random release), "three-heads": a tiny random release
    whose DiT has 3 heads, which Ulysses cannot split over 2 ranks}."""
    from openwan.checkpoints.release import save_release
    from openwan.pipelines.components import BUNDLED, holds_dit
    from tiny import tiny_components

    folder = tmp_path_factory.mktemp("release")
    bundled = BUNDLED if holds_dit(BUNDLED) else save_release(folder / "tiny", **tiny_components())
    return {"bundled": bundled,
            "three-heads": save_release(folder / "three-heads", **tiny_components(dim=48, num_heads=3))}


def _generate(tmp_path, name, ckpt, *extra, procs=1):
    latents = tmp_path / f"{name}.safetensors"
    video = tmp_path / f"{name}.mp4"
    launcher = [sys.executable, "-m", "openwan"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m", "openwan"]
    args = ["generate", "--ckpt-dir", str(ckpt), *COMMON, *extra, "--save-file", str(video),
            "--save-latents", str(latents)]
    proc = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert video.is_file()
    return load_file(latents)["latents"]


@pytest.fixture(scope="module")
def single(tmp_path_factory, releases):
    """The bundled model's one-process latents."""
    return _generate(tmp_path_factory.mktemp("single"), "single", releases["bundled"])


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--ulysses-size", "2"], ["--ring-size", "2"], ["--cfg-parallel"]],
                         ids=["ulysses", "ring", "cfg"])
def test_two_processes_equal_one(single, releases, tmp_path, flags):
    parallel = _generate(tmp_path, "parallel", releases["bundled"], *flags, procs=2)
    diff = ((parallel - single).abs().max() / single.abs().max()).item()
    print(f"{flags}: max rel diff {diff:.2e}")
    assert diff <= 1e-5
    # only rank 0 wrote files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parallel.mp4", "parallel.safetensors"]


def test_parallel_flags_without_torchrun_are_refused(tmp_path, releases):
    proc = subprocess.run([sys.executable, "-m", "openwan", "generate", "--ckpt-dir", str(releases["bundled"]), *COMMON,
                           "--ulysses-size", "2",
                           "--save-file", str(tmp_path / "x.mp4")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "torchrun" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.slow
def test_ulysses_larger_than_the_head_count_divides_is_refused(tmp_path, releases):
    """3 heads cannot be split over 2 Ulysses ranks: the user gets a sentence, not a hang or a traceback."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "openwan", "generate", "--ckpt-dir", str(releases["three-heads"]), *COMMON,
                           "--ulysses-size", "2", "--save-file", str(tmp_path / "x.mp4")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0 and "heads" in proc.stderr and not (tmp_path / "x.mp4").exists()
