"""``openwan convert``: official ⇄ diffusers layouts for a release folder, a DiT or a VAE."""

from __future__ import annotations

import argparse

from openwan.cli.common import parse_dtype

HELP = "rewrite Wan weights between the official release layout and diffusers' layout"
EPILOG = """examples:
  openwan convert Wan2.1-T2V-1.3B Wan2.1-T2V-1.3B-Diffusers --to diffusers
  openwan convert Wan2.1-T2V-1.3B-Diffusers Wan2.1-T2V-1.3B --to official
  openwan convert Wan2.1-T2V-14B/ dit-bf16/ --model dit --to diffusers --dtype bf16

A release converts to a complete folder: --to diffusers writes what diffusers' WanPipeline.from_pretrained loads
(model_index.json, transformer/ [+ transformer_2/ for the low-noise expert], vae/, text_encoder/, tokenizer/,
scheduler/); --to official writes the release layout. openwan generate --ckpt-dir reads either. In diffusers, pass
max_sequence_length=transformer.config["text_len"]; its UniPC spaces the σ grid from 1 where Wan starts at 0.999,
so its video differs slightly unless scheduler.set_timesteps gets Wan's σ (sigmas=...)."""


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help=HELP, description=HELP + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a release folder, a diffusers folder, or one weights file")
    p.add_argument("dst", help="output folder (created; files are written atomically)")
    p.add_argument("--to", required=True, choices=["official", "diffusers"], help="layout to write")
    p.add_argument("--model", choices=["release", "dit", "vae"], default="release",
                   help="what src holds: a whole release folder (default), one DiT, or one VAE")
    p.add_argument("--dtype", default=None,
                   help="cast the DiT's and text encoder's floating-point weights: fp32, bf16 or fp16 (default: keep)")
    p.add_argument("--flow-shift", type=float, default=None,
                   help="--to diffusers: the sampling shift written to scheduler/ (default: the source's scheduler, "
                        "else the model family's default, as openwan generate uses)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from openwan.checkpoints.convert import convert_dit, convert_vae, copy_student, read_release, write_release
    from openwan.pipelines.defaults import defaults_for

    dtype = parse_dtype(args.dtype) if args.dtype else None
    if args.model != "release":
        out = {"dit": convert_dit, "vae": convert_vae}[args.model](args.src, args.dst, args.to, dtype=dtype)
    else:
        release = read_release(args.src)
        defaults = defaults_for(release.config, two_experts=len(release.dits) == 2)
        shift = args.flow_shift if args.flow_shift is not None else release.flow_shift
        out = write_release(release, args.dst, args.to, dtype=dtype,
                            flow_shift=defaults.sample_shift if shift is None else shift, boundary=defaults.boundary)
        copy_student(args.src, out)
    print(f"wrote {args.to} layout to {out}")
    return 0
