"""WanVaceDiT: parity with diffusers' WanVACETransformer3DModel on random weights (moved through our key map), the
official key layout, loading from either layout, and the base-DiT identities (no context, scale 0)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanVACETransformer3DModel
from safetensors.torch import save_file

from conftest import official_keys
from openwan.checkpoints import vace_keys
from openwan.checkpoints.convert import save_sharded
from openwan.configs import DIT_PRESETS, VACE_PRESETS, VaceConfig
from openwan.models.dit import WanDiT
from openwan.models.vace import WanVaceDiT, load_any_dit
from tiny import randomize

TOL = 1e-4  # max |ours - theirs| / max |theirs|
CFG = VACE_PRESETS["tiny-vace"].replace(text_len=512)  # diffusers pads nothing: give it the reference's 512 rows


def _model(cfg=CFG, seed: int = 0) -> WanVaceDiT:
    return randomize(WanVaceDiT(cfg), std=0.1, seed=seed)


def _inputs(cfg, batch: int = 1, grid=(3, 4, 6), rows: int = 9) -> dict:
    f, h, w = grid
    return {"x": torch.randn(batch, cfg.out_dim, f, h, w), "t": torch.tensor([911.0, 230.0][:batch]),
            "context": torch.randn(batch, rows, cfg.text_dim),
            "vace_context": torch.randn(batch, cfg.vace_in_dim, f, h, w)}


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.mark.parametrize("batch, scale", [(1, 1.0), (2, 0.6)])
def test_matches_diffusers(batch, scale):
    ours = _model()
    config = {k: v for k, v in vace_keys.vace_config_to_diffusers(ours.cfg).items() if not k.startswith("_")}
    theirs = WanVACETransformer3DModel(**config).eval()
    theirs.load_state_dict(vace_keys.vace_official_to_diffusers(ours.state_dict()), strict=True)
    inputs = _inputs(ours.cfg, batch)
    context = inputs["context"]
    padded = torch.cat([context, context.new_zeros(batch, 512 - context.shape[1], context.shape[2])], dim=1)
    with torch.no_grad():
        out = ours(**inputs, vace_context_scale=scale)
        ref = theirs(inputs["x"], inputs["t"], padded, control_hidden_states=inputs["vace_context"],
                     control_hidden_states_scale=torch.full((len(ours.cfg.vace_layers),), scale),
                     return_dict=False)[0]
        base = ours(inputs["x"], inputs["t"], context)
    assert out.shape == ref.shape == inputs["x"].shape
    assert ref.abs().max() > 0.1
    assert _rel(out, ref) <= TOL, f"max rel diff {_rel(out, ref):.2e}"
    assert _rel(out, base) > 1e-2  # the hints change the output: the comparison above sees the VACE path


def test_no_context_or_scale_zero_is_the_base_dit():
    ours = _model()
    base = WanDiT(ours.cfg)
    base.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("vace_")})
    inputs = _inputs(ours.cfg)
    with torch.no_grad():
        ref = base(inputs["x"], inputs["t"], inputs["context"])
        assert torch.equal(ours(inputs["x"], inputs["t"], inputs["context"]), ref)
        torch.testing.assert_close(ours(**inputs, vace_context_scale=0.0), ref, rtol=0, atol=0)


def test_official_key_layout_of_the_1_3B_release():
    cfg = VACE_PRESETS["vace-1.3B"]
    expected = official_keys("Wan2.1 VaceWanModel 1.3B", cfg.num_layers)
    # The listing collapses vace_blocks.{i}; before_proj exists on the first VACE block only (1264 tensors in all).
    vace = {k: s for k, s in expected.items() if k.startswith("vace_blocks.")}
    expected = {k: s for k, s in expected.items() if not k.startswith("vace_blocks.")}
    for i in range(len(cfg.vace_layers)):
        for key, shape in vace.items():
            if "before_proj" not in key or i == 0:
                expected[key.replace("{i}", str(i))] = shape
    with torch.device("meta"):
        model = WanVaceDiT(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected and len(ours) == 1264


def test_loads_from_official_and_diffusers_layouts(tmp_path):
    model = _model(VACE_PRESETS["tiny-vace"])
    state = model.state_dict()
    official, sharded, diffusers = tmp_path / "official", tmp_path / "sharded", tmp_path / "release" / "transformer"
    for folder, shard in ((official, 1 << 40), (sharded, 30_000)):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(model.cfg.to_dict()))
        save_sharded(state, folder, max_shard_bytes=shard)
    assert len(list(sharded.glob("*-of-*.safetensors"))) > 2
    diffusers.mkdir(parents=True)
    (diffusers / "config.json").write_text(json.dumps({**vace_keys.vace_config_to_diffusers(model.cfg),
                                                       "text_len": model.cfg.text_len}))
    save_file(vace_keys.vace_official_to_diffusers(state), diffusers / "diffusion_pytorch_model.safetensors")
    inputs = _inputs(model.cfg)
    with torch.no_grad():
        ref = model(**inputs)
        for path in (official, sharded, tmp_path / "release"):
            loaded = WanVaceDiT.from_pretrained(path)
            assert loaded.cfg.vace_layers == model.cfg.vace_layers and loaded.cfg.vace_in_dim == 96, path
            assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items()), path
            torch.testing.assert_close(loaded(**inputs), ref, rtol=1e-5, atol=1e-6)
    assert isinstance(load_any_dit(official), WanVaceDiT)


def test_a_bare_file_infers_the_architecture(tmp_path):
    # No config.json: released head width 128 and VACE blocks evenly spaced from 0 are read off the shapes.
    bare = VaceConfig(dim=256, num_heads=2, ffn_dim=64, num_layers=6, text_dim=32, freq_dim=32, vace_layers=(0, 3))
    model = _model(bare)
    save_file(model.state_dict(), tmp_path / "bare.safetensors")
    save_file(vace_keys.vace_official_to_diffusers(model.state_dict()), tmp_path / "bare_diffusers.safetensors")
    for name in ("bare.safetensors", "bare_diffusers.safetensors"):
        loaded = WanVaceDiT.from_pretrained(tmp_path / name)
        assert loaded.cfg == bare, name


def test_bad_vace_inputs_are_refused():
    model = _model(VACE_PRESETS["tiny-vace"])
    inputs = _inputs(model.cfg)
    with pytest.raises(ValueError, match="vace_context must be"):
        model(**{**inputs, "vace_context": inputs["vace_context"][:, :32]})
    with pytest.raises(ValueError, match="vace_context_scale must be"):
        model(**inputs, vace_context_scale=float("nan"))
    with pytest.raises(ValueError, match="needs a VaceConfig"):
        WanVaceDiT(DIT_PRESETS["tiny"])
