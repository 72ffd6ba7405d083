"""The frame-quality model dimensions. Aesthetic quality through the curate stage's LAION predictor, on the small
random-weight CLIP and random head the curate tests use; the value is checked against that predictor's recipe written
out independently (PIL, CLIPModel, plain torch ops) over the same key frames, divided by 10. MUSIQ imaging quality:
pyiqa cannot be installed here (it pulls a CUDA torch), so its not-measured paths and frame sizing are shown."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

import curate.test_aesthetic as recipe
from curate.footage import footage
from openwan.curate.embed import key_frame_indices
from openwan.eval.bench.aesthetic import NOT_MEASURED, AestheticQuality
from openwan.eval.bench.base import BenchWeights, Video
from openwan.eval.bench.musiq import NO_NAME, NO_PYIQA, MusiqQuality, rating_frames
from openwan.eval.bench.registry import build_dimensions

LINEAR = (0, 2, 4, 6, 7)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A whole random-weight CLIP with a 768-d projection (as ViT-L/14) and its image processor."""
    folder = tmp_path_factory.mktemp("clip-vit-l-14")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=recipe.SIZE, patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)).save_pretrained(folder)
    size = {"shortest_edge": recipe.SIZE}
    CLIPImageProcessor(size=size, crop_size={"height": recipe.SIZE, "width": recipe.SIZE}).save_pretrained(folder)
    return folder


def _head(path, offset: float) -> dict:
    """A random head in the released linear layout whose ratings sit around ``offset``."""
    head = recipe._head(LINEAR)
    head["layers.7.bias"] = head["layers.7.bias"] + offset
    torch.save(head, path)
    return head


def test_value_is_the_predictor_rating_over_ten(clip_folder, tmp_path):
    head = _head(tmp_path / "head.pth", 5.0)
    weights = BenchWeights(aesthetic_clip_path=str(clip_folder), aesthetic_head_path=str(tmp_path / "head.pth"),
                           device="cpu")
    frames = footage("carphone", 0, 40, size=(176, 144))
    score = AestheticQuality(weights).score(Video(frames, 25.0, id="car"))
    picks = key_frame_indices(40, 8)
    assert score.details["frames"] == picks
    expected = recipe._reference(frames[picks], clip_folder, head, LINEAR, relu=False)
    assert 1 < expected < 10 and abs(score.details["laion_rating_1_to_10"] - expected) < 1e-4, (score, expected)
    assert abs(score.value - expected / 10) < 1e-5
    other = AestheticQuality(weights).score(Video(footage("bikes", 0, 40), 25.0, id="bikes"))
    assert abs(other.value - score.value) > 1e-4  # the frames matter


def test_ratings_above_ten_clip_to_one(clip_folder, tmp_path):
    _head(tmp_path / "high.pth", 30.0)
    weights = BenchWeights(aesthetic_clip_path=str(clip_folder), aesthetic_head_path=str(tmp_path / "high.pth"),
                           device="cpu")
    score = AestheticQuality(weights).score(Video(footage("carphone", 0, 4), 25.0))
    assert score.value == 1.0 and score.details["laion_rating_1_to_10"] > 20


def test_not_measured_without_weights_and_refused_bad_files(clip_folder, tmp_path):
    video = Video(footage("carphone", 0, 2), 25.0)
    dim = build_dimensions(["aesthetic_quality"])[0]
    assert dim.available() == NOT_MEASURED and dim.score(video).not_measured == NOT_MEASURED
    half = AestheticQuality(BenchWeights(aesthetic_clip_path=str(clip_folder)))
    assert half.score(video).not_measured == NOT_MEASURED
    missing = AestheticQuality(BenchWeights(aesthetic_clip_path=str(clip_folder),
                                            aesthetic_head_path=str(tmp_path / "none.pth")))
    with pytest.raises(ValueError, match="head_path .* does not exist"):
        missing.setup()
    np.save(tmp_path / "x.npy", np.zeros(3))
    wrong = AestheticQuality(BenchWeights(aesthetic_clip_path=str(tmp_path), aesthetic_head_path=str(tmp_path)))
    with pytest.raises(ValueError, match="not a transformers CLIP folder"):
        wrong.setup()


@pytest.mark.skipif(importlib.util.find_spec("pyiqa") is not None, reason="pyiqa is installed: MUSIQ is measured")
def test_musiq_not_measured_without_pyiqa():
    video = Video(footage("carphone", 0, 2), 25.0)
    dim = build_dimensions(["imaging_quality_musiq"])[0]  # the default metric name, musiq
    assert dim.available() == NO_PYIQA == "not measured: pip install pyiqa (and its MUSIQ weights)"
    score = dim.score(video)
    assert score.value is None and score.not_measured == NO_PYIQA


def test_musiq_metric_names_and_frame_sizes():
    assert MusiqQuality(BenchWeights(musiq=None)).score(Video(footage("carphone", 0, 1), 25.0)).not_measured == NO_NAME
    with pytest.raises(ValueError, match="unknown MUSIQ metric 'niqe'; give one of musiq, musiq-koniq"):
        MusiqQuality(BenchWeights(musiq="niqe"))
    frames = footage("bikes", 0, 2, size=(1280, 720))
    assert rating_frames(frames).shape == (2, 288, 512, 3)  # longer side 512, as VBench rates
    small = footage("carphone", 0, 2)
    assert rating_frames(small) is small  # never upscaled
