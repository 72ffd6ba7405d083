"""Every acceleration setting against the exact uncached reference: speed, DiT evaluations, drift, prompt following.

    python benchmarks/bench_accel.py                      # bundled model, CPU float32, 50 steps and its default 20
    python benchmarks/bench_accel.py --prompts-count 8 --seeds 0 1   # docs/benchmarks.md's run (about 2 h on 2 cores)
    python benchmarks/bench_accel.py --markdown           # also the tables of docs/benchmarks.md
    python benchmarks/bench_accel.py --steps 50 --settings cache-fast,fewer-steps --json accel.json
    python benchmarks/bench_accel.py --ckpt-dir Wan2.1-T2V-1.3B --device cuda --prompts "a fox in snow" --seeds 0

The reference is the plain loop in the pipeline's dtype (float32 on CPU, bfloat16 on CUDA) with the sdpa attention
kernel. Settings: the cache presets, each cache policy alone at its dataclass defaults, guidance unbatched, fewer
steps (by default the count whose DiT evaluations match the fastest cache's on the first prompt and seed: a cache
is worth it only where it beats this on PSNR), 8-bit weights (int8, fp8), every other attention backend, compiled
blocks. A setting this install or device cannot run is listed with its reason.

All settings take turns video by video in one process (so a drift in the machine's speed hits every one), after
one untimed warm-up video each (compile and first-call costs stay out). Call-time settings share the reference's
pipeline; each load-time setting (8-bit weights, attention backend, compile) holds its own, loaded fresh.
Per setting: wall time and its ratio to the reference's, DiT evaluations per video and those saved (counted by
openwan.eval.compare), PSNR / SSIM of the 8-bit frames and the latents' relative error against the reference
(pooled or mean, and the worst pair), and where every prompt is in the bundled model's vocabulary its prompt
following as ``openwan eval prompts`` scores it (the detector's colour / shape / motion / all accuracy); a setting
that follows prompts worse than the reference on any of them is flagged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from openwan.data.synthetic import parse_caption
from openwan.eval.compare import compare_videos, summarize, to_json
from openwan.eval.compare_settings import DitMeter, SettingRun, check_setting
from openwan.eval.detector import detect
from openwan.eval.prompts import ATTRIBUTES, prompt_set
from openwan.eval.prompts import summarize as follow_summary
from openwan.fileio import atomic_write
from openwan.runtime.cache import PRESETS, AttentionCache, CFGCache, StepCache

REFERENCE_BACKEND = "sdpa"
ISSUE_TARGET = {"steps": 50, "evals_ratio": 2.5, "psnr_db": 30.0}  # issue 38: best preset, bundled model
FOLLOW_KEYS = (*ATTRIBUTES, "all")


def default_prompts(count: int = 8) -> list[str]:
    """``count`` prompts spread evenly over openwan.eval.prompts' held-out set."""
    prompts, _ = prompt_set("heldout")
    return [prompts[i] for i in np.linspace(0, len(prompts) - 1, count).round().astype(int)]


def attention_backends() -> list[str]:
    """The attention backends this openwan knows (the reference's alone when it has no backend table)."""
    try:
        from openwan.models.layers import ATTENTION_BACKENDS
    except ImportError:
        return [REFERENCE_BACKEND]
    return list(ATTENTION_BACKENDS)


def settings_for(steps: int, fewer_steps: int) -> dict[str, dict]:
    """Setting name -> WanPipeline arguments (plus the load-time keys quantize / attention / compile)."""
    out = {f"cache-{name}": {"cache": name} for name in ("safe", "fast", "fastest") if name in PRESETS}
    out |= {"attention-cache": {"cache": AttentionCache()}, "cfg-cache": {"cache": CFGCache()},
            "step-cache": {"cache": StepCache()}, "cfg-batch-off": {"cfg_batch": False},
            "fewer-steps": {"sample_steps": fewer_steps}, "int8": {"quantize": "int8"}, "fp8": {"quantize": "fp8"}}
    out |= {f"attention-{b}": {"attention": b} for b in attention_backends() if b != REFERENCE_BACKEND}
    out["compile"] = {"compile": True}
    return {name: {"sample_steps": steps, **setting} for name, setting in out.items()}


def matched_steps(pipe, steps: int, prompt: str, seed: int, preset: str = "fastest") -> int:
    """The step count whose DiT evaluations match cache ``preset``'s at ``steps`` steps on one prompt and seed
    (the cache's own count of evaluations run against an uncached run's)."""
    out = pipe(prompt, seed=seed, sample_steps=steps, cache=preset, return_video=False, progress=False)
    share = out.cache["dit_evaluations"] / out.cache["uncached_dit_evaluations"]
    return max(2, round(steps * share))


@dataclass
class Lane:
    """One setting's runs: its pipeline, meter and attention kernel, and compare's record of what it made."""

    name: str
    setting: dict
    pipe: object = None
    meter: object = None
    backend: str = REFERENCE_BACKEND
    run: object = None
    applied: dict = field(default_factory=dict)
    skipped: str | None = None


def _backend(name: str):
    try:
        from openwan.models.layers import attention_backend
    except ImportError:
        return contextlib.nullcontext()
    return attention_backend(name)


def _accelerate():
    """openwan.runtime.accel.apply_accelerations, or (None, why it is missing)."""
    try:
        from openwan.runtime.accel import apply_accelerations
    except (ImportError, AttributeError) as err:
        return None, f"this install has no openwan.runtime.accel.apply_accelerations ({err})"
    return apply_accelerations, None


def make_lanes(ref_pipe, loader, settings: dict[str, dict], steps: int) -> list[Lane]:
    """A lane per setting after the reference's (the plain loop at ``steps`` steps); a load-time setting gets a
    fresh pipeline from ``loader`` with its accelerations applied, or its reason for not running."""
    apply, missing = _accelerate()
    lanes = [Lane("reference", {"sample_steps": steps}, ref_pipe)]
    for name, setting in settings.items():
        lane = Lane(name, setting)
        call, load = check_setting(setting, name)
        if not load:
            lane.pipe = ref_pipe
        elif apply is None:
            lane.skipped = f"not run: {missing}"
        else:
            pipe = loader()
            try:
                lane.applied = apply(pipe, **load)
            except ValueError as err:
                lane.skipped = f"not run: {err}"
            else:
                lane.pipe, lane.backend = pipe, load.get("attention") or REFERENCE_BACKEND
            finally:
                with contextlib.suppress(ValueError, ImportError):
                    from openwan.models.layers import set_attention_backend
                    set_attention_backend(REFERENCE_BACKEND)  # the backend is process-wide: each lane sets its own
        lane.setting = call
        lanes.append(lane)
    return lanes


def run_lanes(lanes: list[Lane], jobs: list[tuple[str, int]], warmup: bool = True) -> float:
    """Every job under every lane, taking turns job by job, after one untimed run per lane; returns seconds."""
    live = [lane for lane in lanes if lane.skipped is None]
    meters = {}
    for lane in live:
        if id(lane.pipe) not in meters:
            meters[id(lane.pipe)] = DitMeter(lane.pipe)
        lane.meter, lane.run = meters[id(lane.pipe)], SettingRun(lane.setting)
    start = time.perf_counter()
    try:
        todo = ([jobs[0]] if warmup else []) + jobs
        for job_index, job in enumerate(todo):
            for lane in live:
                with _backend(lane.backend):
                    lane.run.generate(lane.pipe, lane.meter, *job, keep=job_index > 0 or not warmup)
            print(f"  video {job_index + 1}/{len(todo)}{' (warm-up)' if warmup and job_index == 0 else ''} under "
                  f"{len(live)} settings, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    finally:
        for meter in meters.values():
            meter.close()
    return time.perf_counter() - start


def prompt_following(outputs, jobs, targets) -> dict | None:
    """openwan eval prompts' accuracy (colour, shape, motion, all) of the videos, None without targets."""
    if targets is None:
        return None
    samples = []
    for (video, _), (prompt, _) in zip(outputs, jobs):
        target = targets[prompt]
        seen = detect(video.float() / 255)
        samples.append({"target": dict(zip(ATTRIBUTES, target)), "match": seen.matches(*target)})
    return follow_summary(samples)["accuracy"]


def rows_for(lanes: list[Lane], jobs, targets) -> list[dict]:
    """One row per lane: speed, evaluations, drift against the reference, prompt following."""
    ref = lanes[0]
    ref_run = ref.run.summary()
    ref_follow = prompt_following(ref.run.outputs, jobs, targets)
    rows = [{"setting": "reference", "wall_s": ref_run["wall_s"], "speedup": 1.0,
             "dit_evals_per_video": ref_run["dit_evals_per_video"], "evals_saved_per_video": 0.0,
             "evals_ratio": 1.0, "prompt_following": ref_follow}]
    for lane in lanes[1:]:
        row = {"setting": lane.name, "call": to_json({k: repr(v) if k == "cache" and not isinstance(v, str) else v
                                                      for k, v in lane.setting.items()})}
        if lane.skipped:
            rows.append(row | {"skipped": lane.skipped})
            continue
        run = lane.run.summary()
        pairs = [compare_videos(rv, cv, ref_latents=rl, cand_latents=cl, with_lpips=False)
                 for (rv, rl), (cv, cl) in zip(ref.run.outputs, lane.run.outputs)]
        evals = run["dit_evals_per_video"]
        row |= {"wall_s": run["wall_s"], "speedup": round(ref_run["wall_s"] / run["wall_s"], 4),
                "dit_evals_per_video": evals, "evals_saved_per_video": round(ref_run["dit_evals_per_video"] - evals, 3),
                "evals_ratio": round(ref_run["dit_evals_per_video"] / evals, 4) if evals else math.inf,
                **{k: v for k, v in summarize(pairs).items() if k != "lpips_not_measured"}}
        follow = prompt_following(lane.run.outputs, jobs, targets)
        if follow is not None:
            row["prompt_following"] = follow
            row["follows_worse"] = [k for k in FOLLOW_KEYS if follow[k] < ref_follow[k]]
        if lane.applied:
            row["accelerations"] = to_json(lane.applied)
        rows.append(row)
    return rows


def verdicts(rows: list[dict], steps: int) -> list[str]:
    """Sentences: each cache against fewer steps on PSNR, and (at 50 steps) the issue's target for the presets."""
    by = {r["setting"]: r for r in rows if "skipped" not in r}
    lines, base = [], by.get("fewer-steps")
    for name, row in by.items():
        if base is None or not (name.startswith("cache-") or name.endswith("-cache")):
            continue
        if row["dit_evals_per_video"] > base["dit_evals_per_video"]:
            verdict = "no verdict: it spends more evaluations"
        else:
            verdict = "beats it" if row["psnr_db"] > base["psnr_db"] else "does not beat it"
        lines.append(f"{name}: {row['dit_evals_per_video']:g} evals at {row['psnr_db']:.2f} dB against fewer steps "
                     f"({base['dit_evals_per_video']:g} evals) at {base['psnr_db']:.2f} dB: {verdict}")
    presets = [by[n] for n in ("cache-safe", "cache-fast", "cache-fastest") if n in by]
    if steps == ISSUE_TARGET["steps"] and presets:
        met = [r for r in presets if r["evals_ratio"] >= ISSUE_TARGET["evals_ratio"]
               and r["psnr_db"] >= ISSUE_TARGET["psnr_db"]]
        figures = "; ".join(f"{r['setting']} {r['evals_ratio']:.2f}x fewer at {r['psnr_db']:.2f} dB" for r in presets)
        lines.append(f"issue target (>= {ISSUE_TARGET['evals_ratio']}x fewer DiT evaluations at >= "
                     f"{ISSUE_TARGET['psnr_db']:g} dB, {steps} steps): "
                     + (f"MET by {', '.join(r['setting'] for r in met)}" if met else "MISSED") + f" ({figures})")
    flagged = [f"{r['setting']} ({', '.join(r['follows_worse'])})" for r in by.values() if r.get("follows_worse")]
    if flagged:
        lines.append("prompt following below the reference's: " + "; ".join(flagged))
    return lines


def _pct(follow: dict | None) -> str:
    return "/".join(f"{100 * follow[k]:.0f}" for k in FOLLOW_KEYS) if follow else "—"


def markdown(rows: list[dict], steps: int, videos: int) -> str:
    """The table of docs/benchmarks.md for one step count."""
    out = [f"{steps} steps, {videos} videos per setting; prompt following: colour/shape/motion/all in %.", "",
           "| setting | wall vs reference | DiT evals per video (saved) | PSNR dB (worst) | SSIM (worst) | "
           "latent error (worst) | prompt following |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['setting']} | {r['skipped']} | | | | | |")
            continue
        if r["setting"] == "reference":
            out.append(f"| reference ({r['wall_s'] / videos:.2f} s per video) | 1.00 | {r['dit_evals_per_video']:g} | "
                       f"— | — | — | {_pct(r['prompt_following'])} |")
            continue
        flag = " **below ref**" if r.get("follows_worse") else ""
        out.append(f"| {r['setting']} | **{1 / r['speedup']:.2f}** ({r['speedup']:.2f}x) | "
                   f"{r['dit_evals_per_video']:g} ({r['evals_saved_per_video']:g}) | {r['psnr_db']:.2f} "
                   f"({r['psnr_db_min']:.2f}) | {r['ssim']:.4f} ({r['ssim_min']:.4f}) | {r['latent_rel_error']:.3g} "
                   f"({r['latent_rel_error_max']:.3g}) | {_pct(r.get('prompt_following'))}{flag} |")
    return "\n".join(out)


def text_table(rows: list[dict]) -> str:
    """The rows as fixed-width text."""
    out = [f"{'setting':18s} {'wall x':>7s} {'speedup':>7s} {'evals':>7s} {'saved':>6s} {'PSNR':>7s} {'worst':>7s} "
           f"{'SSIM':>6s} {'worst':>6s} {'lat.err':>8s} {'worst':>8s}  follow c/s/m/all %"]
    for r in rows:
        if "skipped" in r:
            out.append(f"{r['setting']:18s} {r['skipped']}")
        elif r["setting"] == "reference":
            out.append(f"{'reference':18s} {1:7.2f} {1:7.2f} {r['dit_evals_per_video']:7g} {0:6g} "
                       f"{'':>47s}  {_pct(r['prompt_following'])}")
        else:
            out.append(f"{r['setting']:18s} {1 / r['speedup']:7.2f} {r['speedup']:7.2f} "
                       f"{r['dit_evals_per_video']:7g} {r['evals_saved_per_video']:6g} {r['psnr_db']:7.2f} "
                       f"{r['psnr_db_min']:7.2f} {r['ssim']:6.4f} {r['ssim_min']:6.4f} {r['latent_rel_error']:8.3g} "
                       f"{r['latent_rel_error_max']:8.3g}  {_pct(r.get('prompt_following'))}"
                       + ("  BELOW REF" if r.get("follows_worse") else ""))
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-dir", default=None, help="release folder (default: the bundled demo model)")
    parser.add_argument("--steps", default="50,default",
                        help="comma-separated step counts; 'default' is the model's (default: 50,default)")
    parser.add_argument("--prompts", nargs="+", default=None,
                        help="default: the first --prompts-count of openwan eval prompts' held-out set")
    parser.add_argument("--prompts-count", type=int, default=2)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--settings", default=None, help="comma-separated setting names (default: every one)")
    parser.add_argument("--fewer-steps", type=int, default=None,
                        help="the fewer-steps baseline (default: matched to the fastest cache's evaluations)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--json", default=None, metavar="OUT", help="write every row and the run's facts here")
    parser.add_argument("--markdown", action="store_true", help="also print the tables for docs/benchmarks.md")
    return parser


def _steps(text: str, default: int) -> list[int]:
    out = []
    for item in text.split(","):
        value = default if item.strip() == "default" else int(item)
        if value < 2:
            raise ValueError(f"--steps takes step counts of at least 2 or 'default'; got {item!r}.")
        if value not in out:
            out.append(value)
    return out


def _names(text: str | None) -> list[str] | None:
    """The settings --settings picks, checked against the known names (None: every one)."""
    if text is None:
        return None
    known = settings_for(2, 2)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown setting {', '.join(map(repr, unknown)) or 'list'}; --settings takes "
                         f"comma-separated names of: {', '.join(known)}.")
    return names


def main(argv=None, loader=None) -> dict:
    """Run the benchmark; ``loader`` (a function returning a fresh WanPipeline) replaces --ckpt-dir. Returns the
    report written by --json: {"runs": [{steps, rows, lines, ...}], "load_average": ...}."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if loader is None:
        from openwan.pipelines import WanPipeline
        from openwan.pipelines.components import BUNDLED

        ckpt = Path(args.ckpt_dir) if args.ckpt_dir else BUNDLED
        def loader():
            return WanPipeline.from_pretrained(ckpt, device=device, dtype=dtype)
    names = _names(args.settings)
    if args.prompts_count < 1:
        raise SystemExit(f"--prompts-count must be at least 1; got {args.prompts_count}.")
    prompts = args.prompts or default_prompts(args.prompts_count)
    try:
        targets = {p: parse_caption(p) for p in prompts}
    except ValueError:
        targets = None  # prompts outside the demo model's vocabulary: no prompt following
    pipe = loader()
    steps_list = _steps(args.steps, pipe.defaults.for_task("t2v").sample_steps)
    jobs = [(p, s) for p in prompts for s in args.seeds]
    report = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "prompts": prompts,
              "seeds": args.seeds, "threads": torch.get_num_threads(), "runs": [],
              "load_average_start": os.getloadavg()}
    for steps in steps_list:
        fewer = args.fewer_steps or matched_steps(pipe, steps, *jobs[0])
        settings = settings_for(steps, fewer)
        settings = {n: settings[n] for n in names or settings}
        lanes = make_lanes(pipe, loader, settings, steps)
        load = os.getloadavg()
        seconds = run_lanes(lanes, jobs)
        rows = rows_for(lanes, jobs, targets)
        run = {"steps": steps, "fewer_steps": fewer, "videos": len(jobs), "seconds": round(seconds, 1),
               "load_average": [load, os.getloadavg()], "rows": rows, "lines": verdicts(rows, steps)}
        report["runs"].append(run)
        print(f"\n== {steps} steps, {len(jobs)} videos per setting, {seconds:.0f} s; load average "
              f"{load[0]:.2f} -> {os.getloadavg()[0]:.2f} ({torch.get_num_threads()} threads)")
        print(text_table(rows))
        print("\n".join(run["lines"]), flush=True)
        del lanes
    report["load_average_end"] = os.getloadavg()
    if args.markdown:
        for run in report["runs"]:
            print("\n" + markdown(run["rows"], run["steps"], run["videos"]))
    if args.json:
        text = json.dumps(to_json(report), indent=2, allow_nan=False)
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
