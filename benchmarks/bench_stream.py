"""The streaming sampler's speed against the ordinary sampler's, on the bundled model (or a release).

    python benchmarks/bench_stream.py                     # bundled model, CPU float32, 3 s of video per stream
    python benchmarks/bench_stream.py --seconds 10 --threads 2
    python benchmarks/bench_stream.py --ckpt-dir Wan2.1-T2V-1.3B --device cuda --seconds 5

Rows: the ordinary sampler (one clip of the model's default length and steps: its wall time per frame, text and
decoding included) and streams of a few settings (window / block / sub-steps per shift; the default one walks as
many σ steps per latent frame as the ordinary sampler takes). For a stream: the first-frame latency (from the
stream's creation, text encoding included, to its first decoded frame), the steady frames per second after it, and
the DiT evaluations per video frame (counted with forward hooks; a two-expert model's window that straddles the
boundary runs both experts). Every row runs in one process, after one untimed warm-up call of each.
"""

from __future__ import annotations

import argparse
import time

import torch

from openwan.pipelines import WanPipeline
from openwan.pipelines.components import BUNDLED
from openwan.pipelines.stream import stream
from openwan.pipelines.stream_state import StreamDecoder
from openwan.pipelines.stream_student import has_student, student_settings, with_student

PROMPT = "a red circle moving to the right"


def count_forwards(pipe) -> list[int]:
    """A one-element list counting the DiT forwards (both experts) from now on."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    for model in (pipe.dit, pipe.dit_low):
        if model is not None:
            model.register_forward_pre_hook(hook)
    return calls


def bench_ordinary(pipe, calls) -> dict:
    d = pipe.defaults
    pipe(PROMPT, frame_num=5, sample_steps=2, progress=False)  # warm-up
    calls[0] = 0
    start = time.perf_counter()
    out = pipe(PROMPT, seed=0, progress=False)
    took = time.perf_counter() - start
    frames = out.video.shape[0]
    return {"name": f"ordinary ({frames} frames, {d.sample_steps} steps)", "latency": took,
            "fps": frames / took, "evals": calls[0] / frames, "s_per_frame": took / frames}


def bench_stream(pipe, calls, seconds: float, **options) -> dict:
    stream(pipe, PROMPT, **options).read(1)  # warm-up
    calls[0] = 0
    start = time.perf_counter()
    s = stream(pipe, PROMPT, seed=0, **options)
    first = s.read(1)
    latency = time.perf_counter() - start
    n = max(1, round(seconds * s.config.fps))
    mark = time.perf_counter()
    s.read(n)
    steady = time.perf_counter() - mark
    c = s.config
    total = time.perf_counter() - start
    assert first.shape[0] == 1
    return {"name": f"stream window {c.window}, block {c.block}, {c.steps_per_shift}/shift "
                    f"({c.groups * c.steps_per_shift} steps per frame)",
            "latency": latency, "fps": n / steady, "evals": calls[0] / (n + 1), "s_per_frame": total / (n + 1)}


def bench_decode(pipe, frames: int = 12) -> float:
    """Seconds the causal decoder takes per latent frame in a stream (after its first, one-frame latent)."""
    width, height = pipe.defaults.size
    _, sh, sw = pipe.vae_stride
    g = torch.Generator().manual_seed(0)
    z = torch.randn(pipe.vae.cfg.z_dim, frames + 1, height // sh, width // sw, generator=g)
    decoder = StreamDecoder(pipe.vae, pipe.device)
    decoder.decode(z[:, :1])
    start = time.perf_counter()
    for k in range(1, frames + 1):
        decoder.decode(z[:, k:k + 1])
    return (time.perf_counter() - start) / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", default=str(BUNDLED))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=3.0, help="video per stream after its first frame")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = WanPipeline.from_pretrained(args.ckpt_dir, device=args.device)
    calls = count_forwards(pipe)
    rows = [bench_ordinary(pipe, calls),
            bench_stream(pipe, calls, args.seconds),
            bench_stream(pipe, calls, args.seconds, window=3, steps_per_shift=2),
            bench_stream(pipe, calls, args.seconds, window=4, block=4, steps_per_shift=5)]
    if has_student(args.ckpt_dir):  # the release's streaming student at the settings it was trained for
        student = with_student(pipe, args.ckpt_dir)
        settings = {k: v for k, v in student_settings(args.ckpt_dir).items() if k != "block"}
        row = bench_stream(student, count_forwards(student), args.seconds, **settings)
        rows.append({**row, "name": "student: " + row["name"]})
    decode = bench_decode(pipe)
    print(f"device {args.device}, {torch.get_num_threads()} threads, {pipe.defaults.size[0]}x{pipe.defaults.size[1]}, "
          f"{pipe.defaults.fps} fps video")
    print("| sampler | first frame (s) | frames/s | s per frame | DiT evaluations per frame |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['latency']:.2f} | {r['fps']:.2f} | {r['s_per_frame']:.3f} | {r['evals']:.2f} |")
    print(f"VAE decoder alone: {decode:.3f} s per latent frame ({pipe.vae_stride[0]} video frames)")


if __name__ == "__main__":
    main()
