"""``openwan eval``: prompt following of a model on held-out synthetic prompts, VAE reconstruction quality, and the
bench (:mod:`openwan.cli.eval_bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from openwan.cli import eval_bench, eval_compare, eval_stream
from openwan.cli.common import parse_dtype, parse_size
from openwan.data.synthetic import PATHS
from openwan.diffusion.schedule import SAMPLING_KINDS

HELP = ("measure a model: prompt following (prompts), VAE reconstruction PSNR/SSIM (vae), or Wan-Bench / VBench-style "
        "dimensions of any videos (bench, bench-report), or a candidate against a reference (compare)")
PROMPTS_HELP = ("generate held-out prompts of the synthetic shapes data (the held-out combinations, or reworded "
                "prompts never trained on) and measure how often the video matches")
VAE_HELP = "VAE reconstruction PSNR and SSIM on held-out synthetic clips and on pan/zoom clips of real photos"


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help=HELP, description=HELP + ".")
    kinds = p.add_subparsers(dest="eval_command", required=True, metavar="KIND")

    q = kinds.add_parser("prompts", help=PROMPTS_HELP, description=PROMPTS_HELP + ".")
    q.add_argument("--ckpt-dir", required=True, help="a release folder (e.g. the bundled model's)")
    q.add_argument("--out", required=True, help="report folder: report.json, samples.png, videos/")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    which = q.add_mutually_exclusive_group()
    which.add_argument("--prompt-set", default="heldout", choices=["heldout", "reworded"],
                       help="heldout: one plain prompt per held-out combination (the default); reworded: prompts "
                            "phrased as users phrase them, over training and held-out combinations, never trained "
                            "on (openwan.eval.rewordings)")
    which.add_argument("--prompts", nargs="+", default=None,
                       help="prompts to evaluate instead of a prompt set (in the dataset's vocabulary)")
    q.add_argument("--limit", type=int, default=None, help="evaluate only the first N prompts")
    q.add_argument("--size", default=None, help="WIDTH*HEIGHT (default: the model's)")
    q.add_argument("--frame-num", type=int, default=None, help="frames, 4n+1 (default: the model's)")
    q.add_argument("--sample-solver", default="unipc", choices=SAMPLING_KINDS)
    q.add_argument("--sample-steps", type=int, default=None)
    q.add_argument("--sample-shift", type=float, default=None)
    q.add_argument("--sample-guide-scale", type=float, default=None)
    q.add_argument("--negative-prompt", default=None, help="default: the pipeline's")
    q.add_argument("--still-threshold", type=float, default=0.1,
                   help="centroid travel below this fraction of the frame counts as still")
    q.add_argument("--no-videos", action="store_true", help="do not keep the generated mp4 files")
    q.add_argument("--stream", action="store_true",
                   help="judge streams instead of clips: frames --stream-offset .. + --frame-num of openwan stream "
                        "(the release's streaming student where it ships one)")
    q.add_argument("--student", action=argparse.BooleanOptionalAction, default=None,
                   help="with --stream: the release's streaming student, or its own DiT (default: the student where "
                        "it ships one)")
    q.add_argument("--stream-offset", type=int, default=0,
                   help="with --stream: the first frame judged (e.g. 16: after the stream's first second)")
    q.add_argument("--window", type=int, default=None, help="with --stream: latent frames in the queue")
    q.add_argument("--steps-per-shift", type=int, default=None, help="with --stream: sub-steps per queue step")
    q.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    q.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16 on GPU, fp32 on CPU)")
    q.set_defaults(run=run_prompts)

    v = kinds.add_parser("vae", help=VAE_HELP, description=VAE_HELP + ".")
    v.add_argument("--ckpt-dir", required=True, help="a release folder or a VAE file (e.g. Wan2.1_VAE.pth)")
    v.add_argument("--out", required=True, help="report folder: vae_report.json, vae_samples.png")
    v.add_argument("--size", default="64*64", help="WIDTH*HEIGHT of the clips, multiples of 16")
    v.add_argument("--frames", type=int, default=17, help="frames per clip, 4n+1")
    v.add_argument("--num-synthetic", type=int, default=36, help="held-out synthetic clips (0: none)")
    v.add_argument("--paths", default="long", choices=list(PATHS),
                   help="the synthetic clips' object paths, as `openwan data synth --paths`: those of the dataset "
                        "the VAE was trained for (the demo recipe's is reversible)")
    v.add_argument("--photos", nargs="*", default=None,
                   help="skimage.data photographs (default: astronaut coffee chelsea rocket; none: skip)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--batch-size", type=int, default=4, help="clips per VAE pass")
    v.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    v.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    v.set_defaults(run=run_vae)

    eval_bench.add_parser(kinds)
    eval_compare.add_parser(kinds)
    eval_stream.add_parser(kinds)


def run_prompts(args: argparse.Namespace) -> int:
    from openwan.data.synthetic import parse_caption
    from openwan.eval.prompts import evaluate_prompts, prompt_set
    from openwan.pipelines import WanPipeline
    from openwan.pipelines.conditioning import check_frame_num

    if args.frame_num is not None:
        check_frame_num(args.frame_num)
    size = parse_size(args.size) if args.size else None
    if args.prompts:  # before loading the model: the detector can judge only the dataset's vocabulary
        prompts, targets = list(args.prompts), [parse_caption(p) for p in args.prompts]
    else:
        prompts, targets = prompt_set(args.prompt_set)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be at least 1; got {args.limit}.")
        prompts, targets = prompts[:args.limit], targets[:args.limit]
    dtype = parse_dtype(args.dtype) if args.dtype else None
    stream = None
    if args.stream:
        from openwan.pipelines.stream import StreamConfig
        from openwan.pipelines.stream_student import load_stream_pipe, merged

        flags = dict(window=args.window, steps_per_shift=args.steps_per_shift, sample_shift=args.sample_shift,
                     guide_scale=args.sample_guide_scale, negative_prompt=args.negative_prompt)
        StreamConfig(**flags)  # the flags' own checks, before the model loads
        if args.stream_offset < 0:
            raise ValueError(f"--stream-offset must be a frame count >= 0; got {args.stream_offset}.")
        pipe, defaults = load_stream_pipe(args.ckpt_dir, device=args.device, student=args.student)
        stream = merged(defaults, **flags)
    elif args.student is not None or args.window is not None or args.steps_per_shift is not None:
        raise ValueError("--student, --window and --steps-per-shift are stream settings; add --stream.")
    else:
        pipe = WanPipeline.from_pretrained(args.ckpt_dir, device=args.device, dtype=dtype)
    report = evaluate_prompts(pipe, args.out, prompts=prompts, targets=targets, seeds=args.seeds, size=size,
                              frame_num=args.frame_num, sample_steps=args.sample_steps,
                              sample_shift=args.sample_shift, guide_scale=args.sample_guide_scale,
                              negative_prompt=args.negative_prompt, solver=args.sample_solver,
                              save_videos=not args.no_videos, still_threshold=args.still_threshold,
                              checkpoint=str(args.ckpt_dir), stream=stream, stream_offset=args.stream_offset)
    acc = report["accuracy"]
    print(f"{report['num_videos']} videos: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()))
    for split, part in report.get("accuracy_by_split", {}).items():
        print(f"  {part['num_videos']} videos of {split} combinations: "
              + ", ".join(f"{k} {100 * part[k]:.1f}%" for k in ("colour", "shape", "motion", "all")))
    print(f"wrote {Path(args.out) / 'report.json'} and {Path(args.out) / 'samples.png'}")
    return 0


def run_vae(args: argparse.Namespace) -> int:
    import torch

    from openwan.eval.reconstruction import PHOTOS, check_clip_settings, evaluate_vae
    from openwan.models import WanVAE

    size = parse_size(args.size)
    check_clip_settings(size, args.frames)  # before loading anything
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1; got {args.batch_size}.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae = WanVAE.from_pretrained(args.ckpt_dir, dtype=parse_dtype(args.dtype), device=device)
    photos = PHOTOS if args.photos is None else args.photos
    report = evaluate_vae(vae, args.out, size=size, frames=args.frames, num_synthetic=args.num_synthetic,
                          seed=args.seed, photos=photos, batch_size=args.batch_size, checkpoint=str(args.ckpt_dir),
                          paths=args.paths)
    for kind in ("synthetic", "photos"):
        if kind in report:
            r = report[kind]
            print(f"{kind}: {r['clips']} clips, PSNR {r['psnr']:.2f} dB (min {r['psnr_min']:.2f}), "
                  f"SSIM {r['ssim']:.4f}")
    if "synthetic" in report:
        kept = report["synthetic"]["shape_kept"]
        shapes = ", ".join(f"{k} {v:.0%}" for k, v in kept["reconstruction_by_shape"].items())
        print(f"shape read in 8-frame windows: reconstructions {kept['reconstruction']:.1%} ({shapes}), "
              f"originals {kept['original']:.1%}")
    flat = report["flat_fields"]
    print(f"flat colour fields: {flat['fields']}, PSNR {flat['psnr']:.2f} dB, chroma kept {flat['chroma_kept']:.3f} "
          "(1: every tint kept, 0: rendered grey)")
    print(f"wrote {Path(args.out) / 'vae_report.json'}")
    return 0
