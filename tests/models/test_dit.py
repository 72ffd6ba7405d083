"""WanDiT: parity with diffusers' WanTransformer3DModel on random weights; official keys, RoPE, errors."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from conftest import official_keys
from openwan.configs import DIT_PRESETS, DiTConfig
from openwan.models.dit import WanDiT
from openwan.models.layers import FP32LayerNorm, RMSNorm, apply_rope, attention, rope_table

TOL = 1e-4  # max |ours - theirs| / max |theirs|


# ------------------------------------------------------------------------------------------ helpers


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values for every parameter: norms away from 1/0, random modulation, head and emb_pos."""
    g = torch.Generator().manual_seed(seed)

    def rand(p: torch.Tensor, scale: float, offset: float = 0.0) -> None:
        p.copy_(offset + scale * torch.randn(p.shape, generator=g))

    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
            rand(module.weight, module.weight[0].numel() ** -0.5)
            rand(module.bias, 0.1)
        elif isinstance(module, (FP32LayerNorm, RMSNorm)) and module.weight is not None:
            rand(module.weight, 0.2, offset=1.0)
            if getattr(module, "bias", None) is not None:
                rand(module.bias, 0.2)
    for name, p in model.named_parameters():
        if name.endswith("modulation") or name.endswith("emb_pos"):
            rand(p, 0.3)
    return model


def _diffusers_model(cfg: DiTConfig, state: dict[str, torch.Tensor]) -> WanTransformer3DModel:
    model = WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim,
        out_channels=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=cfg.cross_attn_norm,
        qk_norm="rms_norm_across_heads" if cfg.qk_norm else None,
        eps=cfg.eps,
        image_dim=cfg.image_dim if cfg.image_tokens else None,
        added_kv_proj_dim=cfg.dim if cfg.image_tokens else None,
        rope_max_seq_len=1024,
        pos_embed_seq_len=cfg.image_tokens if cfg.image_tokens == 514 else None,
    )
    converted = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in state.items()})
    # The converter leaves flf2v's image position embedding under its official name.
    if "img_emb.emb_pos" in converted:
        converted["condition_embedder.image_embedder.pos_embed"] = converted.pop("img_emb.emb_pos")
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


# Test-local configs: diffusers hard-codes 512 text rows when it splits image tokens off the context, so the
# image-conditioned tiny presets (text_len 32) are run with text_len 512 here.
CASES = {
    # name: (config, batch, latent grid (F, H, W), timesteps, context rows, per-token t)
    "t2v": (DIT_PRESETS["tiny"], 1, (2, 4, 4), [937.0], 32, False),
    "t2v-batch2-different-t-short-context": (DIT_PRESETS["tiny"], 2, (2, 4, 4), [999.0, 13.0], 7, False),
    "t2v-nonsquare-F3": (DIT_PRESETS["tiny"], 1, (3, 4, 6), [500.0], 20, False),
    "i2v": (DIT_PRESETS["tiny-i2v"].replace(text_len=512), 1, (2, 4, 6), [801.0], 12, False),
    "flf2v-batch2": (DIT_PRESETS["tiny-flf2v"].replace(text_len=512), 2, (3, 4, 4), [700.0, 250.0], 9, False),
    "ti2v-per-token-t": (DIT_PRESETS["tiny-ti2v"], 2, (3, 4, 6), [960.0, 480.0], 32, True),
}


def _inputs(cfg: DiTConfig, batch: int, grid, times, rows: int, per_token: bool) -> dict:
    f, h, w = grid
    c = cfg.out_dim
    x = torch.randn(batch, c, f, h, w)
    t = torch.tensor(times)
    if per_token:  # Wan2.2 ti2v i2v mode: the first latent frame is clean (t = 0), the rest share t
        tokens_per_frame = (h // 2) * (w // 2)
        t = t[:, None].repeat(1, f * tokens_per_frame)
        t[:, :tokens_per_frame] = 0.0
    inputs = {"x": x, "t": t, "context": torch.randn(batch, rows, cfg.text_dim)}
    if cfg.in_dim > c:
        inputs["y"] = torch.randn(batch, cfg.in_dim - c, f, h, w)
    if cfg.image_tokens:
        inputs["clip_fea"] = torch.randn(batch, cfg.image_tokens, cfg.image_dim)
    return inputs


def _diffusers_forward(model: WanTransformer3DModel, cfg: DiTConfig, inputs: dict) -> torch.Tensor:
    x = inputs["x"] if "y" not in inputs else torch.cat([inputs["x"], inputs["y"]], dim=1)
    context = inputs["context"]
    pad = context.new_zeros(context.shape[0], cfg.text_len - context.shape[1], cfg.text_dim)
    padded = torch.cat([context, pad], dim=1)
    image = inputs.get("clip_fea")
    if image is not None and cfg.image_tokens == 514:
        # diffusers takes flf2v's features as [2B, 257, C] (first, last frame) and views them as [B, 514, C].
        image = image.reshape(-1, 257, cfg.image_dim)
    return model(x, inputs["t"], padded, encoder_hidden_states_image=image, return_dict=False)[0]


# ------------------------------------------------------------------------------------- parity tests


@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers(case):
    cfg, batch, grid, times, rows, per_token = CASES[case]
    torch.manual_seed(1)
    ours = _randomize(WanDiT(cfg)).eval()
    theirs = _diffusers_model(cfg, ours.state_dict())
    inputs = _inputs(cfg, batch, grid, times, rows, per_token)
    with torch.no_grad():
        out = ours(**inputs)
        ref = _diffusers_forward(theirs, cfg, inputs)
    assert out.shape == ref.shape == (batch, cfg.out_dim, *grid)
    assert out.dtype == torch.float32
    assert ref.abs().max() > 0.1  # a non-trivial output
    rel = _rel(out, ref)
    print(f"{case}: max rel diff {rel:.2e}")
    assert rel <= TOL, f"{case}: max rel diff {rel:.2e}"


def test_per_token_t_equal_to_per_sample_t():
    cfg = DIT_PRESETS["tiny-ti2v"]
    model = _randomize(WanDiT(cfg)).eval()
    x, context = torch.randn(2, 48, 2, 4, 4), torch.randn(2, 5, cfg.text_dim)
    t = torch.tensor([900.0, 100.0])
    with torch.no_grad():
        per_sample = model(x, t, context)
        per_token = model(x, t[:, None].expand(2, 8), context)
    torch.testing.assert_close(per_token, per_sample, rtol=1e-5, atol=1e-5)


def test_runs_with_bf16_weights_and_keeps_float32_output():
    cfg = DIT_PRESETS["tiny-i2v"]
    model = _randomize(WanDiT(cfg)).eval()
    inputs = _inputs(cfg, 1, (2, 4, 4), [600.0], 10, False)
    seen = []
    model.blocks[0].register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.no_grad():
        ref = model(**inputs)
        out = model.to(torch.bfloat16)(**inputs)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert seen[-1] == (torch.float32, torch.float32)  # the residual stream stays float32
    assert out.dtype == torch.float32
    assert _rel(out, ref) < 5e-2  # bf16 weights and activations, fp32 residual stream


# ------------------------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("head_dim, grid", [(128, (21, 6, 80)), (32, (3, 5, 7))])
def test_rope_table_matches_complex_float64_reference(head_dim, grid):
    hw = 2 * (head_dim // 6)
    axis_dims = (head_dim - 2 * hw, hw, hw)
    cos, sin = rope_table(grid, axis_dims)

    # Reference: each rotary pair p belongs to one axis and has frequency 10000^(-2j/d_axis) for its index j
    # inside that axis; the angle is that frequency times the token's integer coordinate on the axis.
    axis_of_pair, freq_of_pair = [], []
    for axis, d in enumerate(axis_dims):
        for j in range(d // 2):
            axis_of_pair.append(axis)
            freq_of_pair.append(10000.0 ** (-2.0 * j / d))
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid), indexing="ij"), dim=-1
    ).reshape(-1, 3)  # [L, 3], f-major then h then w
    angles = coords[:, axis_of_pair] * torch.tensor(freq_of_pair, dtype=torch.float64)  # [L, head_dim/2]
    ref = torch.polar(torch.ones_like(angles), angles)  # complex128
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (coords.shape[0], head_dim // 2)
    assert (cos.double() - ref.real).abs().max() < 1e-6
    assert (sin.double() - ref.imag).abs().max() < 1e-6

    # Applying it rotates adjacent channel pairs (2i, 2i+1) as complex numbers.
    x = torch.randn(2, coords.shape[0], 3, head_dim, dtype=torch.float64)
    rotated = torch.view_as_complex(x.unflatten(-1, (-1, 2))) * ref[None, :, None, :]
    rotated = torch.view_as_real(rotated).flatten(-2)
    assert (apply_rope(x.float(), cos, sin).double() - rotated).abs().max() < 1e-5


# -------------------------------------------------------------------------------------- attention


def test_attention_key_lens_masks_padding():
    q, k, v = torch.randn(2, 5, 2, 8), torch.randn(2, 7, 2, 8), torch.randn(2, 7, 2, 8)
    out = attention(q, k, v, key_lens=torch.tensor([7, 4]))
    torch.testing.assert_close(out[0], attention(q[:1], k[:1], v[:1])[0])
    torch.testing.assert_close(out[1], attention(q[1:], k[1:, :4], v[1:, :4])[0])
    # Combined with a boolean mask that hides key 0 from every query.
    mask = torch.ones(1, 1, 5, 7, dtype=torch.bool)
    mask[..., 0] = False
    out = attention(q, k, v, key_lens=torch.tensor([7, 4]), attn_mask=mask)
    torch.testing.assert_close(out[1], attention(q[1:], k[1:, 1:4], v[1:, 1:4])[0])


# ----------------------------------------------------------------------------- official key layout

SECTIONS = {
    "t2v-1.3B": "WanModel t2v-1.3B",
    "t2v-14B": "WanModel t2v-14B",
    "i2v-14B-480p": "WanModel i2v-14B",
    "i2v-14B-720p": "WanModel i2v-14B",
    "flf2v-14B": "WanModel flf2v-14B",
    # The t2v-A14B experts have in_dim 16 and no image branch: the Wan2.1 t2v-14B layout.
    "t2v-A14B-high": "WanModel t2v-14B",
    "t2v-A14B-low": "WanModel t2v-14B",
    "i2v-A14B-high": "i2v-A14B(expert)",
    "i2v-A14B-low": "i2v-A14B(expert)",
    "ti2v-5B": "WanModel ti2v-5B",
}


def test_every_released_preset_has_a_reference_section():
    ours = {"demo", "demo-small"}  # openwan's own bundled model (and its narrower variant), not Wan releases
    assert {name for name in DIT_PRESETS if not name.startswith("tiny")} - ours == set(SECTIONS)


@pytest.mark.parametrize("preset", list(SECTIONS))
def test_meta_model_has_the_official_keys_and_shapes(preset):
    cfg = DIT_PRESETS[preset]
    expected = official_keys(SECTIONS[preset], cfg.num_layers)
    with torch.device("meta"):
        model = WanDiT(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(expected)) == [] and sorted(set(expected) - set(ours)) == []
    assert ours == expected
    assert list(model.buffers()) == []  # RoPE tables are computed, never stored
    assert all(p.is_meta for p in model.parameters())  # init is skipped on meta


# ---------------------------------------------------------------------------- construction, init


def test_from_config_dict_and_init():
    release_style = {
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v", "dim": 64,
        "ffn_dim": 128, "freq_dim": 32, "text_dim": 32, "num_heads": 2, "num_layers": 2, "in_dim": 16,
        "out_dim": 16, "text_len": 32, "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True,
        "eps": 1e-6, "patch_size": [1, 2, 2],
    }
    model = WanDiT.from_config(release_style)
    assert model.cfg == DIT_PRESETS["tiny"]
    assert torch.count_nonzero(model.head.head.weight) == 0
    assert model.blocks[0].modulation.std() > 0 and torch.equal(model.blocks[0].norm3.weight, torch.ones(64))
    # A zero head predicts v = 0 at initialisation.
    out = model(torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 32))
    assert out.abs().max() == 0


def test_meta_build_then_materialise_and_init():
    with torch.device("meta"):
        model = WanDiT(DIT_PRESETS["tiny-flf2v"])
    model.to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.count_nonzero(model.img_emb.emb_pos) == 0
    assert torch.equal(model.blocks[1].self_attn.norm_q.weight, torch.ones(64))


def test_from_pretrained_round_trip(tmp_path):
    cfg = DIT_PRESETS["tiny-i2v"]
    model = _randomize(WanDiT(cfg)).eval()
    save_file(model.state_dict(), tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    loaded = WanDiT.from_pretrained(tmp_path)
    inputs = _inputs(cfg, 1, (1, 4, 4), [321.0], 6, False)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), model(**inputs))


# ------------------------------------------------------------------------------ gradient checkpointing


def test_gradient_checkpointing_gives_identical_outputs_and_gradients():
    cfg = DIT_PRESETS["tiny-i2v"]
    model = _randomize(WanDiT(cfg))
    inputs = _inputs(cfg, 2, (2, 4, 4), [800.0, 200.0], 10, False)
    results = []
    for flag in (False, True):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = flag
        out = model(**inputs)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out0, grads0), (out1, grads1) = results
    assert torch.equal(out0, out1)
    assert grads0.keys() == grads1.keys()
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name


# ------------------------------------------------------------------------------------- bad inputs


def _good(cfg: DiTConfig) -> dict:
    return _inputs(cfg, 2, (2, 4, 4), [500.0, 100.0], 8, False)


I2V, T2V, FLF2V = DIT_PRESETS["tiny-i2v"], DIT_PRESETS["tiny"], DIT_PRESETS["tiny-flf2v"]
BAD = {
    "x not 5-D": (I2V, {"x": torch.randn(16, 2, 4, 4)}, "add a batch dimension"),
    "missing y": (I2V, {"y": None}, "pass y with the 20 conditioning channels"),
    "wrong channels": (DIT_PRESETS["tiny"], {"x": torch.randn(2, 12, 2, 4, 4)}, "must equal in_dim = 16"),
    "y grid differs": (I2V, {"y": torch.randn(2, 20, 2, 4, 6)}, "y must have x's batch size and latent grid"),
    "grid not divisible": (DIT_PRESETS["tiny"], {"x": torch.randn(2, 16, 2, 4, 5)}, "multiples of 16"),
    "context dim": (I2V, {"context": torch.randn(2, 8, 31)}, r"shape \[2, L, 32\]"),
    "context batch": (I2V, {"context": torch.randn(1, 8, 32)}, r"shape \[2, L, 32\]"),
    "context too long": (T2V, {"context": torch.randn(2, 33, 32)}, "truncate the prompt to 32"),
    "missing clip_fea": (I2V, {"clip_fea": None}, "needs clip_fea"),
    "clip_fea token count": (I2V, {"clip_fea": torch.randn(2, 514, 32)}, r"\[2, 257, 32\]"),
    "clip_fea for flf2v": (FLF2V, {"clip_fea": torch.randn(2, 257, 32)}, "first- and last-frame"),
    "clip_fea for a model without image branch": (
        DIT_PRESETS["tiny"], {"clip_fea": torch.randn(2, 257, 32)}, "pass clip_fea=None"),
    "t scalar": (I2V, {"t": torch.tensor(500.0)}, "one timestep per sample"),
    "t not a tensor": (I2V, {"t": 500.0}, "wrap it in torch.tensor"),
    "t wrong batch": (I2V, {"t": torch.tensor([1.0, 2.0, 3.0])}, r"shape \[2\]"),
    "t wrong token count": (I2V, {"t": torch.ones(2, 7)}, r"\[2, 8\]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_value_error(case):
    cfg, change, message = BAD[case]
    inputs = {**_good(cfg), **change}
    if cfg.image_tokens == 0 and change.get("clip_fea") is None:
        inputs.pop("clip_fea", None)
    model = WanDiT(cfg)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_good_inputs_pass_the_checks():
    for cfg in (I2V, T2V, FLF2V):
        WanDiT(cfg)(**_good(cfg))
