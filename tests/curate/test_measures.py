"""The shared pixel measures on real footage: known values on flat colours, and each measure moving the right way
(and by a margin) under blur, noise, darkening and desaturation of real frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from curate.footage import footage, resize
from openwan.curate import measures

SOURCES = {"bunny": (320, 180), "bikes": (320, 136), "carphone": (176, 144)}


def _clip(name: str, count: int = 6) -> np.ndarray:
    return resize(footage(name, 0, count), SOURCES[name])


def _flat(rgb: tuple[int, int, int], shape: tuple[int, int, int] = (2, 24, 32)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (*shape, 3)).copy()


def test_luma_is_bt709_in_unit_range():
    frames = np.stack([_flat((255, 255, 255))[0], _flat((0, 0, 0))[0], _flat((0, 255, 0))[0], _flat((255, 0, 0))[0]])
    y = measures.luma(frames)
    assert y.dtype == np.float32 and y.shape == (4, 24, 32)
    assert np.allclose(y[:, 0, 0], [1.0, 0.0, 0.7152, 0.2126], atol=1e-5)
    assert measures.luma(frames[0]).shape == (1, 24, 32)  # one frame reads as T = 1


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8), np.uint8),
                                 np.zeros((0, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 4), np.uint8)])
def test_bad_frames_are_refused_naming_the_measure(bad):
    for fn in (measures.sharpness, measures.noise_sigma, measures.exposure, measures.colourfulness, measures.contrast):
        with pytest.raises(ValueError, match=fn.__name__):
            fn(bad)


def test_exposure_on_flat_and_real_frames():
    assert measures.exposure(_flat((0, 0, 0))) == {"mean_luma": 0.0, "dark_share": 1.0, "bright_share": 0.0}
    assert measures.exposure(_flat((255, 255, 255)))["bright_share"] == 1.0
    mid = measures.exposure(_flat((128, 128, 128)))
    assert mid["dark_share"] == mid["bright_share"] == 0.0 and abs(mid["mean_luma"] - 128 / 255) < 1e-5
    for name in SOURCES:
        clean = _clip(name)
        dark = measures.exposure((clean * 0.1).astype(np.uint8))
        bright = measures.exposure(np.clip(clean.astype(np.float32) * 2.5 + 60, 0, 255).astype(np.uint8))
        base = measures.exposure(clean)
        assert dark["mean_luma"] < 0.3 * base["mean_luma"] and dark["dark_share"] > base["dark_share"] + 0.4
        assert bright["bright_share"] > base["bright_share"] + 0.4 and bright["mean_luma"] > base["mean_luma"]
        washed = (clean * 0.3 + 160).astype(np.uint8)
        assert 0.1 < measures.contrast(clean) and measures.contrast(washed) < 0.35 * measures.contrast(clean)
    assert measures.contrast(_flat((77, 77, 77))) < 1e-6


def test_sharpness_does_not_depend_on_resolution_and_drops_with_blur():
    bunny = footage("bunny", 0, 4)  # 1280x720: every copy below is still at least the 256-pixel grid
    sizes = [(1280, 720), (960, 540), (640, 360), (456, 256)]
    values = [measures.sharpness(resize(bunny, s)) for s in sizes]
    assert max(values) / min(values) < 1.25, values
    for name in SOURCES:
        clean = _clip(name)
        for sigma in (1.0, 2.0):
            blurred = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in clean])
            assert measures.sharpness(blurred) < 0.5 * measures.sharpness(clean), (name, sigma)


def test_noise_sigma_recovers_added_noise():
    rng = np.random.default_rng(0)
    for level in (4.0, 8.0, 16.0):  # in 8-bit levels
        grey = np.clip(_flat((120, 120, 120), (3, 90, 160)) + rng.normal(0, level, (3, 90, 160, 1)), 0, 255)
        est = measures.noise_sigma(grey.astype(np.uint8)) * 255
        assert abs(est - level) < 0.1 * level, (level, est)
    for name in SOURCES:
        clean = _clip(name)
        prev = measures.noise_sigma(clean)
        for level in (8.0, 16.0, 32.0):
            noisy = np.clip(clean + rng.normal(0, level, clean.shape), 0, 255).astype(np.uint8)
            est = measures.noise_sigma(noisy)
            assert est > prev and 0.6 * level < est * 255 < 1.3 * level + prev * 255, (name, level, est * 255)
            prev = est


def test_colourfulness_known_values_and_desaturation():
    assert measures.colourfulness(_flat((90, 90, 90))) == 0.0
    red = measures.colourfulness(_flat((255, 0, 0)))  # rg = 255, yb = 127.5, no spread
    assert abs(red - 0.3 * np.hypot(255, 127.5)) < 1e-3
    for name in SOURCES:
        clean = _clip(name)
        grey = measures.luma(clean)[..., None] * 255
        half = (0.5 * clean + 0.5 * grey).astype(np.uint8)
        assert measures.colourfulness(half) < 0.6 * measures.colourfulness(clean), name
