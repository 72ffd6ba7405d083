"""The bundled demo model, the Python half of ``recipes/demo_model.sh``: text encoder, caches, DiT, release.

Run after the script's data and VAE stages (``python recipes/demo_model.py WORK``; the script does it):

1. the text encoder: the ``demo`` umT5 preset with ByT5's byte-level tokenizer, pre-trained on the training split's
   captions (``demo_text.py``: span corruption plus a vocabulary objective that makes synonyms alike), then frozen
   as Wan's umT5 is;
2. the latent and text caches of every training clip (``openwan.data.cache``), so the DiT never runs the VAE or
   the encoder;
3. the DiT, trained by ``openwan train`` from a config this file writes; by default then a copy of it fine-tuned
   on the high noise levels only, the two shipped as Wan2.2 A14B-style experts;
4. the release folder (official layout, so the ordinary loaders and ``openwan generate`` read it).

Every step skips itself when its output exists, so a stopped run continues. The stage times, the evaluation of the
model this recipe ships and what each option changed are in docs/demo_model.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from demo_text import TEXT_VOCABULARY_WEIGHT, pretrained_text_encoder

from openwan.checkpoints.release import save_release
from openwan.configs import DIT_PRESETS
from openwan.data.buckets import Bucket
from openwan.data.cache import build_latent_cache, build_text_cache
from openwan.data.manifest import read_manifest
from openwan.models import WanVAE
from openwan.pipelines.components import BUNDLED
from openwan.train.checkpoint import checkpoint_dit, latest_checkpoint, list_checkpoints

DIT_CONFIG = """\
model: {{preset: {preset}{init}}}
data: {{cache_dir: {cache}}}
stages:
{stages}
optim: {{lr: {lr}, weight_decay: 0.01, grad_clip: 1.0}}
schedule: {{kind: cosine, warmup_steps: {warmup}, min_lr_ratio: 0.1}}
timesteps: {{mode: logit_normal, shift: {shift}, logit_std: {logit_std}, first_frame: {first_frame}{mix}}}
ema: {{decay: 0.998}}
text_dropout: 0.1
checkpoint: {{every: 500, keep_last: 2}}
compile: {compile}
log: {{every: 50, progress: false, tensorboard: false}}
seed: {seed}
output_dir: {out}
"""
STAGE = "  - {{name: {name}, steps: {steps}, batch_size: {batch_size}, {extra}buckets: [[17, 64, 64]]}}"
# The high-noise stage's levels (shift 3, logit std 2: 44% of the samples at sigma > 0.8), and the learning rate the
# stage after it restarts its cosine at.
HIGH_NOISE = "{{mode: logit_normal, shift: 3.0, logit_std: 2.0, first_frame: {first_frame}}}"
AFTER_HIGH_LR = 3.0e-4


def demo_text_encoder(work: Path, steps: int = 2000, vocabulary_weight: float = TEXT_VOCABULARY_WEIGHT):
    """The recipe's text encoder: ``WORK/text_encoder``, pre-trained there on first use with the vocabulary
    objective at ``vocabulary_weight``."""
    return pretrained_text_encoder(work / "text_encoder", steps, vocabulary_weight)


def demo_vae_file(work: Path) -> Path:
    """The VAE the release ships: the newest decoder of the recipe's — widened, else decoder-tuned, else stage 2's
    own. All share stage 2's encoder, so the DiT's latents fit each of them."""
    for step in ("vae-wide", "vae-decoder"):
        tuned = work / step / "Wan2.1_VAE.pth"
        if tuned.is_file():
            return tuned
    return work / "vae2" / "Wan2.1_VAE.pth"


def build_caches(work: Path, text_vocabulary_weight: float = TEXT_VOCABULARY_WEIGHT, dit_preset: str = "demo") -> Path:
    """The latents (stage 2's encoder) and text-encoder states of every training clip, under ``WORK/cache``."""
    cache = work / "cache"
    records = read_manifest(work / "data" / "train" / "manifest.jsonl")
    vae = WanVAE.from_pretrained(work / "vae2" / "Wan2.1_VAE.pth")
    encoder, tokenizer = demo_text_encoder(work, vocabulary_weight=text_vocabulary_weight)
    with torch.no_grad():
        build_latent_cache(records, vae, [Bucket(17, 64, 64)], cache, batch_size=16, num_workers=1)
        build_text_cache(records, encoder, tokenizer, cache, text_len=DIT_PRESETS[dit_preset].text_len)
    return cache


def write_release(work: Path, out: Path, boundary: float | None = None) -> Path:
    """The release folder from the newest DiT checkpoint's EMA weights, the VAE and the text encoder; with a
    ``boundary``, two experts in the Wan2.2 A14B layout: ``WORK/dit-high`` for the high noise levels, ``WORK/dit``
    (the run it was forked from) for the low ones."""
    vae = WanVAE.from_pretrained(demo_vae_file(work))
    encoder, tokenizer = demo_text_encoder(work)
    if boundary:
        experts = {"dit": _ema_dit(work / "dit-high"), "dit_low": _ema_dit(work / "dit"), "boundary": boundary}
    else:
        experts = {"dit": _ema_dit(work / "dit")}
    # The DiT in bfloat16 and the VAE in float16 keep the folder small; the loaders upcast both (float32 on CPU).
    return save_release(out, **experts, vae=vae, text_encoder=encoder, tokenizer=tokenizer,
                        dit_dtype=torch.bfloat16, vae_dtype=torch.float16)


def _newest_checkpoint(run: Path) -> Path:
    step = latest_checkpoint(run)  # openwan train writes step-NNNNNNNN folders into its output_dir
    if step is None:
        raise ValueError(f"no DiT checkpoint under {run}; run the training step first.")
    return step


def _ema_dit(run: Path):
    return checkpoint_dit(_newest_checkpoint(run), "ema")  # ship the EMA weights


def write_dit_config(path: Path, *, cache: Path, steps: int, first_frame: float, compile_blocks: bool,
                     out: Path, seed: int = 0, preset: str = "demo", batch_size: int = 24, shift: float = 3.0,
                     logit_std: float = 1.0, middle_share: float = 0.0, high_steps: int = 0, lr: float = 5e-4,
                     sigma_range: tuple[float, float] = (0.0, 1.0), init: Path | None = None,
                     warmup_steps: int = 100) -> Path:
    """Write the DiT's ``openwan train`` config (``DIT_CONFIG`` filled in) to ``path`` and return ``path``.
    ``lr``: the peak learning rate of the cosine schedule, reached after ``warmup_steps``. ``sigma_range``: the
    noise levels it trains on (an expert's side of the boundary; ``timesteps.min_sigma`` / ``max_sigma``).
    ``init``: a DiT folder (e.g. a checkpoint of another run) to start from instead of a random init.
    ``middle_share`` of the samples draw their noise level at shift 1, logit std 1 (``timesteps.mix``; none at 0).
    ``high_steps`` > 0: the first that many of the ``steps`` are a stage of their own at ``HIGH_NOISE`` levels, and
    the rest a second stage at the run's levels (``shift``, ``logit_std``), its cosine restarted at
    ``AFTER_HIGH_LR``."""
    if not 0 <= high_steps < steps:
        raise ValueError(f"the high-noise stage takes {high_steps} of the DiT's {steps} steps; give it fewer than "
                         "all of them (0: no such stage).")
    if high_steps:
        high = f"timesteps: {HIGH_NOISE.format(first_frame=first_frame)}, "
        stages = [STAGE.format(name="high-noise", steps=high_steps, batch_size=batch_size, extra=high),
                  STAGE.format(name="shapes-64px", steps=steps - high_steps, batch_size=batch_size,
                               extra=f"lr: {AFTER_HIGH_LR}, warmup_steps: 50, ")]
    else:
        stages = [STAGE.format(name="shapes-64px", steps=steps, batch_size=batch_size, extra="")]
    mix = f", mix: [{{fraction: {middle_share}, shift: 1.0, logit_std: 1.0}}]" if middle_share > 0 else ""
    if tuple(sigma_range) != (0.0, 1.0):
        mix += f", min_sigma: {sigma_range[0]}, max_sigma: {sigma_range[1]}"
    path.write_text(DIT_CONFIG.format(cache=cache, stages="\n".join(stages), first_frame=first_frame,
                                      preset=preset, shift=shift, logit_std=logit_std, mix=mix, lr=lr,
                                      init=f", path: {init}" if init else "", warmup=warmup_steps,
                                      compile=str(compile_blocks).lower(), out=out, seed=seed))
    return path


def _trained_steps(run: Path) -> int:
    found = list_checkpoints(run)
    return found[-1][0] if found else 0


def _stage(name: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)


def _train(config: Path, steps: int, *overrides: str) -> None:
    """``openwan train --config config`` until its run (the folder named like the config) holds ``steps`` steps; a
    re-run of the recipe resumes each run from its newest checkpoint."""
    if _trained_steps(config.with_suffix("")) < steps:
        _stage(f"DiT run {config.stem}")
        subprocess.run([sys.executable, "-m", "openwan", "train", "--config", str(config), *overrides], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="the recipe's work folder (data/ and the VAE stages' folders inside)")
    parser.add_argument("--dit-steps", type=int, default=4500,
                        help="the DiT's steps (with --dit-boundary: the low-noise expert's, which the high-noise one "
                             "is forked from)")
    parser.add_argument("--dit-extend-to", type=int, default=0,
                        help="then resume that run with the cosine schedule stretched to this many steps (a warm "
                             "restart); 0: no second phase")
    parser.add_argument("--dit-preset", default="demo-small",
                        choices=[n for n in DIT_PRESETS if n.startswith("demo")],
                        help="the DiT's size: demo-small (dim 128) or demo (dim 192, about twice the cost per token)")
    parser.add_argument("--dit-batch-size", type=int, default=16,
                        help="clips per DiT step, for the DiT and the high-noise expert alike")
    parser.add_argument("--dit-shift", type=float, default=2.0,
                        help="shift of the noise levels the DiT trains on (after a high-noise stage: of the stage "
                             "after it); a higher shift spends more steps where layout and motion are decided")
    parser.add_argument("--dit-high-steps", type=int, default=0,
                        help="the DiT's first this many steps form a stage of their own at high noise levels (shift "
                             "3, logit std 2: where motion is learnt), the rest a stage at --dit-shift / "
                             "--dit-logit-std with the cosine restarted at 3e-4; 0: one stage")
    parser.add_argument("--dit-lr", type=float, default=1e-3,
                        help="the DiT's peak learning rate (cosine to a tenth of it)")
    parser.add_argument("--dit-boundary", type=float, default=0.75,
                        help="ship two DiTs, as Wan2.2 A14B's experts: the DiT trained as usual serves the noise "
                             "levels below this, and a copy of it fine-tuned --dit-high-expert-steps more on the "
                             "levels >= this (at --dit-high-shift, from lr --dit-high-lr) serves those; the sampler "
                             "switches at t = boundary*1000. 0: one DiT")
    parser.add_argument("--dit-high-expert-steps", type=int, default=1500,
                        help="with --dit-boundary: the high-noise expert's steps after the DiT's --dit-steps")
    parser.add_argument("--dit-high-shift", type=float, default=3.0,
                        help="with --dit-boundary: the shift of the high-noise expert's levels")
    parser.add_argument("--dit-high-lr", type=float, default=5e-4,
                        help="with --dit-boundary: the high-noise expert's peak learning rate (50 warm-up steps, "
                             "cosine to a tenth)")
    parser.add_argument("--dit-logit-std", type=float, default=1.0,
                        help="spread of the logit-normal noise levels the DiT trains on (before --dit-shift)")
    parser.add_argument("--dit-middle-share", type=float, default=0.0,
                        help="this fraction of the DiT's samples draws its noise level at shift 1, logit std 1 "
                             "instead (timesteps.mix); 0: none")
    parser.add_argument("--first-frame", type=float, default=0.3,
                        help="the fraction of samples whose first latent frame is given clean (Wan2.2 TI2V-style "
                             "joint training): continuing a given frame is where the direction words are learnt, "
                             "on data whose start positions do not give the direction away")
    parser.add_argument("--per-frame", type=float, default=0.5,
                        help="with --dit-extend-to: the fraction of the second phase's samples that draw a noise "
                             "level per latent frame (diffusion forcing)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT's blocks (needs a C++ compiler on a CPU; faster steps after a "
                             "minute of compiling)")
    parser.add_argument("--dit-seed", type=int, default=0,
                        help="the DiT run's seed (initial weights, data order, noise)")
    parser.add_argument("--text-vocabulary-weight", type=float, default=TEXT_VOCABULARY_WEIGHT,
                        help="pre-train the text encoder with the vocabulary objective at this weight beside span "
                             "corruption (demo_text.py); 0: span corruption alone, which leaves the DiT to learn "
                             "each synonym apart")
    parser.add_argument("--out", type=Path, default=BUNDLED,
                        help="where the release folder goes (default: the bundled model's folder in the package)")
    args = parser.parse_args(argv)
    if args.dit_high_steps and args.dit_extend_to:
        parser.error("--dit-extend-to stretches a one-stage run; it cannot follow --dit-high-steps.")
    if args.dit_boundary and (args.dit_high_steps or args.dit_extend_to):
        parser.error("--dit-boundary forks a one-stage DiT into two experts; give --dit-boundary 0 (one DiT) to use "
                     "--dit-high-steps or --dit-extend-to.")
    if args.dit_boundary and not 0 < args.dit_boundary < 1:
        parser.error(f"--dit-boundary is a noise level between 0 and 1 (e.g. 0.75); got {args.dit_boundary}.")
    if args.dit_boundary and args.dit_high_expert_steps <= 0:
        parser.error("--dit-high-expert-steps must be a positive number of steps for the high-noise expert.")
    cache = args.work / "cache"
    if not (cache / "text_index.json").is_file():
        _stage("text encoder and caches")
        build_caches(args.work, args.text_vocabulary_weight, args.dit_preset)
    common = dict(cache=cache.resolve(), first_frame=args.first_frame, compile_blocks=args.compile,
                  seed=args.dit_seed, preset=args.dit_preset, batch_size=args.dit_batch_size,
                  logit_std=args.dit_logit_std, middle_share=args.dit_middle_share, lr=args.dit_lr)
    base = write_dit_config(args.work / "dit.yaml", steps=args.dit_steps, out=(args.work / "dit").resolve(),
                            shift=args.dit_shift, high_steps=args.dit_high_steps, **common)
    _train(base, args.dit_steps)
    if args.dit_extend_to:
        _train(base, args.dit_extend_to, f"stages.0.steps={args.dit_extend_to}",
               f"timesteps.per_frame={args.per_frame}")
    if args.dit_boundary:
        # The high-noise expert starts from the checkpoint whose EMA weights ship as the low-noise one, as Wan2.2's
        # two experts start from one model; it draws every sample above the boundary (no shift-1 share).
        start = _newest_checkpoint(args.work / "dit").resolve()
        high = write_dit_config(args.work / "dit-high.yaml", out=(args.work / "dit-high").resolve(),
                                steps=args.dit_high_expert_steps, shift=args.dit_high_shift,
                                sigma_range=(args.dit_boundary, 1.0), init=start, warmup_steps=50,
                                **{**common, "lr": args.dit_high_lr, "middle_share": 0.0})
        _train(high, args.dit_high_expert_steps)
    print(f"wrote {write_release(args.work, args.out, args.dit_boundary or None)}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
