"""umT5: the official file loads into transformers' UMT5EncoderModel with the reference's maths, and prompts
become the trimmed, then zero-padded, context the DiT takes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import ByT5Tokenizer, UMT5EncoderModel

from conftest import official_keys
from openwan.checkpoints.encoders import (
    UMT5_OFFICIAL_FILE,
    infer_umt5_config,
    umt5_hf_to_official,
    umt5_official_to_hf,
)
from openwan.checkpoints.io import CheckpointError
from openwan.configs import TEXT_ENCODER_PRESETS
from openwan.models.text_encoder import (
    clean_prompt,
    encode_prompts,
    load_tokenizer,
    load_umt5_encoder,
    pad_context,
)
from tiny import PickleBomb

TINY = TEXT_ENCODER_PRESETS["tiny"]


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.fixture
def hf_model() -> UMT5EncoderModel:
    model = UMT5EncoderModel(TINY.to_hf()).eval()
    with torch.no_grad():  # every tensor distinct and far from its init, so a swapped key shows
        for name, p in model.named_parameters():
            p.normal_(1.0, 0.2) if "layer_norm" in name else p.normal_(0.0, 0.3)
    return model


@pytest.fixture
def official_file(tmp_path, hf_model):
    path = tmp_path / UMT5_OFFICIAL_FILE
    torch.save({k: v.clone() for k, v in umt5_hf_to_official(hf_model.state_dict()).items()}, path)
    return path


def _inputs(batch: int = 2, length: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, TINY.vocab_size, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 15:] = 0  # padding, as encode_prompts produces
    ids[1, 15:] = 0
    return ids, mask


# --------------------------------------------------------------- an independent reference in official names


def _buckets(length: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional relative-position buckets: half per direction, half of those exact, then log."""
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    half = num_buckets // 2
    exact = half // 2
    far = exact + (torch.log(rel.abs().clamp(min=1).float() / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    return (rel > 0).long() * half + torch.where(rel.abs() < exact, rel.abs(), far.clamp(max=half - 1))


def _rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + TINY.eps)


def _official_forward(sd: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference encoder written from its key names: no attention scaling, GELU-tanh on ``gate``."""
    b, s = ids.shape
    n = sd["blocks.0.pos_embedding.embedding.weight"].shape[1]
    x = sd["token_embedding.weight"][ids]  # [B, L, D]
    bucket = _buckets(s, TINY.num_buckets, TINY.max_distance)
    for i in range(TINY.num_layers):
        p = f"blocks.{i}."
        h = _rms(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{c}.weight"]).view(b, s, n, -1).transpose(1, 2) for c in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)  # [N, L, L]
        logits = q @ k.transpose(-1, -2) + bias
        logits = logits.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        attn = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, s, -1)
        x = x + F.linear(attn, sd[p + "attn.o.weight"])
        h = _rms(x, sd[p + "norm2.weight"])
        gated = F.linear(h, sd[p + "ffn.fc1.weight"]) * F.gelu(F.linear(h, sd[p + "ffn.gate.0.weight"]),
                                                                  approximate="tanh")
        x = x + F.linear(gated, sd[p + "ffn.fc2.weight"])
    return _rms(x, sd["norm.weight"])


# ------------------------------------------------------------------------------------------------ loading


def test_official_file_matches_reference_maths(official_file, hf_model):
    encoder = load_umt5_encoder(official_file)
    assert encoder.shared.weight is encoder.encoder.embed_tokens.weight
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    sd = torch.load(official_file, weights_only=True)
    ids, mask = _inputs()
    with torch.no_grad():
        ours = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = hf_model(input_ids=ids, attention_mask=mask).last_hidden_state
    reference = _official_forward(sd, ids, mask)
    assert _rel(ours, theirs) == 0.0
    assert _rel(ours, reference) <= 1e-5


def test_config_is_inferred_from_shapes(official_file):
    sd = torch.load(official_file, weights_only=True)
    assert infer_umt5_config(sd) == dataclasses.replace(TINY, text_len=512)  # text_len is not in the weights


def test_dtype_and_release_folder(official_file):
    encoder = load_umt5_encoder(official_file.parent, dtype=torch.bfloat16)
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    assert encoder.shared.weight is encoder.encoder.embed_tokens.weight


def test_transformers_folder(tmp_path, hf_model):
    folder = tmp_path / "release" / "text_encoder"
    hf_model.save_pretrained(folder)
    ids, mask = _inputs()
    with torch.no_grad():
        theirs = hf_model(input_ids=ids, attention_mask=mask).last_hidden_state
        for path in (folder, folder.parent):  # the folder itself, or the diffusers release root
            ours = load_umt5_encoder(path)(input_ids=ids, attention_mask=mask).last_hidden_state
            assert _rel(ours, theirs) == 0.0


def test_round_trips_are_identity(hf_model):
    hf = hf_model.state_dict()
    back = umt5_official_to_hf(umt5_hf_to_official(hf))
    assert back.keys() == hf.keys()
    assert all(back[k] is hf[k] for k in hf if k != "encoder.embed_tokens.weight")
    assert back["encoder.embed_tokens.weight"] is back["shared.weight"]
    official = umt5_hf_to_official(hf)
    assert umt5_hf_to_official(umt5_official_to_hf(official)).keys() == official.keys()


def test_gate_branch_is_the_activated_one(hf_model):
    official = umt5_hf_to_official(hf_model.state_dict())
    ffn = hf_model.encoder.block[0].layer[1].DenseReluDense
    # transformers applies its activation to wi_0: that is the official gate, fc1 the linear branch
    assert torch.equal(official["blocks.0.ffn.gate.0.weight"], ffn.wi_0.weight)
    assert torch.equal(official["blocks.0.ffn.fc1.weight"], ffn.wi_1.weight)
    x = torch.randn(3, TINY.dim)
    with torch.no_grad():
        gated = F.linear(x, ffn.wi_1.weight) * F.gelu(F.linear(x, ffn.wi_0.weight), approximate="tanh")
        expected = F.linear(gated, ffn.wo.weight)
        assert torch.allclose(ffn(x), expected, atol=1e-6)


def test_full_size_keys_match_the_release():
    expected = official_keys("umT5-XXL encoder", num_layers=24)
    with torch.device("meta"):
        model = UMT5EncoderModel(TEXT_ENCODER_PRESETS["umt5-xxl"].to_hf())
    official = umt5_hf_to_official(model.state_dict())
    assert {k: tuple(v.shape) for k, v in official.items()} == expected
    assert infer_umt5_config(official) == TEXT_ENCODER_PRESETS["umt5-xxl"]


# ------------------------------------------------------------------------------------------ loader errors


def test_truncated_file(official_file):
    data = official_file.read_bytes()
    official_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_umt5_encoder(official_file)
    assert str(official_file) in str(err.value)


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / UMT5_OFFICIAL_FILE
    torch.save({"token_embedding.weight": torch.zeros(2, 2), "x": PickleBomb(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_umt5_encoder(path)
    assert str(path) in str(err.value) and not marker.exists()


@pytest.mark.parametrize("drop", ["blocks.1.attn.k.weight", "token_embedding.weight", "norm.weight"])
def test_missing_key(official_file, drop):
    sd = torch.load(official_file, weights_only=True)
    del sd[drop]
    torch.save(sd, official_file)
    with pytest.raises(CheckpointError) as err:
        load_umt5_encoder(official_file)
    assert str(official_file) in str(err.value)


def test_foreign_keys_and_absent_paths(tmp_path, official_file):
    sd = torch.load(official_file, weights_only=True)
    sd["blocks.0.attn.extra.weight"] = torch.zeros(1)
    torch.save(sd, official_file)
    with pytest.raises(CheckpointError, match="blocks.0.attn.extra.weight") as err:
        load_umt5_encoder(official_file)
    assert str(official_file) in str(err.value)
    (tmp_path / "empty").mkdir()
    cases = ((tmp_path / "nowhere.pth", "does not exist"), (tmp_path / "empty", "no encoder weights"))
    for path, problem in cases:
        with pytest.raises(CheckpointError, match=problem) as err:
            load_umt5_encoder(path)
        assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------------------ prompts


def test_clean_prompt():
    assert clean_prompt("  a  &amp;amp; b\n\t c ") == "a & b c"  # HTML entities unescaped twice
    assert clean_prompt("&lt;b&gt;bold&lt;/b&gt;") == "<b>bold</b>"
    assert clean_prompt("caf\u00c3\u00a9 na\u00c3\u00afve") == "café naïve"  # UTF-8 read as Latin-1, repaired
    assert clean_prompt("line\u00a0one\r\nline  two") == "line one line two"


@pytest.fixture
def tokenizer():
    return ByT5Tokenizer()  # byte-level, 384 ids, needs no files: matches the tiny preset's vocabulary


def test_encode_prompts_trims_to_each_prompt(hf_model, tokenizer):
    text_len = TINY.text_len
    prompts = ["a cat", "  A dog &amp; a\n cat  ", "x" * 100]
    out = encode_prompts(hf_model, tokenizer, prompts, text_len=text_len)
    cleaned = [clean_prompt(p) for p in prompts]
    lengths = [5 + 1, len(cleaned[1]) + 1, text_len]  # bytes + EOS; the long one truncated
    assert [u.shape for u in out] == [(n, TINY.dim) for n in lengths]
    for text, features in zip(cleaned, out):
        ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=text_len,
                        return_tensors="pt").input_ids
        assert ids[0, -1].item() == tokenizer.eos_token_id  # EOS kept, also when truncated
        with torch.no_grad():
            alone = hf_model(input_ids=ids).last_hidden_state[0]  # no padding at all
        assert _rel(features, alone) <= 1e-5
    single = encode_prompts(hf_model, tokenizer, "a cat", text_len=text_len)
    assert len(single) == 1 and torch.allclose(single[0], out[0], atol=1e-6)


def test_pad_context(hf_model, tokenizer):
    out = encode_prompts(hf_model, tokenizer, ["a cat", "a much longer prompt"], text_len=TINY.text_len)
    batch = pad_context(out, text_len=TINY.text_len)
    assert batch.shape == (2, TINY.text_len, TINY.dim)
    for row, u in zip(batch, out):
        assert torch.equal(row[: len(u)], u) and not row[len(u):].any()
    with pytest.raises(ValueError, match="text_len"):
        pad_context(out, text_len=3)


def test_load_tokenizer(tmp_path, tokenizer):
    folder = tmp_path / "release" / "google" / "umt5-xxl"
    tokenizer.save_pretrained(folder)
    for path in (folder, tmp_path / "release"):
        loaded = load_tokenizer(path)
        assert loaded("a cat").input_ids == tokenizer("a cat").input_ids
    with pytest.raises(ValueError, match="tokenizer folder"):
        load_tokenizer(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="tokenizer folder"):
        load_tokenizer(tmp_path / "empty")
