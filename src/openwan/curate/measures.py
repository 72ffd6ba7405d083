"""Weight-free pixel measures of a clip's frames, shared by the filter, motion and quality stages.

Every function takes uint8 RGB frames ``[T, H, W, 3]`` (one frame ``[H, W, 3]`` is read as ``T = 1``) and works on
luma in ``[0, 1]`` (BT.709 weights on the gamma-encoded values, i.e. Y' as video codecs carry it), so the numbers
mean the same for every stage:

- :func:`luma`: Y' per pixel, float32 ``[T, H, W]`` in ``[0, 1]``.
- :func:`sharpness`: mean variance of the Laplacian of (slightly smoothed) luma, measured on a fixed grid (the
  short side resampled to ``ref_short_side`` pixels) so the same picture gives about the same number at any size.
- :func:`exposure`: mean luma and the shares of crushed-dark and clipped-bright pixels.
- :func:`contrast`: RMS contrast, the standard deviation of luma within a frame.
- :func:`noise_sigma`: the standard deviation of additive pixel noise in luma units, from the median absolute
  deviation of a high-pass that cancels smooth picture content.
- :func:`colourfulness`: Hasler and Suesstrunk's colourfulness metric on the 0..255 scale of their paper.

This module imports nothing of openwan.
"""

from __future__ import annotations

import cv2
import numpy as np

BT709 = (0.2126, 0.7152, 0.0722)  # Y' = 0.2126 R' + 0.7152 G' + 0.0722 B' (ITU-R BT.709)
DARK_LUMA = 0.06  # below this luma a pixel counts as crushed dark (about 15/255)
BRIGHT_LUMA = 0.94  # above this luma a pixel counts as clipped bright (about 240/255)
REF_SHORT_SIDE = 256  # sharpness is measured with the short side at this many pixels
SHARPNESS_SIGMA = 0.8  # Gaussian (grid pixels) before the Laplacian: resamplers differ above this frequency

# Immerkaer's noise mask: the difference of two Laplacians, zero on planes and on linear ramps in any direction.
# Its coefficients' squares sum to 36, so i.i.d. noise of std sigma comes out with std 6 * sigma.
_NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_MAD_TO_SIGMA = 1.4826  # std of a normal distribution per unit of its median absolute deviation


def _check(frames: np.ndarray, who: str, min_side: int = 3) -> np.ndarray:
    """``frames`` as uint8 ``[T, H, W, 3]``, or ValueError naming ``who`` and what it needs."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{who} needs uint8 RGB frames [T, H, W, 3]; got {frames.dtype} {tuple(frames.shape)}. "
                         "Decode the clip to RGB24 first.")
    if frames.shape[0] == 0 or min(frames.shape[1:3]) < min_side:
        raise ValueError(f"{who} needs at least one frame of at least {min_side}x{min_side} pixels; got "
                         f"{tuple(frames.shape)}.")
    return frames


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.709 luma Y' of uint8 RGB frames: float32 ``[T, H, W]`` in ``[0, 1]`` (a single frame gives ``T = 1``)."""
    frames = _check(frames, "luma", min_side=1)
    w = np.asarray(BT709, dtype=np.float32) / np.float32(255.0)
    return frames.astype(np.float32) @ w  # [T, H, W]


def _at_reference_scale(y: np.ndarray, short_side: int) -> np.ndarray:
    """Luma planes ``[T, H, W]`` resampled so their short side is ``short_side`` (area filter when shrinking)."""
    h, w = y.shape[1:]
    s = short_side / min(h, w)
    if abs(s - 1.0) < 1e-6:
        return y
    size = (max(3, round(w * s)), max(3, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return np.stack([cv2.resize(plane, size, interpolation=interp) for plane in y])


def sharpness(frames: np.ndarray, ref_short_side: int = REF_SHORT_SIDE) -> float:
    """Mean over frames of the variance of the Laplacian of luma, in squared luma units (luma in ``[0, 1]``), measured
    on a fixed grid so that the number does not depend on the frames' resolution.

    Each frame's luma is resampled so its short side is ``ref_short_side`` pixels (area filter when shrinking,
    bicubic when growing), smoothed by a Gaussian of ``SHARPNESS_SIGMA`` = 0.8 grid pixels, and its 3x3 Laplacian
    taken (a Laplacian of Gaussian). The grid makes detail per picture, not per pixel, count: shrinking a frame
    packs its detail into fewer pixels and would inflate a per-pixel Laplacian. The small Gaussian discards the last
    half-octave below the grid's Nyquist frequency, where resamplers differ, so a picture measures within ~15% the
    same from any source size down to the grid. Frames smaller than the grid are enlarged and read as softer, as
    they look at that size. Examples on 320x180 copies of the bundled footage: Big Buck Bunny ~1.2e-3, the same
    after a 2-pixel Gaussian blur ~1e-5.
    """
    frames = _check(frames, "sharpness")
    if ref_short_side < 8:
        raise ValueError(f"sharpness needs ref_short_side >= 8 pixels; got {ref_short_side}.")
    y = _at_reference_scale(luma(frames), ref_short_side)
    return float(np.mean([cv2.Laplacian(cv2.GaussianBlur(plane, (0, 0), SHARPNESS_SIGMA), cv2.CV_32F, ksize=1).var()
                          for plane in y]))


def exposure(frames: np.ndarray, dark: float = DARK_LUMA, bright: float = BRIGHT_LUMA) -> dict[str, float]:
    """Exposure of the frames: ``mean_luma`` (mean Y' in ``[0, 1]``), ``dark_share`` (share of pixels with luma below
    ``dark``, default 0.06) and ``bright_share`` (share above ``bright``, default 0.94), both in ``[0, 1]`` over all
    pixels of all frames."""
    frames = _check(frames, "exposure", min_side=1)
    if not 0.0 <= dark < bright <= 1.0:
        raise ValueError(f"exposure needs 0 <= dark < bright <= 1; got dark={dark}, bright={bright}.")
    y = luma(frames)
    return {"mean_luma": float(y.mean()), "dark_share": float((y < dark).mean()),
            "bright_share": float((y > bright).mean())}


def contrast(frames: np.ndarray) -> float:
    """RMS contrast: the standard deviation of luma within each frame, mean over frames, in luma units (``[0, 0.5]``).
    Ordinary footage reads 0.13 to 0.27; washed-out or crushed pictures well under 0.1."""
    frames = _check(frames, "contrast", min_side=1)
    return float(luma(frames).std(axis=(1, 2)).mean())


def noise_sigma(frames: np.ndarray) -> float:
    """Estimated standard deviation of additive pixel noise, in luma units (luma in ``[0, 1]``; multiply by 255 for
    8-bit levels): the median over frames of ``1.4826 * MAD / 6`` of Immerkaer's high-pass of luma.

    The high-pass cancels flat areas and linear gradients, so what remains is noise plus edges and texture; the
    median absolute deviation ignores the minority of edge pixels. Measured at the frames' own resolution (resampling
    would average the noise away). Clean footage gives well under 0.01; sensor noise or grain 0.02 and up.
    """
    frames = _check(frames, "noise_sigma")
    per_frame = []
    for plane in luma(frames):
        r = cv2.filter2D(plane, cv2.CV_32F, _NOISE_MASK, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
        mad = np.median(np.abs(r - np.median(r)))
        per_frame.append(_MAD_TO_SIGMA * mad / 6.0)
    return float(np.median(per_frame))


def colourfulness(frames: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness, mean over frames, on their 0..255 RGB scale: ``sqrt(s_rg^2 + s_yb^2) +
    0.3 * sqrt(m_rg^2 + m_yb^2)`` with ``rg = R - G`` and ``yb = (R + G) / 2 - B`` (s: std, m: mean over a frame).
    Their perceptual anchors: 0 not colourful, ~15 slightly, ~33 moderately, ~45 averagely, ~59 quite, ~82 highly,
    ~109 extremely colourful."""
    frames = _check(frames, "colourfulness", min_side=1)
    rgb = frames.astype(np.float32)
    rg = rgb[..., 0] - rgb[..., 1]  # [T, H, W]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    spread = np.sqrt(rg.var(axis=(1, 2)) + yb.var(axis=(1, 2)))
    centre = np.sqrt(rg.mean(axis=(1, 2)) ** 2 + yb.mean(axis=(1, 2)) ** 2)
    return float(np.mean(spread + 0.3 * centre))


__all__ = ["luma", "sharpness", "exposure", "contrast", "noise_sigma", "colourfulness", "BT709", "DARK_LUMA",
           "BRIGHT_LUMA", "REF_SHORT_SIDE", "SHARPNESS_SIGMA"]
