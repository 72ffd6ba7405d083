"""``openwan stream``: an endless video from a prompt schedule, written as it grows and/or previewed live."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from openwan.cli.common import check_device, parse_size
from openwan.fileio import terminate_cleanly

HELP = "stream an endless video from prompts that change over time (the sliding denoising window)"
PREVIEWS = ("raw", "mjpeg")
TAIL = 2  # frames kept in the state for the growing file (its muxer holds back the newest frame)


def add_parser(sub) -> None:
    p = sub.add_parser("stream", help=HELP, description=HELP + ". Frames are decoded as each latent frame leaves "
                       "the queue; see docs/streaming.md.")
    p.add_argument("--ckpt-dir", default=None, help="a Wan text-to-video release folder (default: the bundled model)")
    p.add_argument("--prompt", default=None, help="the prompt from 0 s (left out when resuming a --state file)")
    p.add_argument("--then", nargs=2, action="append", default=[], metavar=("TIME", "PROMPT"),
                   help="switch to PROMPT at TIME (10s, 2.5s or 160f frames); repeatable, times in order")
    p.add_argument("--duration", default=None,
                   help="total length: 30s, or 480f frames (default: until interrupted with Ctrl-C)")
    p.add_argument("--window", type=int, default=None, help="latent frames in the queue (default: the model's clip)")
    p.add_argument("--block", type=int, default=1,
                   help="latent frames per noise level: 1 = staircase (default), = --window: uniform levels")
    p.add_argument("--steps-per-shift", type=int, default=None,
                   help="solver sub-steps (DiT evaluations) per queue step (default: the model's steps / levels)")
    p.add_argument("--sample-shift", type=float, default=None, help="flow shift of the noise staircase")
    p.add_argument("--guide-scale", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--transition", type=int, default=2, help="latent frames a prompt switch cross-fades over")
    p.add_argument("--size", default=None, help="WIDTH*HEIGHT (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-file", default=None, help="a growing .mp4 (fragmented: playable while written and "
                                                     "after a kill)")
    p.add_argument("--preview", choices=PREVIEWS, default=None,
                   help="raw: rgb24 frames on stdout for ffplay (the command is printed); mjpeg: an MJPEG stream "
                        "on http://127.0.0.1:PORT/")
    p.add_argument("--port", type=int, default=8090, help="the MJPEG preview's port (0: any free one)")
    p.add_argument("--state", default=None, help="save the stream's state here as it runs; if the file exists, "
                                                 "resume from it")
    p.add_argument("--state-every", default="1s", help="how often the state is saved, in video time (default 1s)")
    p.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the stream's first latent frame clean in the window's first slot, ahead of the "
                        "staircase over the rest (default: as the student was trained; off for a release's own DiT)")
    p.add_argument("--image", default=None, help="start the stream from this image (its first frame, kept as the "
                                                 "anchor: implies --anchor)")
    p.add_argument("--student", action=argparse.BooleanOptionalAction, default=None,
                   help="stream with the release's streaming student (stream_model/: one DiT evaluation per latent "
                        "frame, at the settings it was trained for) or, with --no-student, its own DiT (default: "
                        "the student where the release ships one)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.set_defaults(run=run)


def parse_time(text: str, flag: str, fps: float) -> int:
    """``10s`` / ``2.5s`` / ``10`` (seconds) or ``160f`` (frames) -> video frames."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([sf]?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"{flag} {text!r} is not a time; give seconds (10s, 2.5s) or frames (160f).")
    value, unit = float(m[1]), m[2] or "s"
    if unit == "f" and value != int(value):
        raise ValueError(f"{flag} {text!r}: a frame count is a whole number (e.g. 160f).")
    return int(value) if unit == "f" else round(value * fps)


def run(args: argparse.Namespace) -> int:
    from openwan.data.video import read_image
    from openwan.pipelines.components import BUNDLED, BUNDLED_NOTE, holds_dit
    from openwan.pipelines.stream import PromptSchedule, StreamConfig, VideoStream
    from openwan.pipelines.stream_output import GrowingVideo, MJPEGServer, RawPreview
    from openwan.pipelines.stream_student import load_stream_pipe, merged

    log = sys.stderr  # stdout may carry the raw preview
    resume = args.state is not None and Path(args.state).is_file()
    if args.prompt is None and not resume:
        raise ValueError("give --prompt (or --state with a state file to resume).")
    if args.save_file is not None and Path(args.save_file).suffix.lower() != ".mp4":
        raise ValueError(f"--save-file {args.save_file}: the growing video is an mp4; give a name ending in .mp4.")
    if args.preview is None and args.save_file is None:
        raise ValueError("nothing would see the frames: give --save-file out.mp4 and/or --preview raw|mjpeg.")
    if args.preview == "raw" and sys.stdout.isatty():
        raise ValueError("--preview raw writes video bytes to stdout; pipe it into ffplay (the command is printed) "
                         "rather than a terminal.")
    fps_probe = 16.0  # times are checked before the model loads; converted again with the model's fps below
    for flag, text in [("--duration", args.duration), ("--state-every", args.state_every),
                       *(("--then", t) for t, _ in args.then)]:
        if text is not None:
            parse_time(text, flag, fps_probe)
    if not resume:  # the schedule's own checks (times in order, prompts not empty)
        PromptSchedule.of(args.prompt, [(parse_time(t, "--then", fps_probe) / fps_probe, p) for t, p in args.then])
    if args.image is not None and resume:
        raise ValueError(f"--image starts a new stream; {args.state} already holds one (its anchor included): leave "
                         "--image out to resume it, or give a new --state file.")
    if args.image is not None and args.anchor is False:
        raise ValueError("--image keeps the image as the stream's anchor; leave --no-anchor out.")
    image = read_image(args.image) if args.image is not None else None  # refused here if unreadable
    if args.preview == "mjpeg" and not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a TCP port; give one from 1024 to 65535 (0: any free port).")
    if resume and args.duration is not None:  # a resumed stream only grows: the total must not end before it
        from openwan.pipelines.stream_state import read_state_info

        info = read_state_info(args.state)
        at, fps_state = int(info["emitted"]), float(info["config"]["fps"])
        if parse_time(args.duration, "--duration", fps_state) < at:
            raise ValueError(f"--duration {args.duration} ends before {args.state}, which is already at frame {at} "
                             f"({at / fps_state:.2f} s); give a longer --duration, or leave it out to stream on.")
    flags = dict(window=args.window, block=args.block, steps_per_shift=args.steps_per_shift,
                 sample_shift=args.sample_shift, guide_scale=args.guide_scale, seed=args.seed,
                 transition=args.transition, size=parse_size(args.size) if args.size else None,
                 anchor=True if image is not None else args.anchor)
    StreamConfig(**{k: v for k, v in flags.items() if v is not None})  # the flags' own checks, before any load
    device = check_device(args.device) if args.device else None
    if args.ckpt_dir is None:
        if not holds_dit(BUNDLED):
            raise ValueError(f"no --ckpt-dir given and no bundled model at {BUNDLED}; give --ckpt-dir.")
        args.ckpt_dir = str(BUNDLED)
        print(BUNDLED_NOTE, file=log)

    pipe, defaults = load_stream_pipe(args.ckpt_dir, device=device, student=args.student)
    config = merged(defaults, **flags)
    if defaults != StreamConfig():
        print(f"streaming with the release's student ({args.ckpt_dir}/stream_model, --no-student: its own DiT)",
              file=log)
    fps = float(pipe.defaults.fps)
    if resume:
        s = VideoStream.resume(pipe, args.state)
        if args.prompt is not None and (args.prompt, *[p for _, p in args.then]) != tuple(s.schedule.prompts):
            raise ValueError(f"{args.state} continues the prompts {s.schedule.prompts}; leave --prompt/--then out to "
                             "resume it, or give a new --state file.")
        print(f"resuming {args.state} at frame {s.emitted}", file=log)
    else:
        then = [(parse_time(t, "--then", fps) / fps, p) for t, p in args.then]
        s = VideoStream(pipe, PromptSchedule.of(args.prompt, then), config, image=image)
    fps = s.config.fps
    total = parse_time(args.duration, "--duration", fps) if args.duration else None
    every = max(1, parse_time(args.state_every, "--state-every", fps))
    width, height = s.config.size

    outputs = []
    if args.save_file:
        outputs.append(GrowingVideo(args.save_file, fps, (width, height), keep=s.emitted, tail=s.extra.get("tail")))
    if args.preview == "raw":
        print(f"preview: openwan stream ... --preview raw | {RawPreview.command((width, height), fps)}", file=log)
        outputs.append(RawPreview())
    elif args.preview == "mjpeg":
        server = MJPEGServer(args.port, scale=max(1, 256 // max(width, height)))
        print(f"preview: MJPEG at {server.url} (open it in a browser, or: ffplay -f mjpeg {server.url})", file=log)
        outputs.append(server)
    return _loop(s, outputs, total, every, args.state, args.preview is not None, log)


def _loop(s, outputs: list, total: int | None, every: int, state: str | None, paced: bool, log) -> int:
    """Frames from the stream to every output until ``total`` (or an interrupt); the state saved every ``every``
    frames and at the end (on an interrupt, unless it came while a chunk was being written: the state saved before
    stands, and a resume rewrites the file from it). A preview is paced to real time."""
    start, first, saved_at = time.perf_counter(), None, s.emitted
    begin = s.emitted
    tail = s.extra.get("tail", torch.zeros(0, *s.pending.shape[1:]))
    fps = s.config.fps
    interrupted, written = False, True  # written: every frame handed out is in the outputs and the tail
    try:
        with terminate_cleanly():
            while total is None or s.emitted < total:
                if s.pending.shape[0] == 0:
                    s.step()
                    continue
                n = s.pending.shape[0] if total is None else min(s.pending.shape[0], total - s.emitted)
                frames = s.read(n)
                written = False
                if first is None:
                    first = time.perf_counter() - start
                if paced:  # not ahead of real time: a viewer sees the video at its own speed
                    time.sleep(max(0.0, start + (s.emitted - begin) / fps - time.perf_counter()))
                for out in outputs:
                    out.write(frames)
                tail = torch.cat([tail, frames])[-TAIL:]
                written = True
                if state and s.emitted - saved_at >= every:
                    s.save(state, extra={"tail": tail})
                    saved_at = s.emitted
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if state and written:  # else the last saved state stands (a step is all or nothing, a chunk is not)
            s.save(state, extra={"tail": tail})
        for out in outputs:
            out.close()
    made = s.emitted - begin
    took = time.perf_counter() - start
    where = ", ".join(str(o.path) for o in outputs if hasattr(o, "path")) or "the preview"
    print(f"streamed {made} frames ({made / fps:.2f} s of video, {s.emitted} in all) to {where} in {took:.1f} s: "
          f"{made / max(took, 1e-9):.2f} frames/s, first frame after {first or 0:.2f} s"
          + (f"; state in {state}" if state else ""), file=log)
    if interrupted:
        raise KeyboardInterrupt
    return 0
