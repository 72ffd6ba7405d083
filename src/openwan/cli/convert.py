"""``openwan convert``: official ⇄ diffusers layouts for a release folder, a DiT or a VAE."""

from __future__ import annotations

import argparse

from openwan.cli.common import parse_dtype

HELP = "rewrite Wan weights between the official release layout and diffusers' layout"


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help=HELP, description=HELP + ".")
    p.add_argument("src", help="a release folder, a diffusers folder, or one weights file")
    p.add_argument("dst", help="output folder (created; files are written atomically)")
    p.add_argument("--to", required=True, choices=["official", "diffusers"], help="layout to write")
    p.add_argument("--model", choices=["release", "dit", "vae"], default="release",
                   help="what src holds: a whole release folder (default), one DiT, or one VAE")
    p.add_argument("--dtype", default=None, help="cast floating-point weights: fp32, bf16 or fp16 (default: keep)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from openwan.checkpoints.convert import convert_dit, convert_release, convert_vae

    dtype = parse_dtype(args.dtype) if args.dtype else None
    fn = {"release": convert_release, "dit": convert_dit, "vae": convert_vae}[args.model]
    out = fn(args.src, args.dst, args.to, dtype=dtype)
    print(f"wrote {args.to} layout to {out}")
    return 0
