"""Clean and defective clips for the filter tests, built from the real footage at test time.

A clip is a short run of analysis frames (every 3rd frame of 24, i.e. 8 frames at about 8 fps) of one shot of a
bundled video, centre-cropped to 16:9. Defects are drawn onto the frames (text, logos, bars, exposure, blur) and
every clip goes through H.264 and back with PyAV, so detectors see real compression, as they will on real input.
"""

from __future__ import annotations

import functools
from pathlib import Path

import av
import cv2
import numpy as np

from curate.footage import footage, write_video
from openwan.curate.base import ClipFrames

SIZE = (320, 180)  # the source size the test clips are written at
SEGMENTS = (("bunny", 132), ("bikes", 250), ("carphone", 120))


def fit(frames: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Frames centre-cropped to the aspect of ``size`` = (width, height) and resized to it."""
    h, w = frames.shape[1:3]
    tw, th = min(w, round(h * size[0] / size[1])), min(h, round(w * size[1] / size[0]))
    x0, y0 = (w - tw) // 2, (h - th) // 2
    return np.stack([cv2.resize(f[y0:y0 + th, x0:x0 + tw], size, interpolation=cv2.INTER_AREA) for f in frames])


@functools.cache
def source(name: str) -> np.ndarray:
    """All frames of a bundled video with the short side at most 360 px (read-only, decoded once)."""
    frames = footage(name)
    h, w = frames.shape[1:3]
    if min(h, w) > 360:
        s = 360 / min(h, w)
        frames = np.stack([cv2.resize(f, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) for f in frames])
    frames.flags.writeable = False
    return frames


def shot(name: str, start: int, count: int = 24, step: int = 3, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Every ``step``-th frame of ``start:start+count`` of a bundled video, centre-cropped and resized to ``size``."""
    return fit(source(name)[start:start + count:step], size)


@functools.cache
def _clean(size: tuple[int, int], step: int) -> tuple[tuple[str, np.ndarray], ...]:
    out = []
    for name, n in SEGMENTS:
        for start in range(0, n - 24 + 1, step):
            frames = shot(name, start, size=size)
            frames.flags.writeable = False
            out.append((f"{name}{start}", frames))
    return tuple(out)


def clean_clips(size: tuple[int, int] = SIZE, step: int = 24) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 [8, H, W, 3]) for 1-second segments of each bundled video, every ``step`` source frames
    (step 24: 20 clips: 5 bunny, 10 bikes, 5 carphone)."""
    return [(n, f.copy()) for n, f in _clean(size, step)]


def roundtrip(frames: np.ndarray, tmp: Path, name: str = "clip") -> np.ndarray:
    """The frames after H.264 (crf 23) and PyAV decoding."""
    path = write_video(frames, Path(tmp) / f"{name}.mp4", fps=8, crf=23)
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def as_clip(frames: np.ndarray, name: str = "clip", analysis_short: int | None = None) -> tuple[dict, ClipFrames]:
    """A clip row and its ClipFrames for frames taken as the whole source; ``analysis_short`` resizes the analysis
    frames to that short side (as the core does), else they are the source's pixels."""
    t, h, w = frames.shape[:3]
    analysis = frames
    if analysis_short is not None:
        s = analysis_short / min(h, w)
        analysis = np.stack([cv2.resize(f, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
                             for f in frames])
    row = {"clip_id": name, "source": f"/{name}.mp4", "start": 0.0, "end": t / 8, "duration": t / 8,
           "fps": 8.0, "width": w, "height": h, "frames": t, "caption": ""}
    return row, ClipFrames(analysis, np.arange(t) / 8.0, 8.0, (w, h))


# ------------------------------------------------------------------------------------------------ defects


def lut(frames: np.ndarray, fn) -> np.ndarray:
    """Frames through a tone curve ``fn`` on [0, 1] values."""
    table = np.clip(np.round(fn(np.arange(256) / 255.0) * 255), 0, 255).astype(np.uint8)
    return table[frames]


def darken(frames: np.ndarray, gain: float = 0.22) -> np.ndarray:
    return lut(frames, lambda x: gain * x)


def night(frames: np.ndarray) -> np.ndarray:
    """A dark scene that keeps its texture (a night look: gamma 2.2 and 0.75 gain)."""
    return lut(frames, lambda x: 0.75 * x ** 2.2)


def overexpose(frames: np.ndarray) -> np.ndarray:
    return lut(frames, lambda x: 1.9 * x + 0.25)


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def bars(frames: np.ndarray, kind: str, share: float, colour: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """The picture shrunk into the same frame size with bars: ``kind`` "letterbox" (top and bottom), "pillarbox"
    (left and right) or "window" (all four); ``share`` of the height/width per bar. Returns (frames, (bar_x, bar_y))
    in pixels."""
    t, h, w = frames.shape[:3]
    by = round(h * share) // 2 * 2 if kind in ("letterbox", "window") else 0
    bx = round(w * share) // 2 * 2 if kind in ("pillarbox", "window") else 0
    out = np.full_like(frames, colour)
    inner = np.stack([cv2.resize(f, (w - 2 * bx, h - 2 * by), interpolation=cv2.INTER_AREA) for f in frames])
    out[:, by:h - by, bx:w - bx] = inner
    return out, (bx, by)


TEXTS = ("SALE", "BREAKING NEWS", "www.example.com", "Subscribe now for more videos", "LIVE 24/7",
         "The quick brown fox jumps over the lazy dog")


def text(frames: np.ndarray, i: int) -> np.ndarray:
    """Frames with rendered caption text, the ``i``-th of several sizes, positions, colours and lengths."""
    t, h, w = frames.shape[:3]
    words = TEXTS[i % len(TEXTS)]
    font = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX)[i % 3]
    scale = (0.5, 0.7, 1.0, 0.6)[i % 4] * w / 320
    thick = max(1, round(scale * 2))
    (tw, th), _ = cv2.getTextSize(words, font, scale, thick)
    while tw > 0.95 * w:  # long lines are set smaller, as subtitles are
        scale *= 0.9
        (tw, th), _ = cv2.getTextSize(words, font, scale, thick)
    x = (w - tw) // 2 if i % 2 == 0 else max(2, int(0.05 * w))
    y = (h - int(0.08 * h), int(0.15 * h) + th, h // 2)[i % 3]
    colour = ((255, 255, 255), (255, 255, 0), (255, 255, 255), (20, 20, 20))[i % 4]
    out = frames.copy()
    for f in out:
        if i % 4 == 3:  # dark text on a light strip, as lower-thirds are
            cv2.rectangle(f, (x - 4, y - th - 4), (x + tw + 4, y + 6), (235, 235, 235), -1)
        else:  # light text with an outline
            cv2.putText(f, words, (x, y), font, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(f, words, (x, y), font, scale, colour, thick, cv2.LINE_AA)
    return out


def logo(frames: np.ndarray, i: int) -> np.ndarray:
    """Frames with a small drawn emblem (a ring, a mark and letters) in a corner; odd ``i`` are semi-transparent."""
    t, h, w = frames.shape[:3]
    size = round((0.16, 0.2, 0.24)[i % 3] * h)
    mark = np.zeros((size, 2 * size, 3), np.uint8)
    alpha = np.zeros((size, 2 * size), np.uint8)
    c, r = (size // 2, size // 2), size // 2 - 2
    for img, val in ((mark, (250, 250, 250)), (alpha, 255)):
        cv2.circle(img, c, r, val, max(1, size // 10), cv2.LINE_AA)
        cv2.line(img, (c[0] - r // 2, c[1] + r // 2), (c[0] + r // 2, c[1] - r // 2), val, max(1, size // 10))
        cv2.putText(img, ("TV", "HD", "CH")[i % 3], (size, int(0.75 * size)), cv2.FONT_HERSHEY_SIMPLEX,
                    size / 32, val, max(1, size // 12), cv2.LINE_AA)
    alpha = alpha.astype(np.float32) / 255 * (0.55 if i % 2 else 1.0)
    corner = i % 4
    margin = max(4, round(0.04 * h))
    x0 = margin if corner in (0, 3) else w - margin - 2 * size
    y0 = margin if corner in (0, 1) else h - margin - size
    out = frames.astype(np.float32)
    region = out[:, y0:y0 + size, x0:x0 + 2 * size]
    out[:, y0:y0 + size, x0:x0 + 2 * size] = region * (1 - alpha[..., None]) + mark * alpha[..., None]
    return np.round(out).astype(np.uint8)


def rates(name: str, flagged_defects: list[bool], flagged_clean: list[bool]) -> tuple[float, float]:
    """Recall on the defect set and the false-positive share on the clean set, printed."""
    recall = sum(flagged_defects) / len(flagged_defects)
    fp = sum(flagged_clean) / len(flagged_clean)
    print(f"{name}: recall {recall:.2f} ({sum(flagged_defects)}/{len(flagged_defects)}), false positives {fp:.2f} "
          f"({sum(flagged_clean)}/{len(flagged_clean)})")
    return recall, fp


def pan(name: str, start: int, count: int = 48, step: int = 3, size: tuple[int, int] = SIZE,
        direction: int = 1) -> np.ndarray:
    """A simulated camera pan across frames ``start:start+count`` of a bundled video (every ``step``-th frame): a
    16:9 window of 55% of the width sweeping 40% of the width, left to right (``direction`` 1) or back."""
    from curate.footage import window

    frames = source(name)[start:start + count:step]
    h, w = frames.shape[1:3]
    bw = 0.55 * w
    bh = min(h, bw * size[1] / size[0])
    xs = np.linspace(0.3, 0.7, len(frames))[::direction] * w
    return window(frames, [(x, h / 2, bw, bh) for x in xs], size)
