"""Two settings of one model on the same prompts and seeds: :func:`compare_settings` generates each video under a
reference and a candidate setting (keyword arguments of :meth:`WanPipeline.__call__`, or accelerations applied when
the model loads), times them, counts the DiT evaluations each ran and compares the videos with
:mod:`openwan.eval.compare`'s metrics; the report has the shape of :func:`~openwan.eval.compare.compare_dirs`'."""

from __future__ import annotations

import gc
import importlib
import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from openwan.data.video import save_video
from openwan.eval.bench.base import BenchWeights
from openwan.eval.compare import (
    FPS,
    as_video,
    bench_pair,
    build_bench,
    compare_videos,
    finish_report,
    to_json,
    to_uint8,
)
from openwan.fileio import atomic_write

LOAD_KEYS = ("quantize", "attention", "compile")  # openwan.runtime.accel's; load_keys() reads its full list
RUN_KEYS = ("prompt", "seed", "return_video")  # set by compare_settings itself


def call_keys() -> list[str]:
    """The keyword arguments of :meth:`WanPipeline.__call__` a setting may hold (prompt and seed come from the
    comparison; the video is always returned)."""
    from openwan.pipelines import WanPipeline

    names = list(inspect.signature(WanPipeline.__call__).parameters)[1:]
    return [n for n in names if n not in RUN_KEYS]


def _accelerations():
    """openwan.runtime.accel.apply_accelerations, or None where this install lacks it (with the reason)."""
    try:
        return importlib.import_module("openwan.runtime.accel").apply_accelerations, None
    except (ImportError, AttributeError) as err:
        return None, str(err)


def load_keys() -> tuple[str, ...]:
    """The keys a setting applies when the model loads: the keyword arguments of
    ``openwan.runtime.accel.apply_accelerations`` (quantize, attention, compile, ...), :data:`LOAD_KEYS` where it is
    not installed."""
    accelerate, _ = _accelerations()
    return LOAD_KEYS if accelerate is None else tuple(list(inspect.signature(accelerate).parameters)[1:])


def check_setting(setting: dict, label: str) -> tuple[dict, dict]:
    """(pipeline call arguments, load-time arguments) of ``setting``; ValueError for a key the pipeline does
    not take, naming the allowed ones."""
    if not isinstance(setting, dict):
        raise ValueError(f"the {label} setting must be a dict of WanPipeline arguments; got {type(setting).__name__}.")
    allowed, at_load = call_keys(), load_keys()
    for key in setting:
        if key in RUN_KEYS:
            raise ValueError(f"the {label} setting sets {key!r}, which the comparison sets itself (prompts and seeds "
                             "are given once for both settings); remove it.")
        if key not in allowed and key not in at_load:
            raise ValueError(f"the {label} setting has an unknown key {key!r}; allowed: {', '.join(allowed)}, and "
                             f"at load time {', '.join(at_load)}.")
    return ({k: v for k, v in setting.items() if k not in at_load},
            {k: v for k, v in setting.items() if k in at_load})


def _accelerate_fn(loads: dict[str, dict]) -> Callable | None:
    """openwan.runtime.accel.apply_accelerations when a setting needs it; ValueError when it is not installed."""
    keys = sorted({k for load in loads.values() for k in load})
    if not keys:
        return None
    accelerate, missing = _accelerations()
    if accelerate is None:
        raise ValueError(f"{', '.join(keys)} act when the model loads and need openwan.runtime.accel "
                         f"(apply_accelerations), which this install lacks ({missing}); drop them from the settings.")
    return accelerate


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class DitMeter:
    """Counts, while attached to a pipeline, the forward calls of its DiT(s) and their evaluations: the rows the
    transformer blocks ran (one per guidance branch), in whole-model passes."""

    def __init__(self, pipe):
        self.calls, self.evals = 0, 0.0
        models = [m for m in (pipe.dit, pipe.dit_low) if m is not None]
        self.hooks = [m.register_forward_hook(self._call) for m in models]
        for m in models:
            blocks = list(getattr(m, "blocks", ()))
            self.hooks += [b.register_forward_hook(self._block(1 / len(blocks))) for b in blocks]

    def _call(self, *_):
        self.calls += 1

    def _block(self, share: float):
        def hook(module, args, output):  # output: the residual stream [B, L, D]
            self.evals += (output[0] if isinstance(output, (tuple, list)) else output).shape[0] * share
        return hook

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


class SettingRun:
    """One setting's runs on a pipeline: its outputs [(uint8 video, float32 latents)] and what they cost."""

    def __init__(self, call: dict):
        self.call = {"progress": False, **call}
        self.outputs, self.wall, self.calls, self.evals = [], 0.0, 0, 0.0
        self.stages, self.cache, self.peak = {}, {}, None

    def generate(self, pipe, meter: DitMeter, prompt: str, seed: int, keep: bool = True) -> None:
        calls, evals = meter.calls, meter.evals
        _sync(pipe.device)
        start = time.perf_counter()
        out = pipe(prompt, seed=seed, return_video=True, **self.call)
        _sync(pipe.device)
        if not keep:  # a warm-up run: compile and autotuning costs stay out
            return
        self.wall += time.perf_counter() - start
        self.calls, self.evals = self.calls + meter.calls - calls, self.evals + meter.evals - evals
        for k, v in out.timings.items():
            self.stages[k] = self.stages.get(k, 0.0) + v
        for k, v in (getattr(out, "cache", None) or {}).items():  # what a cache= setting says it saved
            self.cache[k] = self.cache.get(k, 0) + v
        if out.peak_memory_gb is not None:
            self.peak = max(self.peak or 0.0, out.peak_memory_gb)
        self.outputs.append((to_uint8(out.video), out.latents.detach().float().cpu()))

    def summary(self) -> dict:
        n = len(self.outputs)
        return {"videos": n, "wall_s": round(self.wall, 4), "wall_s_per_video": round(self.wall / n, 4),
                "stage_s": {k: round(v, 4) for k, v in self.stages.items()}, "dit_calls_per_video": self.calls / n,
                "dit_evals": round(self.evals, 3), "dit_evals_per_video": round(self.evals / n, 3),
                "peak_memory_gb": self.peak, **({"cache": self.cache} if self.cache else {})}


def _take_turns(pipe, settings: list[SettingRun], jobs: list[tuple[str, int]], warmup: bool) -> None:
    """Every job under each of ``settings`` in turn on ``pipe``, after one untimed run each with ``warmup``."""
    meter = DitMeter(pipe)
    try:
        for setting in settings if warmup else ():
            setting.generate(pipe, meter, *jobs[0], keep=False)
        for job in jobs:
            for setting in settings:
                setting.generate(pipe, meter, *job)
    finally:
        meter.close()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compare_settings(pipe, prompts, seeds, ref: dict, cand: dict, *, out_dir=None, warmup: bool = False,
                     with_lpips: bool = True, dimensions=(), weights: BenchWeights | None = None,
                     save_videos: bool = False) -> dict:
    """Generate ``prompts`` x ``seeds`` under the ``ref`` and the ``cand`` setting (dicts of
    :meth:`WanPipeline.__call__` arguments, plus the load-time keys quantize/attention/compile of
    ``openwan.runtime.accel.apply_accelerations``) and compare them: per setting wall time (s, with ``warmup``
    one untimed run first), forward calls of ``pipe.dit`` and ``pipe.dit_low`` (``dit_calls_per_video``) and DiT
    evaluations (``dit_evals``: the rows the transformer blocks ran, in whole-model passes of one guidance
    branch, so guidance batched or not counts the same and a cache that skips blocks or a branch counts less);
    per pair :func:`compare_videos` of the 8-bit frames and the latents; the speed and quality line.

    ``pipe`` is a :class:`WanPipeline` or a function that loads one. On one pipeline the settings take turns
    video by video; load-time keys need the function (each setting gets a fresh pipeline, one after the other).
    Settings are checked before anything runs. With
    ``out_dir``: compare.json, the worst pair's PNG, and with ``save_videos`` every video and its latents under
    ``ref/`` and ``cand/`` (so ``openwan eval compare OUT/ref OUT/cand`` reads them again)."""
    from openwan.pipelines import WanPipeline

    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if not prompts or not seeds:
        raise ValueError("give at least one prompt and one seed to compare the settings on.")
    (ref_call, ref_load), (cand_call, cand_load) = check_setting(ref, "ref"), check_setting(cand, "cand")
    accelerate = _accelerate_fn({"ref": ref_load, "cand": cand_load})
    loader = None if isinstance(pipe, WanPipeline) else pipe
    if loader is None and accelerate is not None:
        raise ValueError("quantize, attention and compile change the model in place; pass a function that loads a "
                         "fresh pipeline (e.g. lambda: WanPipeline.from_pretrained(DIR)) instead of a pipeline.")
    if loader is not None and not callable(loader):
        raise ValueError(f"pipe must be a WanPipeline or a function that loads one; got {type(pipe).__name__}.")
    if save_videos and out_dir is None:
        raise ValueError("save_videos needs out_dir, the folder to write the videos to.")
    dims, missing = build_bench(list(dimensions), weights)
    report: dict = {"mode": "settings", "prompts": prompts, "seeds": seeds,
                    "settings": {"ref": to_json(ref), "cand": to_json(cand)}, "runs": {}, "pairs": [], "refused": []}
    runs, applied = {"ref": SettingRun(ref_call), "cand": SettingRun(cand_call)}, {}
    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    if accelerate is None:  # one pipeline: the settings take turns, so a drift in the machine's speed hits both
        _take_turns(pipe if loader is None else loader(), list(runs.values()), jobs, warmup)
    else:  # load-time settings change the model: a fresh pipeline each, one after the other
        from openwan.models.layers import get_attention_backend, set_attention_backend

        backend = get_attention_backend()  # process-wide: each setting starts from it and it is restored after
        loads = {"ref": ref_load, "cand": cand_load}
        for label in sorted(loads, key=lambda k: not loads[k]):  # a refused acceleration stops before any run
            current = loader()
            try:
                if loads[label]:
                    applied[label] = to_json(accelerate(current, **loads[label]))
                _take_turns(current, [runs[label]], jobs, warmup)
            finally:
                set_attention_backend(backend)
            del current
            _free_memory()
    report["runs"] = {label: {**run.summary(), **({"accelerations": applied[label]} if label in applied else {})}
                      for label, run in runs.items()}
    outputs = {label: run.outputs for label, run in runs.items()}
    names = [(f"p{i:02d}-seed{seed}", prompt, seed) for i, prompt in enumerate(prompts) for seed in seeds]
    worst = None
    for (name, prompt, seed), (ref_video, ref_lat), (cand_video, cand_lat) in zip(names, outputs["ref"],
                                                                                 outputs["cand"]):
        pair = {"name": name, "prompt": prompt, "seed": seed}
        try:
            pair |= compare_videos(ref_video, cand_video, ref_latents=ref_lat, cand_latents=cand_lat,
                                   with_lpips=with_lpips)
        except ValueError as err:  # e.g. a setting that changes the size
            report["refused"].append({"name": name, "reason": f"{name}: {err}"})
            continue
        if dims:
            pair["bench"] = bench_pair(dims, as_video(ref_video, FPS, name, prompt),
                                        as_video(cand_video, FPS, name, prompt))
        report["pairs"].append(pair)
        if worst is None or pair["mse"] > worst[0]["mse"]:
            worst = (pair, ref_video, cand_video)
    if save_videos:
        _save_videos(Path(out_dir), names, outputs)
    ref_run, cand_run = report["runs"]["ref"], report["runs"]["cand"]
    report["speedup"] = round(ref_run["wall_s"] / cand_run["wall_s"], 4) if cand_run["wall_s"] > 0 else math.inf
    finish_report(report, dims, missing, dimensions, worst, out_dir)
    return report


def _save_videos(out_dir: Path, names, outputs: dict) -> None:
    from safetensors.torch import save_file

    for label, runs in outputs.items():
        for (name, _, _), (video, latents) in zip(names, runs):
            save_video(video.float() / 255, out_dir / label / f"{name}.mp4", fps=FPS)
            atomic_write(out_dir / label / f"{name}.safetensors",
                         lambda tmp, z=latents: save_file({"latents": z.contiguous()}, tmp))


__all__ = ["compare_settings", "call_keys", "check_setting", "load_keys", "DitMeter", "SettingRun", "LOAD_KEYS",
           "RUN_KEYS"]
