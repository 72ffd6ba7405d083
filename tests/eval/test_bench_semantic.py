"""The CLIP dimensions on real footage through a small random-weight CLIP (both towers, saved as a transformers
folder with its tokenizer and image processor) and a random-weight Wan i2v CLIP tower in the release's layout; the
prompt cosine is checked against CLIPModel's own towers run directly, and every not-measured path is shown."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

from curate.footage import footage
from openwan.eval.bench.base import BenchWeights, Video
from openwan.eval.bench.registry import build_dimensions
from openwan.eval.bench.semantic import (
    NO_CLIP,
    BackgroundConsistency,
    PromptAlignment,
    SubjectConsistency,
    background_view,
    consistency,
    subject_view,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 32
WORDS = ["a", "man", "rides", "bike", "on", "dirt", "track", "red", "car", "driving", "in", "the", "city", "person",
         "talks", "phone"]


def _tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS that ends every prompt with its end token, as CLIP's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                       special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A whole CLIP with random weights, its tokenizer and image processor, saved as a downloaded folder is."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    # initializer_factor 4: at the default scale a random tower's features hardly depend on the image
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
                  patch_size=8, initializer_factor=4.0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=4 + len(WORDS), max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                eos_token_id=3)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def weights(clip_folder):
    return BenchWeights(clip=str(clip_folder), device="cpu")


def _video(frames, prompt=None, name="v"):
    return Video(np.ascontiguousarray(frames), 25.0, prompt=prompt, id=name)


def test_identical_frames_are_fully_consistent(weights):
    still = np.repeat(footage("bikes", 40, 1, size=(160, 68)), 6, axis=0)
    for cls in (SubjectConsistency, BackgroundConsistency):
        score = cls(weights).score(_video(still))
        assert abs(score.value - 1) < 1e-6 and abs(score.details["cos_min"] - 1) < 1e-5, (cls.name, score)
    one = SubjectConsistency(weights).score(_video(still[:1]))
    assert one.value is None and "single frame" in one.not_applicable


def test_a_cut_between_two_clips_scores_lower_than_continuous_footage(weights):
    size = (176, 144)
    continuous = footage("carphone", 0, 16, size=size)
    cut = np.concatenate([footage("carphone", 0, 8, size=size), footage("bikes", 100, 8, size=size)])
    for cls in (SubjectConsistency, BackgroundConsistency):
        dim = cls(weights)
        smooth, broken = dim.score(_video(continuous)).value, dim.score(_video(cut)).value
        print(f"{cls.name}: continuous {smooth:.4f} cut {broken:.4f}")
        assert broken < smooth - 0.05, (cls.name, smooth, broken)


def test_consistency_formula_on_known_features():
    # unit vectors at angles 0, 30, 60 and 120 degrees: cosines to the first 0.866, 0.5, -0.5 (clipped to 0);
    # to the previous 0.866, 0.866, 0.5
    angles = np.radians([0, 30, 60, 120])
    f = np.stack([np.cos(angles), np.sin(angles)], 1)
    out = consistency(f)
    expected = np.mean([(0.8660254 + 0.8660254) / 2, (0.5 + 0.8660254) / 2, (0 + 0.5) / 2])
    assert abs(out["value"] - expected) < 1e-6 and abs(out["cos_min"] + 0.5) < 1e-9


def test_views_split_the_frame_into_subject_and_surroundings():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[40:60, 90:110] = 255  # a subject in the middle
    assert subject_view(frame).shape == (60, 60, 3) and subject_view(frame).max() == 255
    around = background_view(frame)
    assert around.shape == (100, 100, 3) and around.max() == 128  # the subject is greyed out, the sides kept
    frame[:, :10] = 255
    assert background_view(frame).max() == 255


def _reference_cosines(clip_folder, frames: np.ndarray, prompt: str) -> np.ndarray:
    """CLIPScore's cosines written out with CLIPModel's own towers, processor and tokenizer."""
    model = CLIPModel.from_pretrained(clip_folder).eval()
    processor = CLIPImageProcessor.from_pretrained(clip_folder)
    tokens = PreTrainedTokenizerFast.from_pretrained(clip_folder)([prompt], return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=processor(images=list(frames), return_tensors="pt")
                                         ["pixel_values"])
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    image, text = (getattr(e, "pooler_output", e) for e in (image, text))
    return (F.normalize(image, dim=-1) @ F.normalize(text, dim=-1)[0]).numpy()


def test_prompt_alignment_equals_clip_cosine(clip_folder, weights):
    frames = footage("bikes", 0, 20, size=(160, 68))
    prompt = "a man rides a bike on a dirt track"
    dim = PromptAlignment(weights)
    score = dim.score(_video(frames, prompt))
    picks = score.details["frames"]
    assert len(picks) == 8
    expected = _reference_cosines(clip_folder, frames[picks], prompt)
    assert abs(score.details["cos_mean"] - expected.mean()) < 1e-5, (score.details, expected)
    assert 0 < score.value < 1 and abs(score.value - 2.5 * float(expected.mean())) < 1e-5  # CLIPScore's map
    other = dim.score(_video(frames, "a red car driving in the city")).details["cos_mean"]
    assert abs(other - score.details["cos_mean"]) > 1e-4  # the prompt matters
    assert dim.score(_video(frames)).not_applicable == "no prompt to compare the video with"


def test_wan_clip_consistency_runs_and_has_no_text_tower(tmp_path):
    from transformers import CLIPVisionModel

    from openwan.checkpoints.encoders import CLIP_OFFICIAL_FILE, clip_hf_to_official
    from openwan.configs import IMAGE_ENCODER_PRESETS

    cfg = IMAGE_ENCODER_PRESETS["tiny"].to_hf()
    cfg.num_hidden_layers = IMAGE_ENCODER_PRESETS["tiny"].num_layers
    full = CLIPVisionModel(cfg).eval()
    with torch.no_grad():  # the class token then carries the image, not the same learned vector for every frame
        full.embeddings.class_embedding.zero_()
        full.embeddings.position_embedding.weight.zero_()
    torch.save({k: v.contiguous() for k, v in clip_hf_to_official(full.state_dict()).items()},
               tmp_path / CLIP_OFFICIAL_FILE)
    wan = BenchWeights(clip="wan-clip", clip_path=str(tmp_path), device="cpu")
    still = np.repeat(footage("carphone", 0, 1, size=(96, 80)), 3, axis=0)
    score = SubjectConsistency(wan).score(_video(still))
    assert abs(score.value - 1) < 1e-6 and score.details["clip"] == "wan-clip"
    cut = np.concatenate([footage("carphone", 0, 6, size=(96, 80)), footage("bikes", 100, 6, size=(96, 80))])
    broken = SubjectConsistency(wan).score(_video(cut))
    print(f"wan-clip subject consistency of a cut: {broken.value:.5f}")
    assert broken.value < 0.995
    prompt = PromptAlignment(wan).score(_video(still, "a man"))
    assert prompt.value is None and prompt.not_measured.startswith("not measured: wan-clip has no text tower")


def test_not_measured_without_weights_and_refused_bad_paths(tmp_path):
    video = _video(footage("carphone", 0, 3), "a person talks on the phone")
    for dim in build_dimensions(["subject_consistency", "background_consistency", "prompt_alignment"]):
        assert dim.available() == NO_CLIP and dim.score(video).not_measured == NO_CLIP
        assert dim.score(video).value is None
    no_path = SubjectConsistency(BenchWeights(clip="wan-clip"))
    assert no_path.available().startswith("not measured: wan-clip needs its weights")
    if importlib.util.find_spec("open_clip") is None:
        named = PromptAlignment(BenchWeights(clip="ViT-H-14", clip_path="laion2b_s32b_b79k"))
        assert named.available() == ("not measured: the open_clip model ViT-H-14 needs pip install open_clip_torch "
                                     "(or give --clip a transformers CLIP folder)")
        assert named.score(video).not_measured == named.available()
    with pytest.raises(ValueError, match="wan-clip weights .* do not exist"):
        SubjectConsistency(BenchWeights(clip="wan-clip", clip_path=str(tmp_path / "none.pth"))).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a transformers CLIP folder"):
        BackgroundConsistency(BenchWeights(clip=str(tmp_path / "empty"))).setup()
