"""The bundled model's streaming student, the Python half of ``recipes/stream_student.sh``.

1. data: long synthetic clips of the demo world (49 frames, objects that keep moving and wrap around the edges:
   ``openwan data synth --paths wrap``) and their latent and text caches, encoded by the release's own VAE and text
   encoder (skipped when ``--cache`` names existing caches, e.g. the demo recipe's ``WORK/cache`` of 17-frame clips);
2. the streaming teacher: the release's low-noise expert (trained on every noise level) fine-tuned on the stream's
   staircase of per-frame levels (``timesteps.staircase``: on a 20-step grid) — diffusion forcing on the schedule
   the stream runs — each window cut at a random latent offset of its clip (``window: random``), so that most
   windows come from the middle of a clip, where a stream's window always is once it is full; with ``--anchor``
   (0.8 by default) that share of the windows follow the clip's first latent frame, given clean
   (``timesteps.anchor``), and the staircase walks the 4 frames after it (5 sub-steps per shift; without an anchor
   the 5 frames of the window, 4 sub-steps per shift);
3. the student: that teacher, guided, distilled into ``--jumps-per-shift`` sub-steps per shift (2 by default:
   ``distill.staircase``, 8 steps per latent frame on anchored windows, 10 without, its guidance folded in), each
   jump regressed onto the teacher's own walk of it on a grid of 20 x that many steps (``distill.objective:
   trajectory``);
4. the student written into the release's ``stream_model/`` with the settings it streams at, where
   ``openwan stream`` picks it up;
5. the release's VAE decoder fine-tuned for that world (``--decoder-steps``; its encoder frozen, so the latents, the
   caches and every DiT trained on them stay as they were): 9-frame windows of the wrapping clips at three offsets,
   beside twice as many windows of ordinary clips (``--paths reversible``) so that clips decode as before. The
   decoder the demo recipe trains has seen objects only inside the frame and draws one that crosses an edge with
   rounded corners; the release's ``Wan2.1_VAE.pth`` is replaced by the fine-tuned one.

Each step skips itself when its output exists, so a stopped run continues. What it measured: docs/streaming.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from openwan.data.buckets import Bucket
from openwan.data.cache import build_latent_cache, build_text_cache
from openwan.data.manifest import read_manifest, write_manifest
from openwan.fileio import atomic_write
from openwan.pipelines.components import BUNDLED, load_components
from openwan.pipelines.stream import StreamConfig
from openwan.pipelines.stream_student import save_student
from openwan.train.checkpoint import checkpoint_dit, export_dit, latest_checkpoint

WINDOW, SHIFT = 5, 3.0  # 17 frames: 5 latent frames, the stream's window; the demo's sampling shift
CLIP_FRAMES = 49  # the synthetic clips' length: 13 latent frames, 9 window positions
TEACHER_STEPS = 20  # the teacher's steps per latent frame (on the staircase it was fine-tuned on)
VAE_FILE = "Wan2.1_VAE.pth"
DECODER_FRAMES, DECODER_STARTS = 9, (0.0, 1.25, 2.5)  # s: windows at frames 0, 20 and 40 of a 49-frame clip

TEACHER_CONFIG = """\
model: {{preset: demo-small, path: {init}}}
data: {{cache_dir: {cache}}}
stages:
  - {{name: stream-window, steps: {steps}, batch_size: {batch}, buckets: [[17, 64, 64]], window: random}}
optim: {{lr: {lr}, weight_decay: 0.01, grad_clip: 1.0}}
schedule: {{kind: cosine, warmup_steps: 50, min_lr_ratio: 0.1}}
timesteps: {{mode: logit_normal, shift: 2.0, logit_std: 1.0, first_frame: 0.1, staircase: {staircase},
            staircase_steps: {per_shift}, staircase_shift: {shift}, anchor: {anchor}}}
ema: {{decay: 0.995}}
text_dropout: 0.1
checkpoint: {{every: 250, keep_last: 2}}
compile: {compile}
log: {{every: 50, progress: false, tensorboard: false}}
seed: 0
output_dir: {out}
"""

STUDENT_CONFIG = """\
model: {{preset: demo-small}}
data: {{cache_dir: {cache}}}
distill: {{teacher: {teacher}, guide_scale: {guide}, teacher_steps: {teacher_steps}, student_steps: {student_steps},
          shift: {shift}, objective: {objective}, target: ema, loss: l2, staircase: true}}
timesteps: {{anchor: {anchor}}}
stages:
  - {{name: stream-distill, steps: {steps}, batch_size: {batch}, buckets: [[17, 64, 64]], window: random}}
optim: {{lr: {lr}, weight_decay: 0.0, grad_clip: 1.0}}
schedule: {{kind: constant, warmup_steps: 20}}
ema: {{decay: 0.95}}
text_dropout: 0.0
checkpoint: {{every: 200, keep_last: 2}}
compile: {compile}
log: {{every: 25, progress: false, tensorboard: false}}
seed: 0
output_dir: {out}
"""


def build_caches(work: Path, release: Path, clips: int, captions: str) -> Path:
    """Synthetic clips of the demo world and their caches under ``WORK/cache``, through the release's encoders."""
    cache = work / "cache"
    if (cache / "text_index.json").is_file():
        return cache
    parts = load_components(release)
    records = read_manifest(wrap_clips(work, clips, captions))
    with torch.no_grad():
        build_latent_cache(records, parts["vae"], [Bucket(CLIP_FRAMES, 64, 64)], cache, batch_size=16,
                           num_workers=1)
        build_text_cache(records, parts["text_encoder"], parts["tokenizer"], cache,
                         text_len=parts["dit"].cfg.text_len)
    return cache


def wrap_clips(work: Path, clips: int, captions: str) -> Path:
    """``WORK/data``: ``clips`` synthetic clips of 49 frames whose objects wrap around the frame's edges."""
    data = work / "data"
    if not (data / "manifest.jsonl").is_file():
        _openwan("data", "synth", "--out", str(data), "--num", str(clips), "--seed", "0", "--paths", "wrap",
                 "--frames", str(CLIP_FRAMES), "--captions", captions)
    return data / "manifest.jsonl"


def decoder_manifest(work: Path, clips: int, captions: str) -> Path:
    """The decoder's clips: every wrapping clip at :data:`DECODER_STARTS` (three windows of 9 frames each) and
    twice ``clips`` ordinary 17-frame clips (``--paths reversible``, another seed), in one manifest."""
    folder = work / "decoder-data"
    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    wrapping = read_manifest(wrap_clips(work, clips, captions))
    if not (folder / "ordinary" / "manifest.jsonl").is_file():
        _openwan("data", "synth", "--out", str(folder / "ordinary"), "--num", str(2 * clips), "--seed", "1",
                 "--paths", "reversible", "--captions", captions)
    ordinary = read_manifest(folder / "ordinary" / "manifest.jsonl")
    windows = [dataclasses.replace(r, start=start, id=f"{r.id}@{start}") for r in wrapping for start in DECODER_STARTS]
    return write_manifest(windows + ordinary, manifest)


def wrap_decoder(work: Path, release: Path, steps: int, clips: int, captions: str) -> Path:
    """The release's VAE with its decoder fine-tuned on :func:`decoder_manifest`'s clips (encoder frozen), in
    ``WORK/decoder``; trained once, from the release's VAE as it was."""
    out = work / "decoder" / VAE_FILE
    if not out.is_file():
        _openwan("train-vae", "--stage", "2", "--freeze-encoder", "--init", str(release / VAE_FILE),
                 "--manifest", str(decoder_manifest(work, clips, captions)), "--out", str(out.parent),
                 "--size", "64", "--frames", str(DECODER_FRAMES), "--batch-size", "4", "--steps", str(steps),
                 "--lr", "1e-4", "--warmup-steps", "20", "--min-lr-ratio", "0.05", "--l1-weight", "0",
                 "--l2-weight", "10", "--log-every", "50", "--save-every", "200", "--workers", "1")
    return out


def _openwan(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "openwan", *args], check=True)


def _train(config: Path, *overrides: str) -> None:
    _openwan("train", "--config", str(config), *overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="the work folder (data, caches, runs)")
    parser.add_argument("--release", type=Path, default=BUNDLED, help="the two-expert release to stream (default: "
                                                                     "the bundled model); the student goes into it")
    parser.add_argument("--cache", type=Path, default=None,
                        help="existing latent + text caches of 64x64 clips of at least 17 frames encoded by the "
                             "release's VAE and text encoder (default: build them in WORK)")
    parser.add_argument("--clips", type=int, default=1440, help="synthetic 49-frame clips to cache when building "
                                                                 "them")
    parser.add_argument("--captions", choices=("templates", "varied"), default="varied",
                        help="the captions of the synthetic clips (as the release was trained on)")
    parser.add_argument("--teacher-steps", type=int, default=3000, help="staircase fine-tuning steps")
    parser.add_argument("--teacher-lr", type=float, default=2e-4)
    parser.add_argument("--staircase", type=float, default=0.7,
                        help="the share of the fine-tuning samples on the staircase (the rest as the release was "
                             "trained: one level per clip; a tenth of all samples with a clean first frame)")
    parser.add_argument("--anchor", type=float, default=0.8,
                        help="the share of the teacher's samples whose window follows an anchor (the clip's first "
                             "latent frame, clean); above 0, the student is distilled on anchored windows alone and "
                             "streams with --anchor: the staircase walks the 4 frames after it (0: no anchor)")
    parser.add_argument("--student-steps", type=int, default=500, help="distillation steps (0: ship the teacher, "
                                                                       "streamed at --jumps-per-shift sub-steps)")
    parser.add_argument("--student-lr", type=float, default=5e-5)
    parser.add_argument("--objective", choices=("consistency", "trajectory"), default="trajectory",
                        help="the distillation objective (distill.objective): consistency, or regression on the "
                             "teacher's whole walk of each shift (trajectory)")
    parser.add_argument("--jumps-per-shift", type=int, default=2,
                        help="the student's sub-steps per queue shift (DiT evaluations per latent frame); the "
                             "teacher's grid is refined to 20 x this many steps so that each jump spans as many "
                             "teacher steps")
    parser.add_argument("--guide-scale", type=float, default=1.5, help="the teacher's guidance, folded in")
    parser.add_argument("--decoder-steps", type=int, default=800,
                        help="fine-tuning steps of the release's VAE decoder on objects that cross the frame's "
                             "edges (0: keep the release's VAE)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT's blocks")
    args = parser.parse_args(argv)
    jumps = args.jumps_per_shift
    if jumps < 1:
        raise ValueError(f"--jumps-per-shift {jumps}: give 1 or more sub-steps per queue shift.")
    if not 0 <= args.anchor <= 1:
        raise ValueError(f"--anchor {args.anchor} is not a share of the samples; give a number from 0 to 1.")
    low = args.release / "low_noise_model"
    if not (low / "config.json").is_file():
        raise ValueError(f"{args.release} is not a two-expert release (no low_noise_model/); give --release.")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or build_caches(work, args.release, args.clips, args.captions)).resolve()
    compile_blocks = "true" if args.compile else "false"
    anchored = args.anchor > 0
    groups = WINDOW - anchored  # the staircase's frames: the window's, less the anchor's slot
    per_shift = TEACHER_STEPS // groups

    teacher_yaml, teacher_dir = work / "stream-teacher.yaml", work / "stream-teacher"
    teacher_yaml.write_text(TEACHER_CONFIG.format(
        init=low.resolve(), cache=cache, steps=args.teacher_steps, batch=args.batch_size, lr=args.teacher_lr,
        staircase=args.staircase, per_shift=per_shift, shift=SHIFT, anchor=args.anchor, compile=compile_blocks,
        out=(work / "teacher-run")))
    _train(teacher_yaml)
    export_dit(latest_checkpoint(work / "teacher-run"), teacher_dir)

    student_run = work / "student-run"
    if args.student_steps > 0:
        student_yaml = work / "stream-student.yaml"
        student_yaml.write_text(STUDENT_CONFIG.format(
            cache=cache, teacher=teacher_dir, guide=args.guide_scale, teacher_steps=TEACHER_STEPS * jumps,
            student_steps=groups * jumps, shift=SHIFT, steps=args.student_steps, batch=args.batch_size,
            lr=args.student_lr, objective=args.objective, anchor=1.0 if anchored else 0.0, compile=compile_blocks,
            out=student_run))
        _train(student_yaml)
        student = checkpoint_dit(latest_checkpoint(student_run))
        settings = StreamConfig(window=WINDOW, steps_per_shift=jumps, sample_shift=SHIFT, guide_scale=1.0,
                                anchor=anchored)
    else:
        student = checkpoint_dit(latest_checkpoint(work / "teacher-run"))
        settings = StreamConfig(window=WINDOW, steps_per_shift=jumps, sample_shift=SHIFT,
                                guide_scale=args.guide_scale, anchor=anchored)
    # bfloat16 as the release's own DiTs (the loaders upcast)
    print(f"wrote {save_student(args.release, student, settings, dtype=torch.bfloat16)}")
    if args.decoder_steps > 0:
        decoder = wrap_decoder(work, args.release, args.decoder_steps, args.clips, args.captions)
        if decoder.read_bytes() != (args.release / VAE_FILE).read_bytes():
            atomic_write(args.release / VAE_FILE, lambda tmp: shutil.copyfile(decoder, tmp))
            print(f"wrote {args.release / VAE_FILE} (the decoder fine-tuned for objects that cross the frame's edges)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
