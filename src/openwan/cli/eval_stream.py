"""``openwan eval stream``: how a long stream holds up (speed, drift of prompt following, identity, flicker,
prompt switches), measured with :func:`openwan.eval.stream_drift.measure_stream`."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from openwan.cli.stream import parse_time

HELP = ("measure a long stream: first-frame latency and frames/s, the detector's agreement with the prompt, the "
        "object's identity and the bench's flicker per bucket of video time, and how fast prompt switches are "
        "followed")
FPS_PROBE = 16.0  # times are checked before the model loads; converted again with the stream's fps after


def add_parser(kinds) -> None:
    """Register ``stream`` on ``openwan eval``'s subcommands."""
    p = kinds.add_parser("stream", help=HELP, description=HELP + ". See docs/streaming.md.")
    p.add_argument("--ckpt-dir", default=None, help="a Wan text-to-video release folder (default: the bundled model)")
    p.add_argument("--prompt", required=True, help="the prompt from 0 s")
    p.add_argument("--then", nargs=2, action="append", default=[], metavar=("TIME", "PROMPT"),
                   help="switch to PROMPT at TIME (10s, 2.5s, 1m or 160f frames); repeatable, times in order")
    p.add_argument("--duration", required=True, help="video to stream and measure: 10m, 30s or 480f")
    p.add_argument("--bucket", default="60s", help="video time per row of the drift table (default 60s)")
    p.add_argument("--clip-frames", type=int, default=17,
                   help="frames per judged clip (default 17, the detector's clip length)")
    p.add_argument("--switch-window", type=int, default=8,
                   help="frames of the sliding window that judges a prompt switch (default 8)")
    p.add_argument("--hold", default="1s", help="how long a switch must be seen to count as followed (default 1s)")
    p.add_argument("--dimensions", nargs="*", default=None, metavar="NAME",
                   help="bench dimensions per clip (default: temporal_flickering motion_smoothness pixel_stability)")
    p.add_argument("--clip", default=None, help="CLIP weights for the consistency dimensions, as `openwan eval bench`")
    p.add_argument("--clip-path", default=None, help="the CLIP weights' file or folder, as `openwan eval bench`")
    s = p.add_argument_group("stream settings (default: the release's streaming student's, else the model's)")
    s.add_argument("--student", action=argparse.BooleanOptionalAction, default=None,
                   help="stream with the release's streaming student (default: where the release ships one)")
    s.add_argument("--window", type=int, default=None, help="latent frames in the queue")
    s.add_argument("--block", type=int, default=None, help="latent frames per noise level (1: staircase)")
    s.add_argument("--steps-per-shift", type=int, default=None, help="solver sub-steps per queue step")
    s.add_argument("--sample-shift", type=float, default=None, help="flow shift of the noise staircase")
    s.add_argument("--guide-scale", type=float, default=None, help="classifier-free guidance scale")
    s.add_argument("--transition", type=int, default=None, help="latent frames a prompt switch cross-fades over")
    s.add_argument("--size", default=None, help="WIDTH*HEIGHT")
    s.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="report folder: report.json")
    p.add_argument("--save-file", default=None, help="also write the stream to this .mp4 as it is measured")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's; on a busy machine 1 can be several times faster)")
    p.set_defaults(run=run)


def parse_span(text: str, flag: str, fps: float) -> int:
    """A video time as frames: what :func:`openwan.cli.stream.parse_time` reads, and minutes (``10m``, ``1.5m``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*m\s*", str(text).lower())
    if m:
        return round(float(m[1]) * 60 * fps)
    try:
        return parse_time(text, flag, fps)
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not a time; give minutes (10m), seconds (30s, 2.5s) or frames "
                         "(480f).") from None


def _check(args: argparse.Namespace) -> None:
    """Every flag that needs no model, so bad input is refused before anything loads."""
    from openwan.pipelines.stream import PromptSchedule

    for flag, text in [("--duration", args.duration), ("--bucket", args.bucket), ("--hold", args.hold),
                       *(("--then", t) for t, _ in args.then)]:
        frames = parse_span(text, flag, FPS_PROBE)
        if flag in ("--duration", "--bucket") and frames < 1:
            raise ValueError(f"{flag} {text!r} is shorter than a frame; give a longer time (e.g. 60s).")
    PromptSchedule.of(args.prompt, [(parse_span(t, "--then", FPS_PROBE) / FPS_PROBE, p) for t, p in args.then])
    if args.clip_frames < 3:
        raise ValueError(f"--clip-frames must be at least 3 (motion needs them); got {args.clip_frames}.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1; got {args.threads}.")
    if args.switch_window < 2:
        raise ValueError(f"--switch-window must be at least 2 frames; got {args.switch_window}.")
    if args.save_file is not None and Path(args.save_file).suffix.lower() != ".mp4":
        raise ValueError(f"--save-file {args.save_file}: the stream is written as an mp4; give a name ending in .mp4.")
    if args.dimensions:
        from openwan.eval.bench.registry import dimension_class

        for name in args.dimensions:
            dimension_class(name)


def run(args: argparse.Namespace) -> int:
    from openwan.cli.common import check_device, parse_size
    from openwan.eval.bench.base import BenchWeights
    from openwan.eval.stream_clips import DEFAULT_DIMENSIONS
    from openwan.eval.stream_drift import REPORT_FILE, drift_table, measure_stream, summary_lines
    from openwan.pipelines.components import BUNDLED, BUNDLED_NOTE, holds_dit
    from openwan.pipelines.stream import PromptSchedule
    from openwan.pipelines.stream_student import load_stream_pipe, merged

    _check(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    size = parse_size(args.size) if args.size else None
    device = check_device(args.device) if args.device else None
    if args.ckpt_dir is None:
        if not holds_dit(BUNDLED):
            raise ValueError(f"no --ckpt-dir given and no bundled model at {BUNDLED}; give --ckpt-dir.")
        args.ckpt_dir = str(BUNDLED)
        print(BUNDLED_NOTE, file=sys.stderr)
    pipe, defaults = load_stream_pipe(args.ckpt_dir, device=device, student=args.student)
    config = merged(defaults, window=args.window, block=args.block, steps_per_shift=args.steps_per_shift,
                    sample_shift=args.sample_shift, guide_scale=args.guide_scale, transition=args.transition,
                    size=size, seed=args.seed)
    fps = float(config.fps or pipe.defaults.fps)
    schedule = PromptSchedule.of(args.prompt, [(parse_span(t, "--then", fps) / fps, p) for t, p in args.then])
    report = measure_stream(
        pipe, schedule, config, seconds=parse_span(args.duration, "--duration", fps) / fps,
        clip_frames=args.clip_frames, bucket_seconds=parse_span(args.bucket, "--bucket", fps) / fps,
        switch_window=args.switch_window, hold_seconds=parse_span(args.hold, "--hold", fps) / fps,
        dimensions=DEFAULT_DIMENSIONS if args.dimensions is None else args.dimensions,
        weights=BenchWeights(clip=args.clip, clip_path=args.clip_path), save_video=args.save_file,
        out_dir=args.out, progress=sys.stderr.isatty(), checkpoint=str(args.ckpt_dir))
    print(drift_table(report))
    for line in summary_lines(report):
        print(line)
    for written in (args.out and Path(args.out) / REPORT_FILE, args.save_file):
        if written:
            print(f"wrote {written}")
    return 0
