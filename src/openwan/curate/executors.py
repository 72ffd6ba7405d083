"""Where the curation steps run: in this process (:class:`LocalExecutor`, optionally a pool of worker processes
or threads) or on Ray Data (:class:`RayExecutor`). Both run the same step objects on the same task dicts, so both
produce the same results; the pipeline (the driver) writes every cache and table from what comes back.

A *step* (see :mod:`openwan.curate.pipeline`) is a picklable callable ``task dict -> task dict`` with ``name``,
``resources`` (a :class:`~openwan.curate.base.Resources`) and ``setup()`` (loads its models; idempotent). A map
is a chain of steps applied to every task; :meth:`map` yields finished tasks as they complete, in any order.

On Ray, each step of a chain is one ``Dataset.map`` over the tasks: a callable class run by an actor pool of up to
``workers`` actors, each reserving the step's ``num_cpus`` / ``num_gpus`` (so a GPU stage lands on a GPU worker)
and calling ``setup()`` once. Tasks travel between steps pickled in one binary column, decoded frames included.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Any

from openwan.curate.config import RunConfig

_WORKER_STEPS: dict[int, list[Any]] = {}  # chain id -> its steps (set up), in a pool worker


def run_chain(steps: Sequence[Any], task: dict) -> dict:
    """``task`` through every step in order (each set up on first use)."""
    for step in steps:
        step.setup()
        task = step(task)
    return task


def _run_in_worker(chain_id: int, blob: bytes, task: dict) -> dict:
    if chain_id not in _WORKER_STEPS:  # first task of this chain in this worker: unpickle its steps once
        _WORKER_STEPS.clear()
        _WORKER_STEPS[chain_id] = pickle.loads(blob)
    return run_chain(_WORKER_STEPS[chain_id], task)


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


class LocalExecutor:
    """Steps run in this process: one task after another (``workers`` 1), or ``workers`` tasks at a time in a pool
    of processes (started once, with ``spawn``; each sets a chain's stages up once) or threads (the stages are
    shared and must be thread-safe). A script that uses a process pool needs the ``if __name__ == "__main__":``
    guard, as every ``spawn`` pool does."""

    def __init__(self, workers: int = 1, pool: str = "process"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1; got {workers}.")
        if pool not in ("process", "thread"):
            raise ValueError(f"pool must be 'process' or 'thread'; got {pool!r}.")
        self.workers, self.pool = workers, pool
        self.name = "local" if workers == 1 else f"local ({workers} {pool}{'es' if pool == 'process' else 's'})"
        self._pool: Executor | None = None
        self._chains = 0

    def _get_pool(self) -> Executor:
        if self._pool is None:
            if self.pool == "thread":
                self._pool = ThreadPoolExecutor(self.workers)
            else:
                import multiprocessing

                # spawn: a fresh interpreter per worker, so no lock or thread pool of this process is inherited
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker)
        return self._pool

    def map(self, steps: Sequence[Any], tasks: Sequence[dict]) -> Iterator[dict]:
        """Each task through ``steps``; finished tasks as they complete."""
        if not tasks:
            return
        if self.workers == 1 or len(tasks) == 1:
            for task in tasks:
                yield run_chain(steps, task)
            return
        pool = self._get_pool()
        if self.pool == "thread":
            for step in steps:
                step.setup()
            submit = lambda task: pool.submit(run_chain, steps, task)
        else:
            self._chains += 1
            chain_id, blob = self._chains, pickle.dumps(list(steps))
            submit = lambda task: pool.submit(_run_in_worker, chain_id, blob, task)
        pending = set()
        queue = iter(tasks)
        try:
            for task in queue:  # at most 2 tasks per worker in flight
                pending.add(submit(task))
                if len(pending) >= 2 * self.workers:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(submit(nxt))
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Shut the worker pool down (if one was started)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _RayStep:
    """A step as a Ray Data callable class: unpickles its step (:attr:`BLOB`, set by :func:`_ray_step_class`) once
    per actor, sets it up, and maps rows ``{"blob": pickled task}``."""

    BLOB = b""

    def __init__(self):
        self.step = pickle.loads(self.BLOB)
        self.step.setup()

    def __call__(self, row: dict) -> dict:
        task = pickle.loads(row["blob"])
        return {"blob": pickle.dumps(self.step(task), protocol=pickle.HIGHEST_PROTOCOL)}


def _ray_step_class(step: Any) -> type:
    """A :class:`_RayStep` subclass carrying ``step`` pickled in the class itself, so the actors take no
    constructor arguments (Ray keeps those in its object store and warns about restarting such actors)."""
    return type(f"RayStep_{step.name.replace('+', '_')}", (_RayStep,), {"BLOB": pickle.dumps(step)})


class RayExecutor:
    """Steps run on Ray Data. Starts a local Ray with ``workers`` CPUs (no dashboard), or joins the cluster at
    ``address`` (e.g. ``ray://head:10001`` or ``auto``); :meth:`close` shuts down a Ray this executor started.
    Each step is an actor pool of 1 to ``workers`` actors reserving the step's declared resources."""

    def __init__(self, workers: int = 1, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ValueError("the ray executor needs Ray Data; install it with pip install 'ray[data]' (or "
                             "pip install 'openwan[curate]').") from None
        self.workers, self.address = workers, address
        self.started = False
        if not ray.is_initialized():
            env = {"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                                "TOKENIZERS_PARALLELISM": "false"}}
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, runtime_env=env,
                         configure_logging=False)
            self.started = True
        import logging

        import ray.data

        # the run's own bars say how far it is; Ray's info lines and bars would interleave with them
        logging.getLogger("ray").setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        self.name = f"ray ({address or f'local, {workers} CPUs'})"

    def _cluster_cpus(self) -> float:
        import ray

        return float(ray.cluster_resources().get("CPU", 1.0))

    def map(self, steps: Sequence[Any], tasks: Sequence[dict]) -> Iterator[dict]:
        """Each task through ``steps`` as a chain of ``Dataset.map`` calls; finished tasks as they stream out."""
        if not tasks:
            return
        import ray.data

        blobs = [{"blob": pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL)} for t in tasks]
        ds = ray.data.from_items(blobs, override_num_blocks=max(1, min(len(blobs), 4 * self.workers)))
        # every step's pool must be able to hold one actor at once: a chain of steps that asks for more CPUs than
        # the cluster has is scaled down so none waits forever for another to finish
        cpus = self._cluster_cpus()
        wanted = sum(s.resources.num_cpus for s in steps) or 1.0
        scale = min(1.0, cpus / wanted)
        for step in steps:
            ds = ds.map(_ray_step_class(step), compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.workers),
                        num_cpus=step.resources.num_cpus * scale, num_gpus=step.resources.num_gpus)
        for row in ds.iter_rows():
            yield pickle.loads(row["blob"])

    def close(self) -> None:
        """Shut down the Ray this executor started (a cluster it joined stays up)."""
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def make_executor(run: RunConfig) -> LocalExecutor | RayExecutor:
    """The executor ``run`` names: ``local`` (``workers`` in a ``pool``) or ``ray`` (at ``ray_address``)."""
    if run.executor == "ray":
        return RayExecutor(run.workers, run.ray_address)
    return LocalExecutor(run.workers, run.pool)


__all__ = ["LocalExecutor", "RayExecutor", "make_executor", "run_chain"]
