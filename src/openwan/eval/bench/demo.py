"""The bundled demo model's prompt following: does the video show the colour, shape and motion its prompt asks for?

The prompt is read with the synthetic dataset's own parser (:func:`openwan.data.synthetic.parse_caption`); a prompt
outside its vocabulary (not exactly one colour, one shape and one motion) is not applicable. The video is read by
:func:`openwan.eval.detector.detect` (the moving object's colour, shape and motion against a fitted background) on
the analysis frames. Each attribute scores 1 when the detector sees what the prompt asks for, else 0 (also when no
object stands out); the three dimensions share one detection per video.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from openwan.eval.bench.base import Dimension, Score, Video

CACHE_SIZE = 8  # detections kept (the three attributes of a video are scored one after another)
_DETECTIONS: OrderedDict[tuple, object] = OrderedDict()


def detection(video: Video):
    """:func:`openwan.eval.detector.detect` on ``video``'s analysis frames, computed once per video (keyed by its id
    and a digest of its frames)."""
    import torch

    from openwan.eval.detector import detect

    frames = video.analysis_frames()
    key = (video.id, frames.shape, hashlib.blake2b(np.ascontiguousarray(frames).data, digest_size=16).hexdigest())
    if key not in _DETECTIONS:
        _DETECTIONS[key] = detect(torch.from_numpy(np.ascontiguousarray(frames)).float() / 255)
        while len(_DETECTIONS) > CACHE_SIZE:
            _DETECTIONS.popitem(last=False)
    _DETECTIONS.move_to_end(key)
    return _DETECTIONS[key]


class _DemoAttribute(Dimension):
    attribute = ""  # "colour", "shape" or "motion"
    needs = ("prompt",)

    def score(self, video: Video) -> Score:
        from openwan.data.synthetic import parse_caption

        if not video.prompt:
            return Score(None, not_applicable="no prompt: the attributes it asks for are unknown")
        try:
            colour, shape, motion = parse_caption(video.prompt)
        except ValueError as error:
            return Score(None, not_applicable=f"outside the demo model's vocabulary: {error}")
        if self.attribute == "motion" and len(video.frames) < 2:
            return Score(None, not_applicable="a single frame shows no motion")
        asked = {"colour": colour, "shape": shape, "motion": motion}[self.attribute]
        seen = detection(video)
        got = getattr(seen, self.attribute)
        details = {"asked": asked, "seen": got, "contrast_rgb": seen.contrast}
        if self.attribute == "colour" and seen.rgb is not None:
            details["rgb_0_to_1"] = list(seen.rgb)
        elif self.attribute == "shape" and seen.fill_ratio is not None:
            details.update(fill_ratio=seen.fill_ratio, vertical_skewness=seen.skewness)
        elif self.attribute == "motion" and seen.displacement is not None:
            details["displacement_frame_fraction"] = list(seen.displacement)
        return Score(1.0 if got == asked else 0.0, details=details)


class DemoColour(_DemoAttribute):
    """1 when the detected object's colour is the one the prompt names, else 0."""

    name = "demo_colour"
    stands_for = "demo model prompt following: colour (synthetic shapes detector)"
    attribute = "colour"


class DemoShape(_DemoAttribute):
    """1 when the detected object's shape is the one the prompt names, else 0."""

    name = "demo_shape"
    stands_for = "demo model prompt following: shape (synthetic shapes detector)"
    attribute = "shape"


class DemoMotion(_DemoAttribute):
    """1 when the detected object moves the way the prompt says (or stays still when it says so), else 0."""

    name = "demo_motion"
    stands_for = "demo model prompt following: motion direction (synthetic shapes detector)"
    attribute = "motion"


__all__ = ["DemoColour", "DemoShape", "DemoMotion", "detection"]
