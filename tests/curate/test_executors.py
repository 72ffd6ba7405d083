"""The executors run the same steps to the same results: in this process, in a pool, and on Ray Data.

The Ray test starts a local Ray (seconds of start-up per actor pool on 2 cores), so it is in the slow tier; it
shows that the in-process and Ray executors write byte-identical manifest.parquet and clips.parquet.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from curate.corpus import build_corpus
from openwan.curate import curate, load_config
from openwan.curate.base import Resources
from openwan.curate.executors import LocalExecutor, RayExecutor, make_executor, run_chain
from openwan.curate.pipeline import clip_steps

REPO = Path(__file__).resolve().parents[2]
QUIET = ["run.progress=false", "report.enabled=false", "limits.min_short_side=64"]


class AddStep:
    """A step that adds ``value`` to ``task["x"]`` and counts its setups."""

    resources = Resources()

    def __init__(self, value: int, name: str = "add"):
        self.value, self.name, self.setups = value, name, 0

    def setup(self) -> None:
        self.setups += 1

    def __call__(self, task: dict) -> dict:
        return {**task, "x": task["x"] + self.value, "by": task.get("by", []) + [self.name]}


@pytest.mark.parametrize("executor", [LocalExecutor(), LocalExecutor(3, "thread")], ids=["serial", "threads"])
def test_local_executors_run_every_task_through_the_chain(executor):
    steps = [AddStep(1, "a"), AddStep(10, "b")]
    done = list(executor.map(steps, [{"i": i, "x": i} for i in range(20)]))
    executor.close()
    assert sorted((t["i"], t["x"], tuple(t["by"])) for t in done) == [(i, i + 11, ("a", "b")) for i in range(20)]
    assert list(executor.map(steps, [])) == []


@pytest.mark.slow  # spawned workers import torch: ~10 s each on 2 busy cores
def test_a_process_pool_runs_successive_chains_on_the_same_workers():
    executor = LocalExecutor(2, "process")
    try:
        done = list(executor.map([AddStep(5)], [{"x": i} for i in range(6)]))
        again = list(executor.map([AddStep(7)], [{"x": i} for i in range(6)]))  # the same pool, a new chain
    finally:
        executor.close()
    assert sorted(t["x"] for t in done) == [5, 6, 7, 8, 9, 10]
    assert sorted(t["x"] for t in again) == [7, 8, 9, 10, 11, 12]


def test_run_chain_and_the_executor_the_config_names():
    assert run_chain([AddStep(2), AddStep(3)], {"x": 1})["x"] == 6
    assert isinstance(make_executor(load_config(None, ["run.workers=2"]).run), LocalExecutor)
    with pytest.raises(ValueError, match="pool must be"):
        LocalExecutor(2, "fibers")
    with pytest.raises(ValueError, match="run.ray_address"):
        load_config(None, ["run.ray_address=auto"])


def test_a_gpu_stage_gets_a_step_of_its_own(monkeypatch):
    """Consecutive CPU stages share one step (one decode, one worker); a stage asking for a GPU is a step alone,
    so on Ray only its actors reserve the GPU."""
    from openwan.curate.filters import ExposureStage

    cfg = load_config(REPO / "configs" / "curate-fast.yaml", QUIET)
    cpu_only = clip_steps(cfg)
    assert len(cpu_only) == 1 and cpu_only[0].decode and cpu_only[0].resources.num_gpus == 0
    monkeypatch.setattr(ExposureStage, "resources", Resources(num_cpus=1, num_gpus=1))
    steps = clip_steps(cfg)
    assert [s.name.split("+")[0] for s in steps] == ["limits", "exposure", "blur"]
    assert [s.name for s in steps][1] == "exposure" and steps[1].resources.num_gpus == 1
    assert [s.decode for s in steps] == [True, False, False]
    assert [s.keep_frames for s in steps] == [True, True, False]


@pytest.mark.slow
def test_in_process_and_ray_write_the_same_tables(tmp_path):
    pytest.importorskip("ray")
    raw = build_corpus(tmp_path)
    cfg = load_config(REPO / "configs" / "curate-fast.yaml", QUIET)
    local = curate(cfg, tmp_path / "local", paths=[raw])
    start = time.perf_counter()
    ray_executor = RayExecutor(workers=2)
    started = time.perf_counter() - start
    try:
        on_ray = curate(cfg, tmp_path / "ray", executor=ray_executor, paths=[raw])
    finally:
        ray_executor.close()
    print(f"local Ray started in {started:.1f} s; run {sum(on_ray.seconds.values()):.1f} s on Ray, "
          f"{sum(local.seconds.values()):.1f} s in process")
    assert on_ray.counts == local.counts and local.counts["kept"] > 0
    for name in ("manifest.parquet", "clips.parquet", "errors.parquet", "sources.parquet"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
