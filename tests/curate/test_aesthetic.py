"""The LAION aesthetic predictor's loading and scoring, on a small random-weight CLIP saved as a transformers folder
(text and vision towers, as the OpenAI release is saved) and random heads in the released key layouts; the score is
checked against the predictor's recipe written out with PIL, CLIP's get_image_features and plain torch ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from curate.footage import footage
from openwan.curate.aesthetic import NOT_MEASURED, AestheticConfig, AestheticStage, load_head
from openwan.curate.base import ClipFrames
from openwan.curate.embed import key_frame_indices

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIZE = 32
SHAPES = [(768, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]  # (in, out) of the head's linears


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A whole CLIP (text and vision towers, as openai/clip-vit-large-patch14 is saved) with random weights."""
    folder = tmp_path_factory.mktemp("clip-vit-l-14")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
                  patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    return folder


def _head(indices) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    state = {}
    for i, (fan_in, fan_out) in zip(indices, SHAPES):
        state[f"layers.{i}.weight"] = torch.randn(fan_out, fan_in, generator=g) * fan_in ** -0.5
        state[f"layers.{i}.bias"] = torch.randn(fan_out, generator=g) * 0.1
    return state


def _reference(frames: np.ndarray, clip_folder, head: dict, indices, relu: bool) -> float:
    """The predictor's recipe: CLIP preprocessing (PIL bicubic resize of the short side, centre crop, OpenAI mean and
    std), image_embeds L2-normalised, the linears (with ReLUs for the ReLU head); the mean over frames."""
    pixels = []
    for frame in frames:
        image = Image.fromarray(frame)
        w, h = image.size
        scale = SIZE / min(w, h)
        image = image.resize((max(SIZE, int(w * scale)), max(SIZE, int(h * scale))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - SIZE) // 2, (h - SIZE) // 2
        x = np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32) / 255
        pixels.append((x - np.array(OPENAI_MEAN, np.float32)) / np.array(OPENAI_STD, np.float32))
    model = CLIPModel.from_pretrained(clip_folder).eval()
    with torch.no_grad():  # CLIP's encode_image
        e = model.get_image_features(pixel_values=torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2))
        e = getattr(e, "pooler_output", e)  # transformers 5 returns the output object, projected pooler inside
    x = e / e.norm(dim=-1, keepdim=True)
    for k, i in enumerate(indices):
        x = F.linear(x, head[f"layers.{i}.weight"], head[f"layers.{i}.bias"])
        if relu and k < len(indices) - 1:
            x = torch.relu(x)
    return float(x[:, 0].mean())


def _clip(frames):
    return ClipFrames(frames, np.arange(len(frames)) / 8.0, 8.0, (frames.shape[2], frames.shape[1]))


@pytest.mark.parametrize("layout", ["linear-pth", "linear-safetensors", "relu-pth"])
def test_score_equals_the_predictor_recipe(clip_folder, tmp_path, layout):
    indices, relu = ((0, 3, 6, 9, 11), True) if layout.startswith("relu") else ((0, 2, 4, 6, 7), False)
    head = _head(indices)
    if layout.endswith("safetensors"):
        save_file(head, tmp_path / "head.safetensors")
        path = tmp_path / "head.safetensors"
    else:
        torch.save(head, tmp_path / "head.pth")
        path = tmp_path / "head.pth"
    frames = footage("carphone", 0, 24, size=(88, 72))[::3]
    stage = AestheticStage(AestheticConfig(enabled=True, clip_path=str(clip_folder), head_path=str(path),
                                           min_score=1e9))
    out = stage({"clip_id": "a"}, _clip(frames))
    expected = _reference(frames[key_frame_indices(len(frames), 3)], clip_folder, head, indices, relu)
    assert abs(out.values["aesthetic_score"] - expected) <= 1e-5, (out.values, expected)
    assert out.reasons and out.reasons[0].startswith("aesthetic score ") and "aesthetic.min_score" in out.reasons[0]
    assert sum(isinstance(m, torch.nn.ReLU) for m in load_head(path)) == (4 if relu else 0)


def test_missing_weights_are_refused(clip_folder, tmp_path):
    assert NOT_MEASURED == "not measured: give aesthetic.clip_path and aesthetic.head_path"
    assert AestheticConfig().enabled is False  # off by default: the report prints NOT_MEASURED
    with pytest.raises(ValueError, match="aesthetic.clip_path .* and aesthetic.head_path"):
        AestheticConfig(enabled=True, clip_path=str(clip_folder))
    with pytest.raises(ValueError, match="head_path .* does not exist"):
        AestheticStage(AestheticConfig(enabled=True, clip_path=str(clip_folder), head_path=str(tmp_path / "no.pth")))
    torch.save({"fc.weight": torch.zeros(1, 768)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not the LAION aesthetic head"):
        load_head(tmp_path / "other.pth")
    small = _head((0, 2, 4, 6, 7))
    small["layers.0.weight"] = torch.zeros(1024, 512)  # a ViT-B head on a ViT-L CLIP
    torch.save(small, tmp_path / "b16.pth")
    cfg = AestheticConfig(enabled=True, clip_path=str(clip_folder), head_path=str(tmp_path / "b16.pth"))
    stage = AestheticStage(cfg)
    with pytest.raises(ValueError, match="takes 512-d embeddings"):
        stage.setup()


def test_a_vision_only_folder_scores_the_same(clip_folder, tmp_path):
    """A CLIPVisionModelWithProjection folder (the vision tower and projection alone) gives the same scores."""
    from transformers import CLIPVisionModelWithProjection

    config = CLIPConfig.from_pretrained(clip_folder)
    config.vision_config.projection_dim = config.projection_dim
    CLIPVisionModelWithProjection.from_pretrained(clip_folder, config=config.vision_config).save_pretrained(
        tmp_path / "vision")
    CLIPImageProcessor.from_pretrained(clip_folder).save_pretrained(tmp_path / "vision")
    torch.save(_head((0, 2, 4, 6, 7)), tmp_path / "head.pth")
    frames = footage("carphone", 0, 3, size=(88, 72))
    scores = [AestheticStage(AestheticConfig(enabled=True, clip_path=str(folder), head_path=str(tmp_path / "head.pth")))
              .score_frames(frames) for folder in (clip_folder, tmp_path / "vision")]
    assert np.allclose(scores[0], scores[1], rtol=0, atol=1e-6) and np.ptp(scores[0]) > 0
