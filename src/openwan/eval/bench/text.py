"""Visual text generation (Wan-Bench's text rendering): does the video show the text its prompt asks for?

The asked-for text is what the prompt quotes: ``"..."``, ``'...'``, ``“...”``, ``‘...’``, ``「...」``, ``『...』``,
``《...》`` (straight quotes hold no space just inside them, so an inch mark opens none, and a single quote counts
only where it is not an apostrophe: no letter or digit just outside it). Each
quoted text is looked for in a few frames evenly spaced over the video, read by the OCR models
``rapidocr-onnxruntime`` ships (PP-OCRv4, Chinese and Latin; :class:`openwan.curate.ocr.OCRStage`), at the video's
own resolution.

Comparison: both sides are NFKC-normalised, case-folded and kept to their letters and digits (spaces and punctuation,
which OCR reads least reliably and prompts quote loosely, do not count), so it works the same for Chinese. A frame's
reading is its text lines joined in reading order, so a text set over two lines is still found. The similarity of an
asked-for text ``t`` to a reading ``r`` is ``1 - d / len(t)`` (at least 0), where ``d`` is the edit distance from
``t`` to the closest stretch of ``r``: other text in the frame (signs, logos) costs nothing, a missing, wrong or
extra character inside the text costs one edit. A text's score is its best frame's (text is often legible only part
of the clip, and one frame that reads right shows the model can write it); the video's value is the mean over its
quoted texts. The median over frames is reported beside it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import unicodedata

import numpy as np

from openwan.eval.bench.base import Dimension, Score, Video

FRAMES = 8  # frames read per video, evenly spaced (first and last included)
MIN_CONFIDENCE = 0.3  # OCR lines recognised with less confidence are dropped
DET_SIZE = 480  # the text detector's short side in pixels (smaller frames are upscaled to it)

# (opening, closing) quote pairs that cannot be confused with anything else
_PAIRS = (("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u300c", "\u300d"), ("\u300e", "\u300f"),
          ("\u300a", "\u300b"), ("\uff02", "\uff02"))
# Straight quotes: the text starts and ends with no space inside the quotes (so the inch mark of 12" does not open
# one), and a single quote must not touch a letter or digit outside (so it is not an apostrophe).
_QUOTED = re.compile("|".join(f"{re.escape(a)}([^{re.escape(b)}]+?){re.escape(b)}" for a, b in _PAIRS)
                     + r'|"(?!\s)([^"]+?)(?<!\s)"' + r"|(?<![^\W_])'(?!\s)([^']+?)(?<!\s)'(?![^\W_])")


def quoted_texts(prompt: str | None) -> list[str]:
    """The texts ``prompt`` quotes, in order, each once; those without a letter or digit are left out."""
    out: list[str] = []
    for match in _QUOTED.finditer(prompt or ""):
        text = next(g for g in match.groups() if g is not None).strip()
        if normalise(text) and text not in out:
            out.append(text)
    return out


def normalise(text: str) -> str:
    """``text`` NFKC-normalised, case-folded and reduced to its letters and digits."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LN")


def substring_distance(target: str, text: str) -> int:
    """The edit distance (insertions, deletions, substitutions) from ``target`` to the stretch of ``text`` closest
    to it; ``len(target)`` when ``text`` is empty."""
    previous = list(range(len(target) + 1))  # column over target, for an empty stretch of text
    best = previous[-1]
    for ch in text:
        current = [0]  # a stretch may start anywhere in text: no cost for the text before it
        for i, want in enumerate(target, 1):
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + (want != ch)))
        previous = current
        best = min(best, current[-1])  # and end anywhere
    return best


def similarity(target: str, reading: str) -> float:
    """``1 - d / len(t)`` (at least 0) for the normalised target ``t`` and reading, ``d`` as
    :func:`substring_distance`; 1 when the text is read exactly."""
    t, r = normalise(target), normalise(reading)
    if not t:
        raise ValueError(f"the asked-for text {target!r} has no letter or digit to compare.")
    return max(0.0, 1.0 - substring_distance(t, r) / len(t))


def frame_picks(length: int, count: int = FRAMES) -> np.ndarray:
    """Indices of ``count`` frames evenly spaced over ``length`` (all of them when there are fewer)."""
    return np.unique(np.linspace(0, length - 1, min(length, count)).round().astype(int))


class TextAccuracy(Dimension):
    """How exactly the video shows the text its prompt quotes: the mean over quoted texts of their best frame's
    :func:`similarity` to the OCR reading, in [0, 1]."""

    name = "text_accuracy"
    stands_for = "the Wan paper's visual text generation (bilingual; not a Wan-Bench dimension): OCR of the quoted text"
    needs = ("prompt", "rapidocr-onnxruntime (bundled OCR models)")

    def __init__(self, weights=None):
        super().__init__(weights)
        self._ocr = None

    def available(self) -> str | None:
        if importlib.util.find_spec("rapidocr_onnxruntime") is None:
            return "not measured: pip install rapidocr-onnxruntime"
        return None

    def setup(self) -> None:
        if self._ocr is not None:
            return
        from openwan.curate.ocr import OCRConfig, OCRStage

        threads = min(4, os.cpu_count() or 1)
        ocr = OCRStage(OCRConfig(frames=FRAMES, det_size=DET_SIZE, min_score=MIN_CONFIDENCE, threads=threads))
        ocr.setup()
        self._ocr = ocr

    def read(self, frame: np.ndarray) -> str:
        """The text OCR reads in one uint8 RGB frame [H, W, 3]: its lines in reading order (RapidOCR sorts its boxes
        top to bottom, then left to right), joined by spaces."""
        self.setup()
        return " ".join(text for _, text, _ in self._ocr.read(frame))

    def score(self, video: Video) -> Score:
        missing = self.available()
        if missing:
            return Score(None, not_measured=missing)
        targets = quoted_texts(video.prompt)
        if not targets:
            return Score(None, not_applicable="the prompt quotes no text to render" if video.prompt
                         else "no prompt: the text it asks for is unknown")
        picks = frame_picks(len(video.frames))
        readings = [self.read(video.frames[i]) for i in picks]
        per_text, values = [], []
        for target in targets:
            sims = np.array([similarity(target, r) for r in readings])
            best = int(sims.argmax())
            values.append(float(sims[best]))
            per_text.append({"text": target, "similarity": round(float(sims[best]), 4),
                             "similarity_median": round(float(np.median(sims)), 4), "best_frame": int(picks[best]),
                             "read": readings[best]})
        value = float(np.mean(values))
        return Score(round(min(max(value, 0.0), 1.0), 6),
                     details={"texts": per_text, "frames_read": [int(i) for i in picks]})


__all__ = ["TextAccuracy", "quoted_texts", "normalise", "substring_distance", "similarity", "frame_picks"]
