"""The VAE compression study, the Python half of ``recipes/vae_compression.sh`` (which trains the three VAEs first).

For each arm (a: ``demo``, 4x8x8 z16; b: ``demo-22``, 4x16x16 z64; c: ``demo-dcae``, 4x32x32 z256 — the same
5x8x8x16 = 5,120 latent numbers per 17-frame 64x64 clip):

1. reconstruction: PSNR / SSIM on held-out clips like the training data (``openwan.eval.reconstruction``), and the
   encode / decode time of one clip;
2. with a denoising decoder (``WORK/ARM/vae-noisy``, from ``train-vae --decode-noise``): PSNR of decoding latents
   noised to a few small levels, by the trained decoder, the denoising one and its control (``WORK/ARM/vae-plain``,
   the same fine-tune on clean latents);
3. the latent cache of the training clips (the text cache and text encoder are copied from the demo run's work
   folder, read only), a DiT of the same preset, steps and batch on each latent space (its in/out channels set to
   the arm's z), a release folder, and ``openwan eval prompts`` on the held-out combinations.

Every step skips itself when its output exists, phase by phase over the arms (all reconstructions, then all caches,
then all DiTs, then all evaluations), so a run stopped by its time budget still holds whole phases. The table goes
to ``WORK/table.md`` and ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from demo_model import write_dit_config
from demo_text import TEXT_VOCABULARY_WEIGHT, pretrained_text_encoder

from openwan.checkpoints.convert import save_sharded, write_json
from openwan.checkpoints.release import save_release
from openwan.configs import DIT_PRESETS
from openwan.data.buckets import Bucket
from openwan.data.cache import TEXT_INDEX, build_latent_cache, build_text_cache
from openwan.data.manifest import read_manifest
from openwan.eval.reconstruction import evaluate_vae, psnr, synthetic_clips
from openwan.models import WanDiT, WanVAE
from openwan.train.checkpoint import checkpoint_dit, latest_checkpoint, list_checkpoints

ARMS = {"a": "demo", "b": "demo-22", "c": "demo-dcae"}
VAE_FILE = "Wan2.1_VAE.pth"  # what openwan train-vae's stages 2-3 write, whatever the architecture
NOISE_LEVELS = (0.0, 0.025, 0.05, 0.1)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------------------- reconstruction


@torch.no_grad()
def coding_times(work: Path, arms: list[str], repeats: int = 5) -> dict:
    """Median milliseconds to encode, and to decode, one 17-frame 64x64 clip (batch 1, float32, one process) per
    arm; the arms take turns clip by clip, so a machine whose load changes slows each of them alike."""
    out = work / "coding_times.json"
    found = _read_json(out) or {}
    if all(a in found for a in arms):
        return found
    vaes = {a: WanVAE.from_pretrained(work / a / "vae" / VAE_FILE, dtype=torch.float32).eval() for a in arms}
    videos = [c.permute(3, 0, 1, 2)[None] * 2 - 1 for _, c in synthetic_clips(repeats, seed=7, paths="reversible")]
    times: dict[str, tuple[list[float], list[float]]] = {a: ([], []) for a in arms}
    for vae in vaes.values():
        vae.decode(vae.encode(videos[0]))  # warm-up
    for video in videos:
        for arm, vae in vaes.items():
            start = time.perf_counter()
            z = vae.encode(video)
            mid = time.perf_counter()
            vae.decode(z)
            times[arm][0].append(mid - start)
            times[arm][1].append(time.perf_counter() - mid)
    result = {a: {"encode_ms": round(1000 * statistics.median(e), 1),
                  "decode_ms": round(1000 * statistics.median(d), 1), "threads": torch.get_num_threads()}
              for a, (e, d) in times.items()}
    _write_json(out, result)
    return result


def reconstruction(work: Path, arm: str, clips: int) -> dict:
    """PSNR / SSIM on ``clips`` held-out clips on the training data's paths, and the coding times."""
    out = work / arm / "recon"
    found = _read_json(out / "summary.json")
    if found is not None:
        return found
    vae = WanVAE.from_pretrained(work / arm / "vae" / VAE_FILE, dtype=torch.float32).eval()
    report = evaluate_vae(vae, out, num_synthetic=clips, photos=(), paths="reversible", progress=False)
    summary = {"psnr": report["synthetic"]["psnr"], "psnr_min": report["synthetic"]["psnr_min"],
               "ssim": report["synthetic"]["ssim"], "vae_params": sum(p.numel() for p in vae.parameters()),
               "z_dim": vae.cfg.z_dim,
               "compression": [vae.cfg.temporal_compression, vae.cfg.spatial_compression,
                               vae.cfg.spatial_compression]}
    _write_json(out / "summary.json", summary)
    return summary


@torch.no_grad()
def noisy_decoding(work: Path, arm: str, clips: int) -> dict | None:
    """PSNR of decoding latents noised to each of NOISE_LEVELS (flow-matching noise in the normalised latent
    space, one fixed draw per clip) by the arm's decoder, by ``WORK/ARM/vae-noisy``'s denoising one and, when
    present, by ``WORK/ARM/vae-plain``'s (the same fine-tune on clean latents: the denoising one's control);
    None without a denoising decoder."""
    out = work / arm / "noisy_decoding.json"
    if not (work / arm / "vae-noisy" / VAE_FILE).is_file():
        return None
    found = _read_json(out)
    if found is not None:
        return found
    decoders = {name: WanVAE.from_pretrained(work / arm / folder / VAE_FILE, dtype=torch.float32).eval()
                for name, folder in (("trained", "vae"), ("plain", "vae-plain"), ("denoising", "vae-noisy"))
                if (work / arm / folder / VAE_FILE).is_file()}
    encoder = decoders["trained"]  # every decoder shares its encoder (--freeze-encoder) and statistics
    data = [c for _, c in synthetic_clips(clips, seed=3, paths="reversible")]
    gen = torch.Generator().manual_seed(0)
    scores: dict[str, list[list[float]]] = {name: [[] for _ in NOISE_LEVELS] for name in decoders}
    for clip in data:
        video = clip.permute(3, 0, 1, 2)[None] * 2 - 1
        z = encoder.encode(video)
        noise = torch.randn(z.shape, generator=gen)
        for k, sigma in enumerate(NOISE_LEVELS):
            for name, vae in decoders.items():
                frames = ((vae.decode((1 - sigma) * z + sigma * noise)[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
                scores[name][k].append(psnr(clip, frames))
    result = {"levels": list(NOISE_LEVELS),
              **{name: [round(statistics.mean(v), 2) for v in per_level] for name, per_level in scores.items()}}
    _write_json(out, result)
    return result


def vae_training(run: Path) -> dict:
    """Steps, last-20-step mean squared error, summed step seconds and the median step's seconds of a ``train-vae``
    run (its metrics.jsonl), up to its newest checkpoint (the weights it exported). On a shared machine the median
    times the steps is the steadier cost: a stretch of steps slowed by another process moves the sum, not it."""
    last = max(step for step, _ in list_checkpoints(run))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [m for m in logged if m["step"] <= last]
    tail = [m["l2"] for m in logged[-20:] if "l2" in m]
    times = [m["step_time"] for m in logged]
    return {"steps": logged[-1]["step"] if logged else 0, "seconds": round(sum(times), 1),
            "median_step": round(statistics.median(times), 4) if times else None,
            "final_mse": round(statistics.mean(tail), 5) if tail else None}


# ------------------------------------------------------------------------------------------- the DiT


def prepare_source(folder: Path, clips: int = 4320) -> Path:
    """A stand-in for the demo recipe's work folder holding what the study reads from it, built as the recipe builds
    it (so that the study runs without the recipe's VAE and DiT stages): ``data/train`` (``clips`` synthetic clips
    on reversible paths with varied captions, seed 0), the pre-trained ``text_encoder`` and the text cache
    ``cache/text*`` of the training clips. Each part skips itself when it exists."""
    manifest = folder / "data" / "train" / "manifest.jsonl"
    if not manifest.is_file():
        subprocess.run([sys.executable, "-m", "openwan", "data", "synth", "--out", str(manifest.parent), "--num",
                        str(clips), "--seed", "0", "--paths", "reversible", "--captions", "varied"], check=True)
    if not (folder / "cache" / TEXT_INDEX).is_file():
        encoder, tokenizer = pretrained_text_encoder(folder / "text_encoder", vocabulary_weight=TEXT_VOCABULARY_WEIGHT,
                                                     captions="varied")
        with torch.no_grad():
            build_text_cache(read_manifest(manifest), encoder, tokenizer, folder / "cache",
                             text_len=DIT_PRESETS["demo-small"].text_len)
    return folder


def copy_text_side(work: Path, source: Path) -> None:
    """The demo run's text encoder (``SOURCE/text_encoder``) and text cache (``SOURCE/cache/text*``) into WORK,
    copied: the source folder is only read."""
    if not (work / "text_encoder" / "config.json").is_file():
        shutil.copytree(source / "text_encoder", work / "text_encoder.partial", dirs_exist_ok=True)
        (work / "text_encoder.partial").rename(work / "text_encoder")
    text = work / "text-cache"
    if not (text / TEXT_INDEX).is_file():
        text.mkdir(parents=True, exist_ok=True)
        for path in sorted((source / "cache").glob("text*")):
            if path.name != TEXT_INDEX:
                shutil.copy2(path, text / path.name)
        shutil.copy2(source / "cache" / TEXT_INDEX, text / TEXT_INDEX)  # last: its presence marks the copy whole


def latent_cache(work: Path, arm: str, manifest: Path, clips: int) -> Path:
    """The arm's latents of the first ``clips`` training clips, beside a copy of the text cache."""
    cache = work / arm / "cache"
    if not (cache / TEXT_INDEX).is_file():
        records = read_manifest(manifest)[:clips]
        vae = WanVAE.from_pretrained(work / arm / "vae" / VAE_FILE, dtype=torch.float32).eval()
        with torch.no_grad():
            build_latent_cache(records, vae, [Bucket(17, 64, 64)], cache, batch_size=16, num_workers=1)
        for path in (work / "text-cache").iterdir():
            if path.name != TEXT_INDEX:
                shutil.copy2(path, cache / path.name)
        shutil.copy2(work / "text-cache" / TEXT_INDEX, cache / TEXT_INDEX)
    return cache


def dit_init(work: Path, arm: str, preset: str, z_dim: int, seed: int) -> Path:
    """A random-init DiT of ``preset`` with ``z_dim`` input and output channels, as a folder ``openwan train``'s
    model.path loads (the same seed for every arm: only the patch embedding and head differ in shape)."""
    folder = work / arm / "dit-init"
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        cfg = DIT_PRESETS[preset].to_dict() | {"in_dim": z_dim, "out_dim": z_dim}
        dit = WanDiT.from_config(cfg)
        tmp = work / arm / "dit-init.partial"
        tmp.mkdir(parents=True, exist_ok=True)
        write_json(tmp / "config.json", dit.cfg.to_dict())  # a release folder's DiT layout
        save_sharded({k: v.detach().contiguous() for k, v in dit.state_dict().items()}, tmp)
        tmp.rename(folder)
    return folder


def train_dit(work: Path, arm: str, args: argparse.Namespace, z_dim: int) -> float:
    """``openwan train`` of the arm's DiT to ``args.dit_steps``; returns the seconds it took (0 when already done)."""
    run = (work / arm / "dit").resolve()
    found = list_checkpoints(run) if run.is_dir() else []
    if found and found[-1][0] >= args.dit_steps:
        timing = _read_json(work / arm / "dit_time.json")
        return timing["seconds"] if timing else 0.0
    init = dit_init(work, arm, args.dit_preset, z_dim, args.dit_seed).resolve()
    config = write_dit_config(work / arm / "dit.yaml", cache=(work / arm / "cache").resolve(), steps=args.dit_steps,
                              first_frame=0.3, compile_blocks=args.compile, out=run, seed=args.dit_seed,
                              preset=args.dit_preset, batch_size=args.dit_batch_size, shift=2.0, lr=args.dit_lr,
                              init=init, warmup_steps=min(100, args.dit_steps // 10))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "openwan", "train", "--config", str(config)], check=True)
    seconds = time.perf_counter() - start
    _write_json(work / arm / "dit_time.json", {"seconds": round(seconds, 1), "steps": args.dit_steps})
    return seconds


def prompt_following(work: Path, arm: str, seeds: list[int], steps: int, limit: int = 0) -> dict:
    """The release folder (the DiT's EMA weights, the arm's VAE, the copied text encoder) and ``openwan eval
    prompts`` on the held-out combinations; returns its summary."""
    out = work / arm / "eval"
    if not (out / "report.json").is_file():
        release = work / arm / "release"
        if not (release / "config.json").is_file():
            folder = work / "text_encoder"  # copied whole, so it records the captions it was pre-trained on
            encoder, tokenizer = pretrained_text_encoder(folder, captions=(folder / "captions.txt").read_text().strip())
            dit = checkpoint_dit(latest_checkpoint(work / arm / "dit"), "ema")
            vae = WanVAE.from_pretrained(work / arm / "vae" / VAE_FILE, dtype=torch.float32)
            save_release(release, dit=dit, vae=vae, text_encoder=encoder, tokenizer=tokenizer)
        subprocess.run([sys.executable, "-m", "openwan", "eval", "prompts", "--ckpt-dir", str(release), "--out",
                        str(out), "--seeds", *map(str, seeds), "--sample-steps", str(steps), "--no-videos",
                        *(["--limit", str(limit)] if limit else [])], check=True)
    return json.loads((out / "report.json").read_text())


# ------------------------------------------------------------------------------------------- the table


def table(work: Path, rows: dict[str, dict]) -> str:
    """The study's Markdown table (one row per arm with results so far)."""
    head = ("| arm | VAE | compression, z | VAE params | VAE steps, s (steps x median step) | PSNR dB (min) | SSIM | "
            "encode / decode ms per clip | DiT steps, s | colour / shape / motion / all |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for arm, row in rows.items():
        rec = row.get("recon")
        if rec is None:
            continue
        t, s, _ = rec["compression"]
        acc = row.get("prompts")
        timing = row.get("coding")
        speed = f"{timing['encode_ms']:.0f} / {timing['decode_ms']:.0f}" if timing else "not run"
        score = (" / ".join(f"{100 * acc[k]:.0f}%" for k in ("colour", "shape", "motion", "all"))
                 if acc else "not run")
        dit = f"{row['dit']['steps']}, {row['dit_seconds']:.0f}" if row.get("dit_seconds") else "not run"
        vae = row.get("vae_train") or {"steps": 0, "seconds": 0}
        image = row.get("vae_image_train")
        vae_steps = f"{image['steps']} + {vae['steps']}" if image else f"{vae['steps']}"
        vae_seconds = sum(r["steps"] * (r.get("median_step") or 0) or r["seconds"] for r in (vae, image) if r)
        lines.append(f"| {arm} | `{ARMS[arm]}` | {t}x{s}x{s}, z{rec['z_dim']} | {rec['vae_params'] / 1e6:.1f} M | "
                     f"{vae_steps}, {vae_seconds:.0f} | "
                     f"{rec['psnr']:.2f} ({rec['psnr_min']:.2f}) | {rec['ssim']:.3f} | "
                     f"{speed} | {dit} | {score} |")
    text = head + "\n".join(lines) + "\n"
    (work / "table.md").write_text(text)
    _write_json(work / "results.json", rows)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="the study's folder (WORK/ARM/vae/ written by the shell script)")
    parser.add_argument("--manifest", type=Path, required=True, help="the training clips' manifest")
    parser.add_argument("--text-source", type=Path, required=True,
                        help="a demo recipe work folder whose text_encoder/ and cache/text* are copied (read only)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--recon-clips", type=int, default=36)
    parser.add_argument("--noisy-clips", type=int, default=8,
                        help="held-out clips the denoising decoder is measured on (0: not measured)")
    parser.add_argument("--coding-times", action="store_true",
                        help="measure the arms' encode / decode times, taking turns (run once all VAEs exist)")
    parser.add_argument("--cache-clips", type=int, default=4320, help="training clips whose latents are cached")
    parser.add_argument("--dit-steps", type=int, default=800, help="every arm's DiT steps (0: no DiT)")
    parser.add_argument("--dit-batch-size", type=int, default=16)
    parser.add_argument("--dit-preset", default="demo-small", choices=[n for n in DIT_PRESETS if n.startswith("demo")])
    parser.add_argument("--dit-lr", type=float, default=1e-3)
    parser.add_argument("--dit-seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT's blocks")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-steps", type=int, default=20, help="sampler steps of openwan eval prompts")
    parser.add_argument("--eval-limit", type=int, default=0, help="evaluate only the first N prompts (0: all 18)")
    parser.add_argument("--prepare-source", action="store_true",
                        help="only build the clips, text encoder and text cache the study reads into the folder "
                             "that --text-source names (as the demo recipe would), then stop")
    args = parser.parse_args(argv)
    work = args.work
    if args.prepare_source:
        print(f"wrote {prepare_source(args.text_source)}")
        return 0
    arms = [a for a in args.arms if (work / a / "vae" / VAE_FILE).is_file()]
    if not arms:
        raise SystemExit(f"no trained VAE under {work}/ARM/vae/; run recipes/vae_compression.sh first.")
    rows: dict[str, dict] = {a: {"preset": ARMS[a]} for a in arms}
    for arm in arms:
        rows[arm]["recon"] = reconstruction(work, arm, args.recon_clips)
        rows[arm]["noisy_decoding"] = noisy_decoding(work, arm, args.noisy_clips) if args.noisy_clips else None
        rows[arm]["vae_train"] = vae_training(work / arm / "vae")
        if (work / arm / "vae-image" / "metrics.jsonl").is_file():
            rows[arm]["vae_image_train"] = vae_training(work / arm / "vae-image")
    if args.coding_times:
        timings = coding_times(work, arms)  # read back whole when measured before, possibly with other arms
        for arm in arms:
            rows[arm]["coding"] = timings.get(arm)
    elif (found := _read_json(work / "coding_times.json")) is not None:
        for arm in arms:
            rows[arm]["coding"] = found.get(arm)
    print(table(work, rows), flush=True)
    if args.dit_steps <= 0:
        return 0
    copy_text_side(work, args.text_source)
    for arm in arms:
        latent_cache(work, arm, args.manifest, args.cache_clips)
    for arm in arms:
        rows[arm]["dit_seconds"] = train_dit(work, arm, args, rows[arm]["recon"]["z_dim"])
        rows[arm]["dit"] = {"steps": args.dit_steps, "batch": args.dit_batch_size, "preset": args.dit_preset}
        table(work, rows)
    for arm in arms:
        report = prompt_following(work, arm, args.eval_seeds, args.eval_steps, args.eval_limit)
        rows[arm]["prompts"] = report["accuracy"]
        print(table(work, rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
