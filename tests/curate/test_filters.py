"""The model-free fundamental filters on real footage: limits, black borders, exposure and blur.

Each detector is run on a defect set and on the clean set it must pass, both through H.264; the bar is the issue's:
recall >= 0.9 on the defects, false positives <= 10% on the clean clips.
"""

from __future__ import annotations

import numpy as np
import pytest

from curate.defects import as_clip, bars, blur, clean_clips, darken, night, overexpose, pan, rates, roundtrip
from openwan.configio import parse
from openwan.curate.filters import (
    BlurConfig,
    BlurStage,
    BordersConfig,
    BordersStage,
    ExposureConfig,
    ExposureStage,
    LimitsConfig,
    LimitsStage,
)


def build(tmp, step: int = 48, size: tuple[int, int] = (320, 180)) -> dict[str, list]:
    """name -> list of (clip name, decoded frames) for the clean clips and each defect. Step 48: 11 clips of each
    (3 bunny, 5 bikes, 3 carphone); step 24: 20."""
    clean = clean_clips(size, step)
    out: dict[str, list] = {"clean": [], "dark": [], "dim": [], "night": [], "over": [], "blur": [], "bars": [],
                            "night_bars": []}
    kinds = ("letterbox", "pillarbox", "window")
    sigma = size[1] / 180  # blur of 1.5 to 3 px at 180 px high, the same share of the frame at other sizes
    for i, (name, frames) in enumerate(clean):
        out["clean"].append((name, roundtrip(frames, tmp, name)))
        out["dark"].append((name, roundtrip(darken(frames), tmp, f"dark-{name}")))
        out["dim"].append((name, roundtrip(darken(frames, 0.45), tmp, f"dim-{name}")))
        out["night"].append((name, roundtrip(night(frames), tmp, f"night-{name}")))
        out["over"].append((name, roundtrip(overexpose(frames), tmp, f"over-{name}")))
        out["blur"].append((name, roundtrip(blur(frames, (1.5, 2.0, 3.0)[i % 3] * sigma), tmp, f"blur-{name}")))
        boxed, bar = bars(frames, kinds[i % 3], (0.1, 0.14, 0.2)[i % 3])
        out["bars"].append((name, roundtrip(boxed, tmp, f"bars-{name}"), bar))
        boxed, bar = bars(night(frames), kinds[(i + 1) % 3], 0.12)  # a dark scene with black bars
        out["night_bars"].append((name, roundtrip(boxed, tmp, f"night-bars-{name}"), bar))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(tmp_path_factory.mktemp("filters"))


@pytest.mark.slow
def test_all_detectors_on_the_full_corpus_at_the_analysis_size(tmp_path):
    """20 clips of each kind at 456x256, the default analysis size (short side 256)."""
    corpus = build(tmp_path, step=24, size=(456, 256))
    check_borders(corpus, analysis_short=128)
    check_exposure(corpus)
    check_blur(corpus)


# --------------------------------------------------------------------------------------------------- limits


def row(**kw):
    base = {"clip_id": "c", "duration": 5.0, "width": 1280, "height": 720, "fps": 25.0}
    return base | kw


def test_limits_pass_and_reject_with_measured_value_and_limit():
    stage = LimitsStage(LimitsConfig())
    out = stage(row(), None)
    assert out.reasons == [] and out.values == {"limits_short_side": 720, "limits_aspect": 1.7778}
    cases = [({"duration": 1.0}, "1.00 s", "2 s"), ({"width": 300, "height": 200}, "200 px", "256 px"),
             ({"fps": 6.0}, "6.00 fps", "10 fps")]
    for change, measured, limit in cases:
        (reason,) = stage(row(**change), None).reasons
        assert measured in reason and limit in reason, reason
    (reason,) = stage(row(width=2000, height=400), None).reasons
    assert "5.00:1" in reason and "2.5:1" in reason
    assert len(stage(row(duration=100.0), None).reasons) == 1
    assert LimitsStage(LimitsConfig(max_duration=0, max_aspect=0, min_fps=0))(
        row(duration=1e4, width=4000, height=300, fps=1.0), None).reasons == []


def test_limits_config_and_missing_columns():
    with pytest.raises(ValueError, match="limits.max_duration"):
        LimitsConfig(min_duration=10, max_duration=5)
    with pytest.raises(ValueError, match="limits.min_fps"):
        LimitsConfig(min_fps=-1)
    parsed = parse(LimitsConfig, {"min_duration": "1.5", "max_aspect": 3}, "limits")
    assert parsed == LimitsConfig(min_duration=1.5, max_aspect=3.0)
    with pytest.raises(ValueError, match="needs the clip row's fps"):
        LimitsStage(LimitsConfig())({"clip_id": "x", "duration": 3, "width": 10, "height": 10}, None)


# -------------------------------------------------------------------------------------------------- borders


def test_borders_found_and_cropped_in_source_pixels(corpus):
    check_borders(corpus, analysis_short=90)  # analysis at half the source's size


def check_borders(corpus, analysis_short):
    stage = BordersStage(BordersConfig())
    found, exact = [], []
    for name, frames, (bx, by) in corpus["bars"] + corpus["night_bars"]:
        clip, cf = as_clip(frames, name, analysis_short=analysis_short)
        out = stage(clip, cf)
        found.append(out.crop is not None)
        if out.crop is None:
            continue
        h, w = frames.shape[1:3]
        err = np.abs(np.subtract(out.crop, (bx, by, w - bx, h - by)))
        exact.append(err.max())
        assert out.crop[0] >= bx and out.crop[1] >= by and out.crop[2] <= w - bx and out.crop[3] <= h - by, (
            name, out.crop, (bx, by))  # no bar is kept
        removed = 1 - (out.crop[2] - out.crop[0]) * (out.crop[3] - out.crop[1]) / (w * h)
        assert out.values["borders_crop_share"] == pytest.approx(removed, abs=1e-3)
        assert bool(out.reasons) == (removed > 0.6), (name, out.reasons)
        # the core's crop of the analysis frames leaves no bar behind
        inner = cf.cropped(out.crop).frames
        assert inner.shape[1] > 0 and stage(clip, cf.cropped(out.crop)).crop is None
    flagged_clean, flagged_dark = [], []
    for group, flags in (("clean", flagged_clean), ("dark", flagged_dark), ("night", flagged_dark)):
        for name, frames in corpus[group]:
            out = stage(*as_clip(frames, name, analysis_short=analysis_short))
            flags.append(out.crop is not None)
    recall, fp = rates("borders (letterbox/pillarbox/window, on day and night scenes)", found, flagged_clean)
    _, fp_dark = rates("borders on dark-but-textured scenes", found, flagged_dark)
    print(f"borders: crop error at most {max(exact)} source px")
    assert recall >= 0.9 and fp <= 0.1 and fp_dark <= 0.1
    assert max(exact) <= 6  # a few source pixels: the analysis frames are half size, and crops are even-aligned


def test_borders_of_any_colour_when_asked(corpus, tmp_path):
    """Grey bars are picture by default (bars are dark) and are found with borders.max_luma = 1."""
    name, frames = clean_clips()[0]
    boxed, (bx, by) = bars(frames, "letterbox", 0.12, colour=128)
    clip = as_clip(roundtrip(boxed, tmp_path), name, analysis_short=90)
    assert BordersStage(BordersConfig())(*clip).crop is None
    crop = BordersStage(BordersConfig(max_luma=1.0))(*clip).crop
    assert crop is not None and np.abs(np.subtract(crop, (0, by, 320, 180 - by))).max() <= 4, crop
    assert BordersStage(BordersConfig(max_luma=1.0))(*as_clip(corpus["clean"][0][1], analysis_short=90)).crop is None


def test_borders_reject_when_little_is_left_and_blank_frames(corpus):
    _, frames, _ = corpus["bars"][2]  # a windowbox: 20% bars on every side keep 36% of the area
    out = BordersStage(BordersConfig())(*as_clip(frames))
    assert out.crop is not None and len(out.reasons) == 1 and "below the minimum of 40%" in out.reasons[0]
    blank = np.full((4, 90, 160, 3), 12, np.uint8)
    out = BordersStage(BordersConfig())(*as_clip(blank))
    assert out.crop is None and "no picture" in out.reasons[0]
    with pytest.raises(ValueError, match="borders.min_kept_share"):
        BordersConfig(min_kept_share=1.5)


# ------------------------------------------------------------------------------------------------- exposure


def test_exposure_recall_and_false_positives(corpus):
    check_exposure(corpus)


def check_exposure(corpus):
    stage = ExposureStage(ExposureConfig())
    groups = ("clean", "dim", "dark", "over")
    flagged = {g: [bool(stage(*as_clip(f, n)).reasons) for n, f in corpus[g]] for g in groups}
    recall_dark, fp = rates("exposure: underexposed (x0.22)", flagged["dark"], flagged["clean"])
    recall_over, _ = rates("exposure: overexposed (1.9x + 0.25)", flagged["over"], flagged["clean"])
    _, fp_dim = rates("exposure on dim scenes (x0.45)", flagged["dark"], flagged["dim"])
    assert recall_dark >= 0.9 and recall_over >= 0.9 and fp <= 0.1 and fp_dim <= 0.1
    out = stage(*as_clip(corpus["over"][0][1]))
    assert any("Overexposed: mean luma is 0.8" in r and "maximum of 0.75" in r for r in out.reasons), out.reasons
    assert 0 <= out.values["exposure_bright_share"] <= 1


# ----------------------------------------------------------------------------------------------------- blur


def test_blur_recall_and_false_positives(corpus):
    check_blur(corpus)


def check_blur(corpus):
    stage = BlurStage(BlurConfig())
    clean = [stage(*as_clip(f, n)) for n, f in corpus["clean"]]
    blurred = [stage(*as_clip(f, n)) for n, f in corpus["blur"]]
    print("blur focus clean:", sorted(round(o.values["blur_focus"], 6) for o in clean))
    print("blur focus blurred:", sorted(round(o.values["blur_focus"], 6) for o in blurred))
    recall, fp = rates("blur", [bool(o.reasons) for o in blurred], [bool(o.reasons) for o in clean])
    assert recall >= 0.9 and fp <= 0.1
    assert "below the minimum focus of 0.00028" in blurred[0].reasons[0]



@pytest.mark.slow
def test_every_filter_on_5_second_pans_at_the_analysis_size(tmp_path):
    """Every filter stage on 5 clean 5-second clips (40 frames at 8 fps, 456x256: the default analysis rate and
    size), each clip passing; prints each stage's setup time and median time per clip."""
    import os
    import time

    from openwan.curate.nsfw import NSFWConfig, NSFWStage
    from openwan.curate.ocr import OCRConfig, OCRStage
    from openwan.curate.overlays import OverlayConfig, OverlayStage

    clips = [roundtrip(pan(name, start, count=120, size=(456, 256)), tmp_path, f"{name}{start}")
             for name, start in (("bunny", 0), ("bunny", 12), ("bikes", 0), ("bikes", 100), ("bikes", 130))]
    stages = [LimitsStage(LimitsConfig()), BordersStage(BordersConfig()), ExposureStage(ExposureConfig()),
              BlurStage(BlurConfig()), OverlayStage(OverlayConfig()), OCRStage(OCRConfig()),
              NSFWStage(NSFWConfig(model="opennsfw")), NSFWStage(NSFWConfig(model="nudenet"))]
    print(f"\n{len(clips[0])} frames of {clips[0].shape[2]}x{clips[0].shape[1]} per clip; "
          f"load average {os.getloadavg()[0]:.1f}")
    for stage in stages:
        start = time.perf_counter()
        stage.setup()
        setup = time.perf_counter() - start
        times = []
        for i, frames in enumerate(clips):
            row, cf = as_clip(frames, f"pan{i}")
            row |= {"duration": 5.0, "fps": 24.0}  # the source's rate, not the analysis rate
            start = time.perf_counter()
            out = stage(row, cf)
            times.append(time.perf_counter() - start)
            assert out.reasons == [], (stage.name, i, out.reasons)
        label = stage.name + (f" ({stage.cfg.model})" if stage.name == "nsfw" else "")
        print(f"{label:18s} setup {setup:5.2f} s   per clip {np.median(times):6.3f} s")


def test_a_clip_without_frames_is_refused_naming_it():
    from openwan.curate.base import ClipFrames
    from openwan.curate.nsfw import NSFWConfig, NSFWStage
    from openwan.curate.ocr import OCRConfig, OCRStage
    from openwan.curate.overlays import OverlayConfig, OverlayStage

    empty = ClipFrames(np.zeros((0, 90, 160, 3), np.uint8), np.zeros(0), 8.0, (160, 90))
    for stage in (BordersStage(BordersConfig()), ExposureStage(ExposureConfig()), BlurStage(BlurConfig()),
                  OverlayStage(OverlayConfig()), OCRStage(OCRConfig()), NSFWStage(NSFWConfig())):
        with pytest.raises(ValueError, match=f"the {stage.name} stage needs at least one frame of clip 'c7'"):
            stage({"clip_id": "c7"}, empty)
