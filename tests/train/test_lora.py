"""LoRA: trained here, loaded into diffusers' WanTransformer3DModel through diffusers' own LoRA loader, equal outputs;
our loader reads our files, official/ComfyUI and musubi-style files, several at once, and fuses them."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import WanPipeline as DiffusersWanPipeline
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from openwan.checkpoints import keymaps
from openwan.configs import DIT_PRESETS
from openwan.models import WanDiT
from openwan.train import ListBatches, Trainer, fuse_lora, load_config, load_lora, parse_lora_spec, save_lora
from openwan.train.lora import lora_layers, lora_state_dict
from tiny import randomize

TOL = 1e-4  # max |ours - theirs| / max |theirs|
CFG = DIT_PRESETS["tiny"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _inputs(seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 2, 4, 4, generator=g)
    t = torch.tensor([700.0, 150.0])
    context = torch.randn(2, CFG.text_len, CFG.text_dim, generator=g)  # full text_len rows: diffusers does not pad
    return x, t, context


@torch.no_grad()
def _ours(dit, inputs) -> torch.Tensor:
    return dit.eval()(*inputs)


@torch.no_grad()
def _theirs(transformer, inputs) -> torch.Tensor:
    x, t, context = inputs
    return transformer(x, t, context, return_dict=False)[0]


def _diffusers_transformer(base: WanDiT) -> WanTransformer3DModel:
    params = {k: v for k, v in keymaps.dit_config_to_diffusers(base.cfg).items() if not k.startswith("_")}
    transformer = WanTransformer3DModel(**params)
    transformer.load_state_dict(keymaps.dit_official_to_diffusers(base.state_dict()), strict=True)
    return transformer.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LoRA (rank 4, alpha 8: scale 2) trained for a few steps on a random tiny DiT by the Trainer."""
    out = tmp_path_factory.mktemp("lora_run")
    torch.manual_seed(0)
    base = randomize(WanDiT(CFG), std=0.1, seed=3)
    g = torch.Generator().manual_seed(1)
    batches = [{"latents": torch.randn(2, 16, 2, 4, 4, generator=g), "context": torch.randn(2, 6, 32, generator=g)}
               for _ in range(2)]
    cfg = load_config(None, ["model.preset=tiny", "stages.0.steps=4", f"output_dir={out}", "optim.lr=5e-2",
                             "text_dropout=0", "lora.rank=4", "lora.alpha=8", "ema.decay=0.5", "log.progress=false",
                             "checkpoint.every=2", "schedule.kind=constant"])
    trainer = Trainer(cfg, dit=copy.deepcopy(base), data=ListBatches(batches))
    trainer.fit()
    return base, trainer.dit, out


def test_only_lora_trains_and_checkpoint_holds_diffusers_file(trained):
    base, dit, out = trained
    names = [n for n, p in dit.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(lora_layers(dit)) == CFG.num_layers * 10  # q,k,v,o of self and cross attention + 2 FFN linears
    for name, p in base.named_parameters():  # the base weights did not move
        wrapped = name.rsplit(".", 1)
        key = f"{wrapped[0]}.base_layer.{wrapped[1]}"
        live = dict(dit.named_parameters()).get(key, dict(dit.named_parameters()).get(name))
        assert torch.equal(live, p), name
    files = load_file(str(out / "step-00000004" / "lora.safetensors"))
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in files
    assert "transformer.blocks.1.ffn.net.0.proj.lora_B.weight" in files
    assert (out / "step-00000004" / "lora_ema.safetensors").is_file()
    official = load_file(str(out / "step-00000004" / "lora_official.safetensors"))
    assert official["diffusion_model.blocks.0.self_attn.q.alpha"].item() == 8.0


@pytest.mark.parametrize("fmt", ["diffusers", "official"])
def test_lora_loads_into_diffusers_with_same_output(trained, tmp_path, fmt):
    base, dit, _ = trained
    path = save_lora(dit, tmp_path / f"lora_{fmt}.safetensors", format=fmt)
    keys = list(load_file(str(path)))
    if fmt == "official":
        assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
        assert "diffusion_model.blocks.0.self_attn.q.alpha" in keys

    inputs = _inputs()
    ours = _ours(dit, inputs)
    plain = _ours(base, inputs)
    effect = _rel(ours, plain)
    assert effect > 1e-2, f"the LoRA barely changes the output ({effect:.1e}); parity would prove nothing"

    transformer = _diffusers_transformer(base)
    pipe = DiffusersWanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=None, scheduler=None)
    pipe.load_lora_weights(str(path))  # diffusers' own loader (converts the official layout itself)
    theirs = _theirs(pipe.transformer, inputs)
    rel = _rel(ours, theirs)
    print(f"{fmt}: LoRA effect {effect:.2e}, ours vs diffusers max rel diff {rel:.2e}")
    assert rel <= TOL


def test_load_lora_reads_formats_scales_and_fuses(trained, tmp_path):
    base, dit, _ = trained
    inputs = _inputs()
    ref = _ours(dit, inputs)
    plain = _ours(base, inputs)
    diffusers_file = save_lora(dit, tmp_path / "ours.safetensors")
    official_file = save_lora(dit, tmp_path / "theirs.safetensors", format="official")
    # musubi-tuner naming: lora_unet_<module with underscores>.lora_down/.lora_up/.alpha
    state = lora_state_dict(dit, "official")
    musubi = {}
    for key, value in state.items():
        module, _, kind = key.removeprefix("diffusion_model.").partition(".lora_")
        if key.endswith(".alpha"):
            musubi[f"lora_unet_{key.removeprefix('diffusion_model.')[:-6].replace('.', '_')}.alpha"] = value
            continue
        kind = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[kind]
        musubi[f"lora_unet_{module.replace('.', '_')}.{kind}"] = value
    musubi_file = tmp_path / "musubi.safetensors"
    save_file(musubi, str(musubi_file))

    for path in (diffusers_file, official_file, musubi_file):
        fresh = copy.deepcopy(base)
        names = load_lora(fresh, path)
        assert len(names) == 1
        rel = _rel(_ours(fresh, inputs), ref)
        print(f"{path.name}: max rel diff {rel:.2e}")
        assert rel <= TOL
        assert not any(p.requires_grad for p in fresh.parameters())

    # Two files at once, half scale each, equal one file at full scale (the adapters add up).
    fresh = copy.deepcopy(base)
    names = load_lora(fresh, [(diffusers_file, 0.5), (official_file, 0.5)])
    assert len(names) == 2 and names[0] != names[1]
    assert _rel(_ours(fresh, inputs), ref) <= TOL
    fuse_lora(fresh)
    assert set(fresh.state_dict()) == set(base.state_dict())  # plain official module names again
    assert not lora_layers(fresh)
    fused_rel = _rel(_ours(fresh, inputs), ref)
    assert fused_rel <= TOL
    # Scale 0 leaves the base model.
    fresh = copy.deepcopy(base)
    load_lora(fresh, diffusers_file, scale=0.0)
    assert _rel(_ours(fresh, inputs), plain) <= 1e-6


def test_lora_errors_and_spec(tmp_path):
    dit = WanDiT(CFG)
    bad = tmp_path / "bad.safetensors"
    save_file({"transformer.blocks.0.attn9.to_q.lora_A.weight": torch.zeros(4, 64)}, str(bad))
    with pytest.raises(ValueError, match="not a LoRA of this Wan DiT"):
        load_lora(dit, bad)
    half = tmp_path / "half.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64)}, str(half))
    with pytest.raises(ValueError, match="lora_A without lora_B"):
        load_lora(dit, half)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4)}, str(wrong))
    with pytest.raises(ValueError, match="another model size"):
        load_lora(WanDiT(CFG), wrong)
    assert parse_lora_spec("a/b.safetensors:0.7") == ("a/b.safetensors", 0.7)
    assert parse_lora_spec("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert parse_lora_spec("C:/x.safetensors") == ("C:/x.safetensors", 1.0)


def test_mixed_ranks_alpha_and_bias_diffs_match_a_manual_merge(tmp_path):
    dit = randomize(WanDiT(CFG), std=0.1, seed=4)
    g = torch.Generator().manual_seed(0)
    state = {}
    for i, rank in ((0, 4), (1, 8)):  # two ranks in one file: peft's rank_pattern
        state[f"diffusion_model.blocks.{i}.self_attn.q.lora_down.weight"] = 0.1 * torch.randn(rank, 64, generator=g)
        state[f"diffusion_model.blocks.{i}.self_attn.q.lora_up.weight"] = 0.1 * torch.randn(64, rank, generator=g)
        state[f"diffusion_model.blocks.{i}.self_attn.q.alpha"] = torch.tensor(2.0)
    state["diffusion_model.blocks.1.ffn.2.diff_b"] = 0.1 * torch.randn(64, generator=g)
    save_file(state, str(tmp_path / "mixed.safetensors"))
    expected = copy.deepcopy(dit)
    with torch.no_grad():  # W += scale · alpha/rank · up @ down;  b += scale · diff_b
        for i, rank in ((0, 4), (1, 8)):
            up = state[f"diffusion_model.blocks.{i}.self_attn.q.lora_up.weight"]
            down = state[f"diffusion_model.blocks.{i}.self_attn.q.lora_down.weight"]
            expected.blocks[i].self_attn.q.weight += 0.5 * (2.0 / rank) * up @ down
        expected.blocks[1].ffn[2].bias += 0.5 * state["diffusion_model.blocks.1.ffn.2.diff_b"]
    load_lora(dit, tmp_path / "mixed.safetensors", scale=0.5)
    inputs = _inputs()
    ref = _ours(expected, inputs)
    assert _rel(_ours(dit, inputs), ref) <= TOL
    fuse_lora(dit)
    assert _rel(_ours(dit, inputs), ref) <= TOL
