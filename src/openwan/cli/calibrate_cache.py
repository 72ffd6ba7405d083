"""``openwan calibrate-cache``: sweep each diffusion cache policy's settings on a model and write the speed / quality
curve (calibration.json, calibration.csv, calibration.png) that the presets are chosen from.

Every setting runs on the same prompts, seeds and step counts as an uncached run; each is scored against that run
by the DiT evaluations it ran (block-stack passes, one per CFG branch), its denoising wall time, the PSNR of its
decoded video and the relative L2 error of its final latents.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from openwan.cli.common import check_device, check_number, parse_dtype, parse_size
from openwan.fileio import atomic_write
from openwan.pipelines import WanPipeline
from openwan.pipelines.components import BUNDLED
from openwan.runtime.cache import PRESETS, AttentionCache, Cache, CFGCache, StepCache

HELP = "sweep the diffusion cache policies' settings on a model and write the speed / quality curve"
FAMILIES = ("attention", "cfg", "step", "presets")
DEFAULT_PROMPTS = ("a red circle moving to the right", "a blue square moving up", "a green triangle moving left")


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: its family (a policy or "presets"), a short name, and the cache it runs."""

    family: str
    name: str
    cache: Cache


def sweep(families: tuple[str, ...] = FAMILIES) -> list[Setting]:
    """The settings swept for each family: the interval and window of the attention cache, the interval, start
    and high-band weight of the CFG cache, the threshold, longest skip and start of the step cache,
    and the presets."""
    out = []
    if "attention" in families:
        for k, start, end in ((2, 0.2, 0.9), (3, 0.1, 0.95), (4, 0.1, 0.95)):
            out.append(Setting("attention", f"attention k={k} {start:g}-{end:g}",
                               Cache(attention=AttentionCache(interval=k, start=start, end=end))))
    if "cfg" in families:
        for k, start, hf in ((2, 0.5, 1.0), (3, 0.3, 1.0), (3, 0.3, 1.2)):
            out.append(Setting("cfg", f"cfg k={k} from {start:g} hf={hf:g}",
                               Cache(cfg=CFGCache(interval=k, start=start, hf_weight=hf))))
    if "step" in families:
        for threshold, skip, start in ((0.1, 3, 0.1), (0.2, 3, 0.4), (0.3, 4, 0.3), (0.5, 5, 0.3), (0.5, 5, 0.2),
                                       (1.0, 8, 0.3)):
            out.append(Setting("step", f"step t={threshold:g} skip={skip} from {start:g}",
                               Cache(step=StepCache(threshold=threshold, max_skip=skip, start=start))))
    if "presets" in families:
        out += [Setting("presets", f"preset {name}", cache) for name, cache in PRESETS.items() if cache.active]
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate-cache", help=HELP, description=HELP + ".")
    p.add_argument("--ckpt-dir", default=None, help="a release folder (default: the bundled demo model)")
    p.add_argument("--out", required=True, help="folder for calibration.json, calibration.csv and calibration.png")
    p.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sample-steps", type=int, nargs="+", default=None,
                   help="step counts to measure at (default: the model's default and 50)")
    p.add_argument("--policies", nargs="+", default=list(FAMILIES), choices=FAMILIES,
                   help="which settings to sweep (default: all)")
    p.add_argument("--size", default=None, help="WIDTH*HEIGHT (default: the model's)")
    p.add_argument("--frame-num", type=int, default=None, help="frames, 4n+1 (default: the model's)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16 on GPU, fp32 on CPU)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for steps in args.sample_steps or ():
        check_number("--sample-steps", steps, 1, 1000, example="50")
    size = parse_size(args.size) if args.size else None
    device = check_device(args.device) if args.device else None
    dtype = parse_dtype(args.dtype) if args.dtype else None
    if not all(p.strip() for p in args.prompts):
        raise ValueError("--prompts holds an empty prompt; give each prompt some text.")
    pipe = WanPipeline.from_pretrained(args.ckpt_dir or BUNDLED, device=device, dtype=dtype)
    steps = tuple(args.sample_steps or sorted({pipe.defaults.sample_steps, 50}))
    report = calibrate(pipe, sweep(tuple(args.policies)), args.prompts, args.seeds, steps, size=size,
                       frame_num=args.frame_num, log=print)
    report["model"] = str(args.ckpt_dir or BUNDLED)
    for path in write_report(report, Path(args.out)):
        print(f"saved {path}")
    for n in steps:
        top = best(report["summary"], n)
        if top is not None:
            print(f"{n} steps: most DiT evaluations saved at >= 30 dB everywhere: {top['setting']} "
                  f"({top['evaluations_saved']:.2f}x, {top['psnr_db']:.1f} dB mean, "
                  f"{top['psnr_min_db']:.1f} dB lowest)")
    return 0


def calibrate(pipe: WanPipeline, settings: list[Setting], prompts, seeds, steps_list, *, size=None, frame_num=None,
              log=None) -> dict:
    """Every setting against the uncached run at each step count, prompt and seed: {"runs": one row per run,
    "summary": one row per step count and setting (means over prompts and seeds)}."""
    common = dict(size=size, frame_num=frame_num, progress=False)
    pipe(prompts[0], sample_steps=min(steps_list), seed=seeds[0], return_video=False, **common)  # warm-up, untimed
    runs = []
    for steps in steps_list:
        for prompt in prompts:
            for seed in seeds:
                ref = pipe(prompt, sample_steps=steps, seed=seed, **common)
                for setting in settings:
                    row = {"steps": steps, "prompt": prompt, "seed": seed, "family": setting.family,
                           "setting": setting.name}
                    try:
                        out = pipe(prompt, sample_steps=steps, seed=seed, cache=setting.cache, **common)
                    except ValueError as err:  # the policy does not apply at this step count
                        runs.append({**row, "refused": str(err)})
                        continue
                    runs.append({**row, **_score(ref, out)})
                if log:
                    log(f"{steps} steps, {prompt!r}, seed {seed}: {len(settings)} settings measured")
    return {"settings": {s.name: repr(s.cache) for s in settings}, "runs": runs, "summary": summarize(runs)}


def _score(ref, out) -> dict:
    # openwan.eval imports scikit-image (a third of a second): only a calibration run needs it, not `openwan --help`
    from openwan.eval.compare import latent_rel_error
    from openwan.eval.reconstruction import psnr

    stats = out.cache
    err = latent_rel_error(ref.latents, out.latents)
    attention = stats["attention_computed"] + stats["attention_reused"]
    return {"dit_evaluations": stats["dit_evaluations"], "uncached_dit_evaluations": stats["uncached_dit_evaluations"],
            "attention_reused_share": stats["attention_reused"] / attention if attention else 0.0,
            "denoise_s": out.timings["denoise"], "uncached_denoise_s": ref.timings["denoise"],
            "psnr_db": psnr(ref.video, out.video), "latent_rel_error": err}


def summarize(runs: list[dict]) -> list[dict]:
    """Per step count and setting: mean DiT evaluations saved (uncached / cached), mean wall-time speed-up
    (uncached / cached denoising seconds), mean and lowest video PSNR (dB), mean and largest latent error."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["steps"], r["family"], r["setting"])].append(r)
    rows = []
    for (steps, family, name), group in groups.items():
        done = [r for r in group if "refused" not in r]
        row = {"steps": steps, "family": family, "setting": name, "runs": len(done)}
        if not done:
            rows.append({**row, "refused": group[0]["refused"]})
            continue
        row.update(
            dit_evaluations=_mean(r["dit_evaluations"] for r in done),
            uncached_dit_evaluations=_mean(r["uncached_dit_evaluations"] for r in done),
            evaluations_saved=_mean(r["uncached_dit_evaluations"] / max(r["dit_evaluations"], 1) for r in done),
            attention_reused_share=_mean(r["attention_reused_share"] for r in done),
            wall_speedup=_mean(r["uncached_denoise_s"] / r["denoise_s"] for r in done),
            psnr_db=_mean(r["psnr_db"] for r in done), psnr_min_db=min(r["psnr_db"] for r in done),
            latent_rel_error=_mean(r["latent_rel_error"] for r in done),
            latent_rel_error_max=max(r["latent_rel_error"] for r in done))
        rows.append(row)
    return rows


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


CSV_COLUMNS = ("steps", "family", "setting", "runs", "dit_evaluations", "uncached_dit_evaluations",
               "evaluations_saved", "attention_reused_share", "wall_speedup", "psnr_db", "psnr_min_db",
               "latent_rel_error", "latent_rel_error_max", "refused")


def write_report(report: dict, out: str | Path) -> list[Path]:
    """calibration.json (settings, every run, the summary), calibration.csv (the summary) and calibration.png
    (per step count: evaluations saved and wall-time speed-up against PSNR) in ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "calibration.json", out / "calibration.csv", out / "calibration.png"]
    text = json.dumps(report, indent=1)
    atomic_write(paths[0], lambda tmp: Path(tmp).write_text(text))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in report["summary"]:
        writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(paths[1], lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    atomic_write(paths[2], lambda tmp: _plot(report["summary"], tmp), suffix=".png")
    return paths


def _plot(summary: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary if "refused" not in r]
    steps_list = sorted({r["steps"] for r in rows}) or [0]
    fig, axes = plt.subplots(len(steps_list), 2, figsize=(11, 4.2 * len(steps_list)), squeeze=False)
    markers = {"attention": "s", "cfg": "^", "step": "o", "presets": "*"}
    for (left, right), steps in zip(axes, steps_list):
        for family, marker in markers.items():
            group = [r for r in rows if r["steps"] == steps and r["family"] == family]
            if not group:
                continue
            for ax, key in ((left, "evaluations_saved"), (right, "wall_speedup")):
                ax.scatter([r[key] for r in group], [r["psnr_db"] for r in group], marker=marker,
                           s=120 if family == "presets" else 40, label=family)
                for r in group:
                    ax.annotate(r["setting"].replace("preset ", ""), (r[key], r["psnr_db"]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
        for ax, label in ((left, "DiT evaluations: uncached / cached"), (right, "denoising wall time: uncached / "
                                                                             "cached")):
            ax.set_xlabel(label)
            ax.set_ylabel("video PSNR vs uncached (dB)")
            ax.set_title(f"{steps} steps")
            ax.axhline(30, color="grey", lw=0.5, ls="--")
            ax.grid(alpha=0.3)
        left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def best(summary: list[dict], steps: int, min_psnr: float = 30.0) -> dict | None:
    """The setting with the most evaluations saved at ``steps`` whose lowest PSNR reaches ``min_psnr`` dB."""
    ok = [r for r in summary if r["steps"] == steps and "refused" not in r and r["psnr_min_db"] >= min_psnr]
    return max(ok, key=lambda r: r["evaluations_saved"], default=None)
