"""``openwan eval bench`` and ``openwan eval bench-report``: Wan-Bench / VBench-style dimensions on any videos."""

from __future__ import annotations

import argparse
from pathlib import Path

from openwan.diffusion.schedule import SAMPLING_KINDS

BENCH_HELP = ("score videos (a folder, a glob or a manifest; or a prompt suite generated first with --suite) on "
              "Wan-Bench / VBench-style dimensions: scores.jsonl, summary.json, errors.jsonl, report.html")
REPORT_HELP = "one report (report.html and its .png chart) comparing the dimension means of several bench folders"


def add_parser(kinds) -> None:
    """Register ``bench`` and ``bench-report`` on ``openwan eval``'s subcommands."""
    b = kinds.add_parser("bench", help=BENCH_HELP, description=BENCH_HELP + ".")
    b.add_argument("inputs", nargs="?", default=None, metavar="DIR_OR_MANIFEST",
                   help="a folder of videos (mp4 mkv webm mov avi gif), a quoted glob, a video, or a manifest "
                        "(.jsonl/.parquet; its captions are the prompts); not with --suite")
    b.add_argument("--out", required=True, help="output folder: scores.jsonl, summary.json, errors.jsonl, "
                                                "report.html, report.png (and videos/ with --suite)")
    b.add_argument("--prompts", default=None, help="prompts: a .txt (one per line, matched to the videos sorted by "
                                                   "path) or a .json/.jsonl mapping a video's file name or stem to "
                                                   "its prompt (default: the manifest's captions or NAME.txt sidecars)")
    b.add_argument("--dimensions", default=None, help="comma-separated dimensions (default: every one)")
    b.add_argument("--max-frames", type=int, default=128, help="frames kept per video, from its start")
    b.add_argument("--fps", type=float, default=None, help="resample every video to this frame rate first")
    b.add_argument("--no-resume", action="store_true", help="score every video again instead of reusing scores.jsonl")
    b.add_argument("--no-report", action="store_true", help="write no report.html / report.png")
    w = b.add_argument_group("weights of the model-based dimensions")
    w.add_argument("--clip", default=None, help="a transformers CLIP folder, wan-clip (the Wan i2v release's CLIP "
                                               "image tower at --clip-path) or an open_clip model name")
    w.add_argument("--clip-path", default=None, help="the CLIP weights: a file or folder, or open_clip's "
                                                    "pretrained tag")
    w.add_argument("--aesthetic-clip-path", "--aesthetic-clip", default=None,
                   help="the LAION aesthetic predictor's CLIP ViT-L/14 (a transformers folder)")
    w.add_argument("--aesthetic-head-path", "--aesthetic-head", default=None,
                   help="the LAION aesthetic predictor's MLP head (sac+logos+ava1-l14-linearMSE.pth)")
    w.add_argument("--musiq", default="musiq", help="the pyiqa metric of imaging_quality_musiq (musiq-spaq is "
                                                   "VBench's)")
    w.add_argument("--device", default=None, help="where the models run (default: cuda when available)")
    s = b.add_argument_group("generate first (--suite)")
    s.add_argument("--suite", default=None, help="a prompts file (.txt, one per line) or vbench / vbench:NAME (the "
                                                 "installed vbench package's prompts): generate each prompt with "
                                                 "each seed into OUT/videos, then score them")
    s.add_argument("--ckpt-dir", default=None, help="the release folder that generates the suite")
    s.add_argument("--seeds", type=int, nargs="+", default=[0])
    s.add_argument("--limit", type=int, default=None, help="generate only the suite's first N prompts")
    s.add_argument("--size", default=None, help="WIDTH*HEIGHT (default: the model's)")
    s.add_argument("--frame-num", type=int, default=None, help="frames, 4n+1 (default: the model's)")
    s.add_argument("--sample-solver", default="unipc", choices=SAMPLING_KINDS)
    s.add_argument("--sample-steps", type=int, default=None)
    s.add_argument("--sample-shift", type=float, default=None)
    s.add_argument("--sample-guide-scale", type=float, default=None)
    s.add_argument("--negative-prompt", default=None, help="default: the pipeline's")
    s.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16 on GPU, fp32 on CPU)")
    b.set_defaults(run=run_bench_cmd)

    r = kinds.add_parser("bench-report", help=REPORT_HELP, description=REPORT_HELP + ".")
    r.add_argument("runs", nargs="+", metavar="DIR", help="folders written by `openwan eval bench --out`")
    r.add_argument("--out", required=True, help="the report's .html file (its chart goes beside it as .png)")
    r.add_argument("--no-strips", action="store_true", help="leave out the best/worst videos' frame strips")
    r.set_defaults(run=run_report_cmd)


def _weights(args: argparse.Namespace):
    from openwan.eval.bench.base import BenchWeights

    return BenchWeights(clip=args.clip, clip_path=args.clip_path, aesthetic_clip_path=args.aesthetic_clip_path,
                        aesthetic_head_path=args.aesthetic_head_path, musiq=args.musiq, device=args.device)


def _suite_videos(args: argparse.Namespace) -> list[Path]:
    from openwan.cli.common import parse_dtype, parse_size
    from openwan.eval.bench.suite import generate_suite, suite_prompts
    from openwan.pipelines.conditioning import check_frame_num

    if args.inputs is not None:
        raise ValueError("give either DIR_OR_MANIFEST (videos to score) or --suite (prompts to generate), not both.")
    if args.ckpt_dir is None:
        raise ValueError("--suite generates its videos: give the model with --ckpt-dir.")
    if args.prompts is not None:
        raise ValueError("--suite videos take their prompts from the suite; leave out --prompts.")
    if args.frame_num is not None:
        check_frame_num(args.frame_num)
    size = parse_size(args.size) if args.size else None
    dtype = parse_dtype(args.dtype) if args.dtype else None
    prompts = suite_prompts(args.suite)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be at least 1; got {args.limit}.")
        prompts = prompts[:args.limit]

    def load_pipe():
        from openwan.pipelines import WanPipeline

        return WanPipeline.from_pretrained(args.ckpt_dir, device=args.device, dtype=dtype)

    made = generate_suite(load_pipe, prompts, args.out, seeds=args.seeds, size=size, frame_num=args.frame_num,
                          sample_steps=args.sample_steps, sample_shift=args.sample_shift,
                          guide_scale=args.sample_guide_scale, negative_prompt=args.negative_prompt,
                          solver=args.sample_solver, progress=True)
    print(f"suite: {made['generated']} videos generated, {made['skipped']} already there")
    return made["videos"]


def run_bench_cmd(args: argparse.Namespace) -> int:
    from openwan.eval.bench.registry import build_dimensions
    from openwan.eval.bench.report import REPORT_HTML, write_report
    from openwan.eval.bench.runner import DecodeOptions, find_videos, run_bench

    names = None if args.dimensions is None else [n.strip() for n in args.dimensions.split(",") if n.strip()]
    dimensions = build_dimensions(names, _weights(args))  # unknown names refused before anything runs
    options = DecodeOptions(fps=args.fps, max_frames=args.max_frames)
    if args.suite is None:
        stray = [flag for flag, value in (("--ckpt-dir", args.ckpt_dir), ("--limit", args.limit)) if value is not None]
        if stray:
            raise ValueError(f"{' and '.join(stray)} belong to --suite (generate, then score); give --suite too or "
                             "leave them out.")
        if args.inputs is None:
            raise ValueError("give the videos to score (a folder, a glob or a manifest), or --suite to generate them.")
        find_videos(args.inputs, args.prompts)  # bad inputs and prompts refused before a model loads
        inputs = args.inputs
    else:
        inputs = _suite_videos(args)
    summary = run_bench(inputs, args.out, prompts=args.prompts, dimensions=dimensions, resume=not args.no_resume,
                        decode_options=options, progress=True)
    failed = f", {summary['videos_failed']} unreadable (errors.jsonl)" if summary["videos_failed"] else ""
    print(f"{summary['videos']} videos scored ({summary['videos_reused']} from an earlier run){failed}")
    width = max(len(n) for n in summary["dimensions"])
    for name, part in summary["dimensions"].items():
        print(f"  {name:<{width}}  {format_dimension(part)}")
    agg = summary["aggregate"]
    if agg["value"] is not None:
        print(f"  {'aggregate':<{width}}  {agg['value']:.4f} over {', '.join(agg['entered'])}")
    if not args.no_report and summary["videos"]:
        paths = write_report([args.out], Path(args.out) / REPORT_HTML)
        print(f"wrote {Path(args.out) / 'summary.json'}, {paths['html']} and {paths['png']}")
    else:
        print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


def format_dimension(part: dict) -> str:
    """One summary line of a dimension: its mean and counts, or why it was not measured."""
    if part["mean"] is None:
        reason = part.get("not_measured_reason") or (
            "not applicable to any video" if part.get("not_applicable") else "no video measured")
        errors = f" ({part['errors']} errors)" if part.get("errors") else ""
        return reason + errors
    extra = "".join(f", {part[k]} {label}" for k, label in (("not_applicable", "not applicable"),
                                                              ("not_measured", "not measured"), ("errors", "errors"))
                    if part.get(k))
    return f"{part['mean']:.4f}  ({part['count']} measured{extra})"


def run_report_cmd(args: argparse.Namespace) -> int:
    from openwan.eval.bench.report import write_report

    paths = write_report(args.runs, args.out, strips=not args.no_strips)
    print(f"wrote {paths['html']} and {paths['png']}")
    return 0
