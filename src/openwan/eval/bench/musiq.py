"""Imaging quality by MUSIQ (VBench's imaging quality): a no-reference image-quality transformer, through pyiqa.

The metric is ``pyiqa.create_metric(BenchWeights.musiq)``: ``musiq`` / ``musiq-koniq`` (trained on KonIQ-10k),
``musiq-spaq`` (SPAQ, the one VBench uses) or ``musiq-paq2piq``, each rating about 0-100, or ``musiq-ava`` (1-10).
As VBench does, each frame is resized so its longer side is at most :data:`LONG_SIDE` pixels, rated, and the value is
the mean rating over :data:`FRAMES` key frames divided by the metric's top (100, or 10 for ``musiq-ava``), clipped to
[0, 1]. pyiqa fetches the weights into its cache on first use; where that fails the dimension is not measured and
says why.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from openwan.eval.bench.base import BenchWeights, Dimension, Score, Video

FRAMES = 8  # key frames rated per video
LONG_SIDE = 512  # frames are rated with their longer side at most this many pixels
TOP = {"musiq": 100.0, "musiq-koniq": 100.0, "musiq-spaq": 100.0, "musiq-paq2piq": 100.0, "musiq-ava": 10.0}
NO_PYIQA = "not measured: pip install pyiqa (and its MUSIQ weights)"
NO_NAME = "not measured: give a pyiqa MUSIQ metric name (musiq-spaq, as VBench uses)"


def rating_frames(frames: np.ndarray, long_side: int = LONG_SIDE) -> np.ndarray:
    """uint8 RGB frames [N, H, W, 3] area-resized so the longer side is at most ``long_side`` (never upscaled)."""
    import cv2

    h, w = frames.shape[1:3]
    if max(h, w) <= long_side:
        return frames
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


class MusiqQuality(Dimension):
    """pyiqa's MUSIQ rating of key frames over the metric's top, in [0, 1]; the rating itself in ``details``."""

    name = "imaging_quality_musiq"
    stands_for = "VBench imaging quality (MUSIQ through pyiqa)"
    needs = ("pyiqa and its MUSIQ weights",)

    def __init__(self, weights: BenchWeights | None = None):
        super().__init__(weights)
        metric = self.weights.musiq
        if metric is not None and metric not in TOP:
            raise ValueError(f"unknown MUSIQ metric {metric!r}; give one of {', '.join(TOP)}.")
        self._metric = None
        self._failed: str | None = None

    def available(self) -> str | None:
        if not self.weights.musiq:
            return NO_NAME
        if importlib.util.find_spec("pyiqa") is None:
            return NO_PYIQA
        return self._failed

    def setup(self) -> None:
        """Create the pyiqa metric once; a failure to fetch or load its weights makes the dimension not measured."""
        if self._metric is not None or self.available():
            return
        import pyiqa
        import torch

        device = self.weights.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self._metric = pyiqa.create_metric(self.weights.musiq, as_loss=False, device=torch.device(device))
        except (OSError, RuntimeError, ValueError) as error:  # no network for the download, a broken cache file
            self._failed = (f"not measured: pyiqa could not load the {self.weights.musiq} weights ({error}); put "
                            f"them in pyiqa's cache or run once with network access")

    def score(self, video: Video) -> Score:
        self.setup()
        missing = self.available()
        if missing:
            return Score(None, not_measured=missing)
        import torch

        from openwan.curate.embed import key_frame_indices

        picks = key_frame_indices(len(video.frames), FRAMES)
        frames = rating_frames(video.frames[picks])
        device = next((p.device for p in self._metric.parameters()), torch.device("cpu"))
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255
            ratings = torch.cat([self._metric(x[i:i + 1]).reshape(-1).float().cpu() for i in range(len(x))]).numpy()
        rating = float(ratings.mean())
        top = TOP[self.weights.musiq]
        return Score(round(min(max(rating / top, 0.0), 1.0), 6),
                     details={f"musiq_rating_0_to_{top:g}": round(rating, 4),
                              "musiq_rating_min": round(float(ratings.min()), 4), "frames": picks,
                              "rated_size": [int(frames.shape[2]), int(frames.shape[1])]})


__all__ = ["MusiqQuality", "rating_frames", "NO_PYIQA", "NO_NAME", "TOP"]
