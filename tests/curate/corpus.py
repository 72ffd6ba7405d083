"""A small raw-video corpus for the pipeline, executor and CLI tests, built at test time from real footage.

Good videos (each 160x90 to 320x180, 2-5 s at 25 fps) beside the inputs a crawl brings: a truncated mp4, random
bytes under a video name, a zero-length file, a folder named like a video, and a shot too short to keep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.footage import corrupt_copy, footage, garbage, write_video

GOOD = ("bikes_letterbox.mp4", "bunny_cut.mp4", "carphone.mp4", "carphone_copy.mp4", "carphone_dark.mp4",
        "frozen.mp4")
BAD = ("empty.mp4", "folder.mp4", "noise.mp4", "short.mp4", "truncated.mp4")
UNREADABLE = ("empty.mp4", "folder.mp4", "noise.mp4", "truncated.mp4")  # sources that must end as errors


def letterbox(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frames`` resized to fit ``size`` (width, height) with their aspect, in black bars."""
    from curate.footage import resize

    width, height = size
    h, w = frames.shape[1:3]
    inner_h = int(round(width * h / w / 2)) * 2
    small = resize(frames, (width, inner_h))
    out = np.zeros((len(frames), height, width, 3), np.uint8)
    top = (height - inner_h) // 2
    out[:, top:top + inner_h] = small
    return out


def build_corpus(root: Path) -> Path:
    """Write the corpus into ``root/raw`` (and captions beside two videos); returns that folder."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    # a hard cut at frame 60: two shots of 2.4 s (bikes.mp4 has its own cuts at frames 30, 76, 137, 187, 242)
    write_video(np.concatenate([footage("bunny", 0, 60, (160, 90)), footage("bikes", 76, 60, (160, 90))]),
                raw / "bunny_cut.mp4")
    carphone = footage("carphone", 0, 100, (176, 144))
    write_video(carphone, raw / "carphone.mp4")
    (raw / "carphone.txt").write_text("a man talks on a phone in a car\n")
    write_video(carphone, raw / "carphone_copy.mp4", crf=30)  # the same footage re-encoded: a duplicate
    write_video((carphone.astype(np.float32) * 0.12).astype(np.uint8), raw / "carphone_dark.mp4")
    write_video(letterbox(footage("bikes", 187, 55), (320, 180)), raw / "bikes_letterbox.mp4")
    (raw / "bikes_letterbox.mp4.txt").write_text("cyclists ride past a crowd")
    write_video(np.repeat(footage("bunny", 40, 1, (160, 90)), 75, axis=0), raw / "frozen.mp4")  # a still: static
    write_video(footage("bunny", 0, 25, (160, 90)), raw / "short.mp4")  # 1 s: shorter than any clip
    corrupt_copy(raw / "carphone.mp4", raw / "truncated.mp4")
    garbage(raw / "noise.mp4")
    (raw / "empty.mp4").write_bytes(b"")
    (raw / "folder.mp4").mkdir()
    (raw / "folder.mp4" / "notes.md").write_text("not a video\n")
    return raw


def build_small_corpus(root: Path) -> Path:
    """Three good videos and one unreadable file in ``root/raw``, for the command-line tests; returns the folder."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_video(footage("carphone", 0, 100, (176, 144)), raw / "carphone.mp4")
    (raw / "carphone.txt").write_text("a man talks on a phone in a car\n")
    write_video(letterbox(footage("bikes", 187, 55), (320, 180)), raw / "bikes_letterbox.mp4")
    write_video(np.repeat(footage("bunny", 40, 1, (160, 90)), 75, axis=0), raw / "frozen.mp4")
    garbage(raw / "noise.mp4")
    return raw
