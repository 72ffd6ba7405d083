"""Text coverage with the OCR models rapidocr-onnxruntime ships, on real footage with rendered captions of several
sizes, positions and lengths, and on the same clips without them."""

from __future__ import annotations

import numpy as np
import pytest

from curate.defects import TEXTS, as_clip, clean_clips, rates, roundtrip, text
from openwan.curate.ocr import OCRConfig, OCRStage, text_mask


@pytest.fixture(scope="module")
def stage():
    s = OCRStage(OCRConfig())
    s.setup()
    return s


def corpus(tmp, step):
    clean, texts = [], []
    for i, (name, frames) in enumerate(clean_clips()[::step]):
        clean.append((name, roundtrip(frames, tmp, name)))
        texts.append((name, roundtrip(text(frames, i), tmp, f"text-{name}"), TEXTS[i % len(TEXTS)]))
    return clean, texts


def check(stage, clean, texts):
    flagged_text, flagged_clean, read = [], [], 0
    for name, frames, words in texts:
        out = stage(*as_clip(frames, name))
        flagged_text.append(bool(out.reasons))
        read += words.replace(" ", "").lower() in out.values["ocr_text"].replace(" ", "").lower()
    coverages = [stage(*as_clip(f, n)).values["ocr_text_coverage"] for n, f in clean]
    flagged_clean = [c > stage.cfg.max_text_coverage for c in coverages]
    recall, fp = rates(f"ocr ({stage.cfg.frames} frames per clip)", flagged_text, flagged_clean)
    print(f"ocr: captions read exactly (spaces aside) {read}/{len(texts)}; clean coverage max {max(coverages):.4f}")
    assert recall >= 0.9 and fp <= 0.1
    assert read >= len(texts) // 2  # the text is the caption stage's input: most captions come back legible


def test_text_found_and_clean_clips_pass(stage, tmp_path):
    """Default tier: 10 captioned and 10 clean clips, one frame each."""
    clean, texts = corpus(tmp_path, step=2)
    one = OCRStage(OCRConfig(frames=1))
    one._engine = stage._engine  # the same loaded models
    check(one, clean, texts)


@pytest.mark.slow
def test_text_found_and_clean_clips_pass_all(stage, tmp_path):
    """All 20 captioned and 20 clean clips, 3 frames each (the default)."""
    check(stage, *corpus(tmp_path, step=1))


def test_coverage_reason_and_values(stage, tmp_path):
    name, frames = clean_clips()[1]
    captioned = roundtrip(text(frames, 2), tmp_path)  # "www.example.com", large, high up
    out = stage(*as_clip(captioned, name))
    coverage = out.values["ocr_text_coverage"]
    assert 0.02 < coverage < 0.3 and out.values["ocr_boxes"] >= 3  # read on each of the 3 frames
    assert out.reasons == [f"Text covers {coverage:.1%} of a frame, above the limit of 1.0%."]
    assert "example" in out.values["ocr_text"] and out.values["ocr_text"].count("|") == 0  # one line, kept once
    assert OCRStage(OCRConfig(max_text_coverage=0.5))(*as_clip(captioned, name)).reasons == []


def test_text_mask_union():
    boxes = [[[0, 0], [10, 0], [10, 10], [0, 10]], [[5, 5], [15, 5], [15, 15], [5, 15]]]
    mask = text_mask(boxes, 20, 20)
    assert mask.sum() == 11 * 11 * 2 - 6 * 6  # union, not the sum (fillPoly includes the edge pixels)
    assert text_mask([], 4, 4).sum() == 0 and np.all(text_mask([[[0, 0], [3, 0], [3, 3], [0, 3]]], 4, 4) == 1)


def test_config_checks():
    with pytest.raises(ValueError, match=r"ocr.max_text_coverage must be in \[0, 1\]; got 2.0"):
        OCRConfig(max_text_coverage=2.0)
    with pytest.raises(ValueError, match="ocr.frames"):
        OCRConfig(frames=0)
    assert OCRStage(OCRConfig(threads=2)).resources.num_cpus == 2.0
