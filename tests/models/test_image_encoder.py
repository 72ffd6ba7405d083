"""CLIP: the official open-clip file loads into a transformers CLIPVisionModel of all but its last block, and
encode_images gives the reference's ``use_31_block`` features."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModelWithProjection

from conftest import official_keys
from openwan.checkpoints.encoders import (
    CLIP_OFFICIAL_FILE,
    clip_hf_to_official,
    clip_official_to_hf,
    infer_clip_config,
)
from openwan.checkpoints.io import CheckpointError
from openwan.configs import IMAGE_ENCODER_PRESETS
from openwan.models.image_encoder import clip_preprocess, encode_images, load_clip_encoder
from tiny import PickleBomb

TINY = IMAGE_ENCODER_PRESETS["tiny"]


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def _official_state(cfg=TINY) -> dict[str, torch.Tensor]:
    """Random weights in the release's key names, with the parts Wan ignores (text tower, head, scale)."""
    d, hidden, p = cfg.width, int(cfg.width * cfg.mlp_ratio), cfg.patch_size
    sd = {
        "log_scale": torch.tensor(2.3),
        "visual.cls_embedding": torch.randn(1, 1, d),
        "visual.pos_embedding": torch.randn(1, cfg.num_tokens, d),
        "visual.head": torch.randn(d, 16),
        "visual.patch_embedding.weight": torch.randn(d, 3, p, p) * 0.1,
        "visual.pre_norm.weight": 1 + 0.2 * torch.randn(d),
        "visual.pre_norm.bias": 0.2 * torch.randn(d),
        "visual.post_norm.weight": 1 + 0.2 * torch.randn(d),
        "visual.post_norm.bias": 0.2 * torch.randn(d),
        "textual.token_embedding.weight": torch.randn(10, 8),
    }
    for i in range(cfg.num_layers):
        b = f"visual.transformer.{i}."
        for norm in ("norm1", "norm2"):
            sd[b + norm + ".weight"] = 1 + 0.2 * torch.randn(d)
            sd[b + norm + ".bias"] = 0.2 * torch.randn(d)
        for name, shape in (("attn.to_qkv", (3 * d, d)), ("attn.proj", (d, d)), ("mlp.0", (hidden, d)),
                            ("mlp.2", (d, hidden))):
            sd[b + name + ".weight"] = torch.randn(shape) * shape[1] ** -0.5
            sd[b + name + ".bias"] = 0.2 * torch.randn(shape[0])
    return sd


def _reference_features(sd: dict, images: torch.Tensor, cfg=TINY) -> torch.Tensor:
    """The reference's ``visual(images)`` with ``use_31_block``, written from the official structure."""
    x = F.interpolate(images, size=(cfg.image_size,) * 2, mode="bicubic", align_corners=False)
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    x = (x.mul(0.5).add(0.5) - mean) / std
    b, d, n = x.shape[0], cfg.width, cfg.num_heads
    x = F.conv2d(x, sd["visual.patch_embedding.weight"], stride=cfg.patch_size).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.cls_embedding"].expand(b, -1, -1), x], dim=1) + sd["visual.pos_embedding"]
    x = F.layer_norm(x, (d,), sd["visual.pre_norm.weight"], sd["visual.pre_norm.bias"], eps=cfg.eps)
    for i in range(cfg.num_layers - 1):  # all but the last block
        p = f"visual.transformer.{i}."
        h = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=cfg.eps)
        q, k, v = F.linear(h, sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"]).view(
            b, -1, 3, n, d // n).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, L, d]
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, d)  # scale 1/sqrt(d)
        x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=cfg.eps)
        h = F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"]))  # exact GELU
        x = x + F.linear(h, sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    return x


@pytest.fixture
def official_file(tmp_path):
    path = tmp_path / CLIP_OFFICIAL_FILE
    torch.save(_official_state(), path)
    return path


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 40, 36) * 2 - 1  # not the model's size: the resize is part of the check


# ------------------------------------------------------------------------------------------------ loading


def test_official_file_gives_the_reference_features(official_file):
    model = load_clip_encoder(official_file)
    assert model.config.num_hidden_layers == TINY.num_layers - 1
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    images = _images()
    ours = encode_images(model, images)
    assert ours.shape == (2, TINY.num_tokens, TINY.width)
    reference = _reference_features(torch.load(official_file, weights_only=True), images)
    assert _rel(ours, reference) <= 1e-5


def test_config_is_inferred_from_shapes(official_file):
    model = load_clip_encoder(official_file.parent, dtype=torch.float64)  # a release folder holding the file
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert infer_clip_config(torch.load(official_file, weights_only=True)) == TINY
    expected = TINY.to_hf()
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size", "hidden_act", "layer_norm_eps"):
        assert getattr(model.config, name) == getattr(expected, name), name


def test_transformers_folder_equals_penultimate_hidden_state(tmp_path):
    """A diffusers release's image_encoder/ is the full tower; Wan's features are its hidden_states[-2]."""
    cfg = TINY.to_hf()
    cfg.num_hidden_layers = TINY.num_layers
    full = CLIPVisionModelWithProjection(cfg).eval()
    folder = tmp_path / "release" / "image_encoder"
    full.save_pretrained(folder)
    images = _images()
    with torch.no_grad():
        theirs = full(pixel_values=clip_preprocess(images, size=TINY.image_size),
                      output_hidden_states=True).hidden_states[-2]
    for path in (folder, folder.parent):
        model = load_clip_encoder(path)
        assert model.config.num_hidden_layers == TINY.num_layers - 1
        assert _rel(encode_images(model, images), theirs) <= 1e-6


def test_round_trip_is_identity():
    official = {k: v for k, v in _official_state().items() if k.startswith("visual.") and k != "visual.head"}
    back = clip_hf_to_official(clip_official_to_hf(official))
    assert back.keys() == official.keys() and all(torch.equal(back[k], official[k]) for k in official)
    hf = clip_official_to_hf(official)
    prefixed = {"vision_model." + k: v for k, v in hf.items()} | {"visual_projection.weight": torch.zeros(1)}
    assert clip_hf_to_official(prefixed).keys() == official.keys()


def test_qkv_split_order():
    sd = _official_state()
    hf = clip_official_to_hf(sd)
    d = TINY.width
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(hf[f"encoder.layers.0.self_attn.{name}.weight"],
                           sd["visual.transformer.0.attn.to_qkv.weight"][j * d:(j + 1) * d])


def test_full_size_keys_match_the_release():
    """The 31-block model's tensors carry the release's visual.* names and shapes (blocks shown as {i})."""
    expected = {k: v for k, v in official_keys("CLIP XLMRobertaCLIP").items() if k.startswith("visual.")}
    from transformers import CLIPVisionModel

    preset = IMAGE_ENCODER_PRESETS["clip-vit-h-14"]
    with torch.device("meta"):
        model = CLIPVisionModel(preset.to_hf())
    official = clip_hf_to_official(model.state_dict())
    collapsed: dict[str, set[tuple[int, ...]]] = {}
    for key, value in official.items():
        collapsed.setdefault(re.sub(r"\.\d+(?=\.)", ".{i}", key), set()).add(tuple(value.shape))
    assert set(collapsed) == set(expected) - {"visual.head"}  # the head projects to the joint space; unused
    # The listing shows one shape per collapsed name (mlp.0's for mlp.{i}).
    for key, shapes in collapsed.items():
        assert expected[key] in shapes, key
    assert infer_clip_config(official) == preset.__class__(num_layers=preset.num_layers - 1)


def test_preprocess():
    images = torch.full((1, 3, 50, 30), -1.0)
    x = clip_preprocess(images)
    assert x.shape == (1, 3, 224, 224)
    expected = (0 - torch.tensor(TINY.mean)) / torch.tensor(TINY.std)  # black pixels
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        clip_preprocess(torch.zeros(3, 8, 8))


# ------------------------------------------------------------------------------------------ loader errors


def test_truncated_file(official_file):
    data = official_file.read_bytes()
    official_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_clip_encoder(official_file)
    assert str(official_file) in str(err.value)


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / CLIP_OFFICIAL_FILE
    torch.save({"visual.cls_embedding": torch.zeros(1, 1, 4), "x": PickleBomb(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_clip_encoder(path)
    assert str(path) in str(err.value) and not marker.exists()


@pytest.mark.parametrize(
    "drop",
    ["visual.transformer.1.attn.to_qkv.weight", "visual.pre_norm.weight", "visual.patch_embedding.weight",
     "visual.pos_embedding", "visual.cls_embedding", "visual.transformer.1.mlp.2.bias"],
)
def test_missing_used_key(official_file, drop):
    sd = torch.load(official_file, weights_only=True)
    del sd[drop]
    torch.save(sd, official_file)
    with pytest.raises(CheckpointError) as err:
        load_clip_encoder(official_file)
    assert str(official_file) in str(err.value)


def test_unused_keys_may_be_absent(official_file):
    sd = torch.load(official_file, weights_only=True)
    kept = {k: v for k, v in sd.items()
            if not k.startswith(("textual.", "visual.post_norm")) and k not in ("visual.head", "log_scale")}
    torch.save(kept, official_file)
    images = _images()
    ours = encode_images(load_clip_encoder(official_file), images)
    assert _rel(ours, _reference_features(sd, images)) <= 1e-5
