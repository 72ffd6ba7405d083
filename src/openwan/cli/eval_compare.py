"""``openwan eval compare``: a candidate's videos against a reference's — two folders, or two settings of a model."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("compare a candidate against a reference: two folders of videos (REF_DIR CAND_DIR), or one model under two "
        "settings (--ckpt-dir, --prompts, --ref/--cand KEY=VALUE): PSNR, SSIM, LPIPS, latent error, bench dimensions, "
        "and for settings the speed and DiT evaluations")
EPILOG = ("settings: --ref and --cand take WanPipeline arguments as KEY=VALUE (sample_steps=25, guide_scale=5.0, "
          "solver=euler, size=64,64, cfg_batch=false), and the load-time keys quantize, attention and compile. "
          "Example: openwan eval compare --ckpt-dir DIR --prompts 'a red circle moves left' --seeds 0 1 "
          "--cand sample_steps=10 --out cmp/")


def add_parser(kinds) -> None:
    """Register ``compare`` on ``openwan eval``'s subparsers (``kinds``)."""
    c = kinds.add_parser("compare", help=HELP, description=HELP + ".", epilog=EPILOG)
    c.add_argument("ref_dir", nargs="?", metavar="REF_DIR", help="folder of reference videos (and their latents)")
    c.add_argument("cand_dir", nargs="?", metavar="CAND_DIR", help="folder of candidate videos, same file names")
    c.add_argument("--ckpt-dir", default=None, help="a release folder: compare two settings of this model")
    c.add_argument("--prompts", nargs="+", default=None, help="settings: the prompts to generate")
    c.add_argument("--seeds", type=int, nargs="+", default=[0], help="settings: the seeds (default: 0)")
    c.add_argument("--ref", nargs="+", default=[], metavar="KEY=VALUE", help="settings: the reference's arguments")
    c.add_argument("--cand", nargs="+", default=[], metavar="KEY=VALUE", help="settings: the candidate's arguments")
    c.add_argument("--warmup", action="store_true", help="settings: one untimed run per setting first (compile)")
    c.add_argument("--save-videos", action="store_true", help="settings: keep the videos and latents under --out")
    c.add_argument("--dimensions", nargs="*", default=None, metavar="NAME",
                   help="bench dimensions on both sides (default for folders: temporal_flickering motion_smoothness "
                        "dynamic_degree imaging_quality; for settings: none)")
    c.add_argument("--no-lpips", action="store_true", help="skip LPIPS even where the lpips package is installed")
    c.add_argument("--min-psnr", type=float, default=None, help="exit 1 when the pooled PSNR (dB) is below this")
    c.add_argument("--min-ssim", type=float, default=None, help="exit 1 when the mean SSIM is below this")
    c.add_argument("--out", default=None, help="report folder: compare.json and compare_worst.png")
    c.add_argument("--device", default=None, help="settings: cuda, cuda:1 or cpu (default: cuda when available)")
    c.add_argument("--dtype", default=None, help="settings: fp32, bf16 or fp16 (default: bf16 on GPU, fp32 on CPU)")
    c.set_defaults(run=run_compare)


def parse_value(text: str):
    """A setting's value: true/false, none, an int, a float, a comma-separated tuple (``64,64`` or ``(5,3)``),
    else the text itself."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")") or "," in text:
        return tuple(parse_value(v) for v in text.strip("()").split(",") if v.strip())
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_setting(items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` items as a dict (dashes in keys read as underscores); ValueError naming a malformed item."""
    setting = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: give KEY=VALUE, e.g. {flag} sample_steps=25.")
        if key in setting:
            raise ValueError(f"{flag} sets {key} twice; give each key once.")
        setting[key] = parse_value(value)
    return setting


def _mode(args: argparse.Namespace) -> str:
    dirs = [d for d in (args.ref_dir, args.cand_dir) if d is not None]
    settings_flags = args.ckpt_dir or args.prompts or args.ref or args.cand
    if dirs and settings_flags:
        raise ValueError("give either REF_DIR CAND_DIR (two folders) or --ckpt-dir with --prompts (two settings), "
                         "not both.")
    if len(dirs) == 1:
        raise ValueError("give both REF_DIR and CAND_DIR (two folders of videos with the same file names).")
    if dirs:
        return "dirs"
    if not args.ckpt_dir or not args.prompts:
        raise ValueError("give REF_DIR CAND_DIR, or --ckpt-dir DIR --prompts P [P ...] with --ref/--cand KEY=VALUE.")
    return "settings"


def run_compare(args: argparse.Namespace) -> int:
    from openwan.cli.common import check_device, parse_dtype
    from openwan.data.video import check_writable
    from openwan.eval import compare, compare_settings

    mode = _mode(args)
    if args.out:
        check_writable(Path(args.out) / compare.REPORT_FILE, flag="--out")
    lpips = not args.no_lpips
    if mode == "dirs":
        dims = compare.DEFAULT_DIMENSIONS if args.dimensions is None else args.dimensions
        report = compare.compare_dirs(args.ref_dir, args.cand_dir, dimensions=dims, with_lpips=lpips,
                                      out_dir=args.out, progress=True)
    else:
        from openwan.pipelines import WanPipeline

        ref, cand = parse_setting(args.ref, "--ref"), parse_setting(args.cand, "--cand")
        compare_settings.check_setting(ref, "ref")  # before the model loads
        compare_settings.check_setting(cand, "cand")
        compare.check_dimensions(args.dimensions or ())
        if args.save_videos and not args.out:
            raise ValueError("--save-videos needs --out, the folder to write the videos to.")
        device = check_device(args.device) if args.device else None
        dtype = parse_dtype(args.dtype) if args.dtype else None
        if not Path(args.ckpt_dir).is_dir():
            raise ValueError(f"--ckpt-dir {args.ckpt_dir} is not a folder; give a release folder.")

        def load():
            return WanPipeline.from_pretrained(args.ckpt_dir, device=device, dtype=dtype)

        at_load = any(k in compare_settings.load_keys() for k in (*ref, *cand))
        report = compare_settings.compare_settings(load if at_load else load(), args.prompts, args.seeds, ref, cand,
                                          out_dir=args.out, warmup=args.warmup, with_lpips=lpips,
                                          dimensions=args.dimensions or (), save_videos=args.save_videos)
    _print(report, args.out)
    fails = compare.gate(report, args.min_psnr, args.min_ssim)
    if fails:
        print("below the gate: " + "; ".join(fails))
        return 1
    return 0


def _print(report: dict, out: str | None) -> None:
    for key, what in (("missing", "in REF_DIR only"), ("extra", "in CAND_DIR only")):
        if report.get(key):
            print(f"{len(report[key])} {what}: {', '.join(report[key])}")
    for refused in report["refused"]:
        print(f"refused: {refused['reason']}")
    for name, row in report.get("bench", {}).items():
        if "not_measured" in row:
            print(f"{name}: {row['not_measured']}")
        elif row["pairs"]:
            print(f"{name}: ref {row['ref']:.4f}, cand {row['cand']:.4f}, cand - ref {row['diff']:+.4f}")
    print(report["line"])
    if out:
        print(f"wrote {Path(out) / 'compare.json'}")
