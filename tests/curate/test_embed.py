"""Embeddings: the weight-free embedder on real footage, and the Wan i2v CLIP embedder on a small random-weight
tower in the release's file layout, checked against the full tower run independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel

from curate.footage import footage
from openwan.checkpoints.encoders import CLIP_OFFICIAL_FILE, clip_hf_to_official
from openwan.configs import IMAGE_ENCODER_PRESETS
from openwan.curate.base import ClipFrames
from openwan.curate.embed import PIXELS_MODEL, WAN_CLIP_MODEL, EmbedConfig, EmbedStage, key_frame_indices
from openwan.models.image_encoder import clip_preprocess


def _clip(frames: np.ndarray, fps: float = 8.0) -> ClipFrames:
    return ClipFrames(np.ascontiguousarray(frames), np.arange(len(frames)) / fps, fps,
                      (frames.shape[2], frames.shape[1]))


def test_key_frames_are_part_centres():
    assert key_frame_indices(24, 3) == [4, 12, 20]
    assert key_frame_indices(2, 3) == [0, 1]
    assert key_frame_indices(0, 3) == []


def test_pixels_embedding_on_real_footage():
    stage = EmbedStage(EmbedConfig())  # auto without a path: pixels
    assert stage.kind == "pixels" and stage.resources.num_gpus == 0
    bikes, car = footage("bikes", 0, 60)[::3], footage("carphone", 0, 60)[::3]
    out = stage({"clip_id": "a"}, _clip(bikes))
    vector = np.array(out.values["embed_vector"])
    assert out.values["embed_model"] == PIXELS_MODEL and out.reasons == []
    assert vector.shape == (776,) and abs(np.linalg.norm(vector) - 1) < 1e-6
    assert stage({"clip_id": "a"}, _clip(bikes)).values == out.values  # deterministic

    def cos(frames):
        return float(vector @ np.array(stage({"clip_id": "b"}, _clip(frames)).values["embed_vector"]))

    darker = (bikes * 0.85).astype(np.uint8)
    later = footage("bikes", 180, 60)[::3]
    # a changed copy of the clip is closer than another clip of the source, which is closer than another source
    assert cos(darker) > 0.97 > cos(later) > cos(car), (cos(darker), cos(later), cos(car))


@pytest.fixture
def wan_release(tmp_path):
    """A Wan i2v release folder holding a random-weight CLIP in the official file layout, and the full tower."""
    cfg = IMAGE_ENCODER_PRESETS["tiny"].to_hf()
    cfg.num_hidden_layers = IMAGE_ENCODER_PRESETS["tiny"].num_layers
    torch.manual_seed(0)
    full = CLIPVisionModel(cfg).eval()
    for p in full.parameters():
        p.data.normal_(0, 0.05)
    state = clip_hf_to_official(full.state_dict())
    state = {k: v.contiguous() for k, v in state.items()}
    torch.save(state, tmp_path / CLIP_OFFICIAL_FILE)
    return tmp_path, full


def test_wan_clip_embedding_equals_the_towers_class_token(wan_release):
    folder, full = wan_release
    stage = EmbedStage(EmbedConfig(path=str(folder), frames=2))  # auto with a path: wan-clip
    assert stage.kind == "wan-clip" and stage.resources.num_gpus == 0
    frames = footage("carphone", 0, 16, size=(96, 80))
    out = stage({"clip_id": "a"}, _clip(frames))
    assert out.values["embed_model"] == WAN_CLIP_MODEL
    # independently: the full tower's penultimate hidden state (what Wan feeds the DiT), class token, per key frame
    keys = torch.from_numpy(frames[key_frame_indices(16, 2)]).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    with torch.no_grad():
        hidden = full(pixel_values=clip_preprocess(keys, size=224), output_hidden_states=True).hidden_states[-2]
    expected = F.normalize(F.normalize(hidden[:, 0], dim=-1).mean(0), dim=0)
    assert torch.allclose(torch.tensor(out.values["embed_vector"]), expected, atol=1e-5)
    cuda = EmbedStage(EmbedConfig(path=str(folder / CLIP_OFFICIAL_FILE), device="cuda"))
    assert cuda.resources.num_gpus == 1  # a GPU stage asks the executor for a GPU


def test_bad_configs_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="embed.embedder wan-clip needs embed.path"):
        EmbedConfig(embedder="wan-clip")
    with pytest.raises(ValueError, match="embed.frames"):
        EmbedConfig(frames=0)
    with pytest.raises(ValueError, match="embed.path .* does not exist"):
        EmbedStage(EmbedConfig(path=str(tmp_path / "missing")))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    with pytest.raises(ValueError, match="pip install open_clip_torch"):
        EmbedStage(EmbedConfig(embedder="open-clip", path=str(tmp_path)))
