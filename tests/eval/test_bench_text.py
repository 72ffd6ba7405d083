"""Text accuracy with the OCR models rapidocr-onnxruntime ships, on real footage with text rendered onto it: read back
exactly, lower when blurred or partly covered, low for a prompt that asks for other text, in Chinese too; the edit
distance is checked against a brute-force search over every stretch of the reading."""

from __future__ import annotations

import importlib.util
import itertools
import random

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from curate.footage import footage, write_video
from openwan.eval.bench.base import Video
from openwan.eval.bench.registry import build_dimensions
from openwan.eval.bench.text import TextAccuracy, normalise, quoted_texts, similarity, substring_distance

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
SIGN = "OPEN 24 HOURS"
# Chinese glyphs drawn from straight strokes (no CJK font is installed): (x0, y0, x1, y1) in a unit cell
STROKES = {"田": [(.15, .15, .85, .15), (.15, .15, .15, .88), (.85, .15, .85, .88), (.15, .5, .85, .5),
                  (.5, .15, .5, .85), (.15, .85, .85, .85)],
           "中": [(.15, .3, .85, .3), (.15, .3, .15, .7), (.85, .3, .85, .7), (.15, .66, .85, .66), (.5, .05, .5, .97)],
           "王": [(.15, .15, .85, .15), (.2, .5, .8, .5), (.1, .85, .9, .85), (.5, .15, .5, .85)],
           "土": [(.2, .45, .8, .45), (.5, .1, .5, .85), (.1, .85, .9, .85)]}


@pytest.fixture(scope="module")
def dim():
    d = TextAccuracy()
    d.setup()
    return d


def _background(count: int = 1) -> np.ndarray:
    return footage("bikes", 60, count, size=(640, 272))


def _sign(frames: np.ndarray, words: str = SIGN, size: int = 20) -> np.ndarray:
    """Light words on a dark plate in the middle of each frame, set in DejaVu Sans Bold."""
    font = ImageFont.truetype(FONT, size)
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        left, top, right, bottom = draw.textbbox((0, 0), words, font=font)
        x, y = (frame.shape[1] - (right - left)) // 2, (frame.shape[0] - (bottom - top)) // 2
        draw.rectangle((x - 8, y - 6, x + right - left + 8, y + bottom + 6), fill=(20, 20, 20))
        draw.text((x, y), words, font=font, fill=(250, 250, 250))
        out.append(np.asarray(image))
    return np.stack(out)


def _chinese(frame: np.ndarray, text: str, cell: int = 44) -> np.ndarray:
    """Dark stroke-drawn characters on a light plate."""
    out = frame.copy()
    h, w = out.shape[:2]
    x0, y0 = (w - cell * len(text)) // 2, (h - cell) // 2
    cv2.rectangle(out, (x0 - 10, y0 - 10), (x0 + cell * len(text) + 10, y0 + cell + 10), (240, 240, 240), -1)
    for k, ch in enumerate(text):
        for a, b, c, d in STROKES[ch]:
            start = (int(x0 + (k + a * 0.85) * cell), int(y0 + b * cell))
            cv2.line(out, start, (int(x0 + (k + c * 0.85) * cell), int(y0 + d * cell)), (10, 10, 10), 5)
    return out


def _score(dim, frames, prompt):
    return dim.score(Video(np.ascontiguousarray(frames), 25.0, prompt=prompt, id="v"))


def test_rendered_text_reads_back_exactly_and_other_text_scores_low(dim):
    frames = _sign(_background())
    score = _score(dim, frames, 'a neon sign that says "Open 24 hours" above a door marked \u201cCLOSED FOREVER\u201d')
    asked, other = score.details["texts"]
    assert asked["text"] == "Open 24 hours" and asked["similarity"] == 1.0, score
    assert other["text"] == "CLOSED FOREVER" and other["similarity"] < 0.4, score
    assert score.value == pytest.approx((1.0 + other["similarity"]) / 2, abs=1e-4)
    assert score.details["frames_read"] == [0]


def test_blur_and_covering_lower_the_score(dim):
    sharp = _sign(_background())
    prompt = f'a sign reading "{SIGN}"'
    blurred = [_score(dim, np.stack([cv2.GaussianBlur(f, (0, 0), s) for f in sharp]), prompt).value
               for s in (3.4, 6.0)]
    blur = [1.0, *blurred]
    assert all(a >= b for a, b in itertools.pairwise(blur)) and blur[-1] <= 0.5, blur
    covered = []
    for share in (0.25, 0.55):  # grey out the right-hand share of the plate
        frames = sharp.copy()
        frames[:, :, 320 + 110 - int(220 * share):320 + 110] = 128
        covered.append(_score(dim, frames, prompt).value)
    print(f"blur sigma 0, 3.4, 6: {blur}; covered 0, 25%, 55%: {[1.0, *covered]}")
    assert 1.0 > covered[0] > covered[1] > 0, covered


def test_the_best_frame_counts(dim):
    frames = _background(2)
    frames[1] = _sign(frames[1:])[0]  # the text appears in the second frame only
    score = _score(dim, frames, f'the words "{SIGN}" appear')
    text = score.details["texts"][0]
    assert score.value == 1.0 and text["best_frame"] == 1 and text["similarity_median"] == 0.5, score


def test_chinese_text(dim):
    frame = _chinese(_background()[0], "田中")
    score = _score(dim, frame[None], "招牌上写着「田中」两个字，旁边没有《王土》")
    assert [t["similarity"] for t in score.details["texts"]] == [1.0, 0.0] and score.value == 0.5, score


@pytest.mark.slow
def test_an_81_frame_480p_video_after_h264(dim, tmp_path):
    """Text shown on part of a Wan-sized clip (832x480, 81 frames), through H.264 and PyAV, reads back exactly."""
    import av

    frames = footage("bunny", 0, 81, size=(832, 480))
    frames[30:70] = _sign(frames[30:70], "Happy Birthday 2026", size=36)
    path = write_video(frames, tmp_path / "cake.mp4", fps=16, crf=23)
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])
    score = _score(dim, decoded, 'a birthday cake with "Happy Birthday 2026" piped on it')
    text = score.details["texts"][0]
    assert score.value == 1.0 and 30 <= text["best_frame"] < 70 and len(score.details["frames_read"]) == 8, score
    assert _score(dim, decoded, "a birthday cake that reads \u201cHappy Birthday 2025\u201d").value < 1.0


def test_prompts_without_quoted_text_are_not_applicable(dim):
    frames = _background()
    for prompt in ("a man rides a bike on a dirt track", "the rider's helmet is red", None, 'an empty "" sign'):
        score = _score(dim, frames, prompt)
        assert score.value is None and score.not_applicable, (prompt, score)
    assert build_dimensions(["text_accuracy"])[0].available() is None  # the OCR models ship with the package


def test_not_measured_without_the_ocr_package(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rapidocr_onnxruntime" else find_spec(name, *a))
    score = TextAccuracy().score(Video(_background(), 25.0, prompt='"OPEN"'))
    assert score.value is None and score.not_measured == "not measured: pip install rapidocr-onnxruntime"


def test_quoted_texts():
    prompt = ('a sign "OPEN", a banner \'SALE\' by the kids\' door, \u201cHello\u201d, \u300c\u4f60\u597d\u300d, '
              '\u300a\u4e09\u56fd\u300b, \u300e\u65e5\u672c\u300f and "OPEN" again')
    assert quoted_texts(prompt) == ["OPEN", "SALE", "Hello", "\u4f60\u597d", "\u4e09\u56fd", "\u65e5\u672c"]
    assert quoted_texts("the dog's bowl and the cats' toys") == []
    assert quoted_texts("Joe's sign says 'EAT' and \"JOE'S DINER\"") == ["EAT", "JOE'S DINER"]
    assert quoted_texts('a 12" pizza with "HOT" on the box') == ["HOT"]  # an inch mark is no quote
    assert quoted_texts(None) == [] and quoted_texts('"..."') == []


def test_normalise_and_similarity():
    assert normalise("Open  24-Hours!") == "open24hours"
    assert normalise("\uff28\uff25\uff2c\uff2c\uff2f \u4f60\u597d") == "hello\u4f60\u597d"  # full-width letters
    assert similarity("OPEN 24 HOURS", "open 24 hours") == 1.0
    assert similarity("OPEN", "WE ARE OPEN NOW") == 1.0  # other text in the frame costs nothing
    assert similarity("OPEN", "0PEN") == 0.75 and similarity("OPEN", "") == 0.0
    assert similarity("\u6b22\u8fce\u5149\u4e34", "\u6b22\u8fce\u5149") == 0.75
    with pytest.raises(ValueError, match="no letter or digit"):
        similarity("!!", "x")


def _levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_substring_distance_equals_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        target = "".join(rng.choice("abc") for _ in range(rng.randint(1, 6)))
        text = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 9)))
        brute = min(_levenshtein(target, text[i:j]) for i in range(len(text) + 1) for j in range(i, len(text) + 1))
        assert substring_distance(target, text) == brute, (target, text)
