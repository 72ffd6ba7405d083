"""Every on-disk layout loads into the same model; every broken file gives one sentence naming it."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import load_file, save_file

from openwan.checkpoints import CheckpointError, keymaps
from openwan.checkpoints.convert import convert_dit, convert_release, convert_vae, save_sharded
from openwan.cli.main import main
from openwan.configs import DIT_PRESETS, VAE_PRESETS, DiTConfig
from openwan.models import WanDiT, WanVAE
from tiny import PickleBomb, randomize

# head_dim 128 like every release, so a bare weights file with no config.json is fully described by its shapes.
BARE = DiTConfig(model_type="i2v", in_dim=36, dim=256, num_heads=2, ffn_dim=64, num_layers=2, text_dim=32,
                 freq_dim=32, image_dim=32, text_len=512)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def dit():
    return randomize(WanDiT(DIT_PRESETS["tiny-flf2v"]))


@pytest.fixture(scope="module")
def vae():
    return randomize(WanVAE(VAE_PRESETS["tiny"]), std=0.1)


def test_official_folder_single_and_sharded(dit, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    for folder, shard in ((single, 1 << 40), (sharded, 20_000)):
        (folder).mkdir()
        (folder / "config.json").write_text(json.dumps(dit.cfg.to_dict()))
        save_sharded(dit.state_dict(), folder, max_shard_bytes=shard)
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*-of-*.safetensors"))) > 2
    for folder in (single, sharded):
        loaded = WanDiT.from_pretrained(folder)
        assert loaded.cfg == dit.cfg and _same(loaded, dit)
        assert not loaded.training


def test_bare_files_infer_the_architecture(tmp_path):
    model = randomize(WanDiT(BARE))
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "model.pth")
    comfy = {f"model.diffusion_model.{k}": v for k, v in model.state_dict().items()}
    save_file(comfy, tmp_path / "comfy.safetensors")
    for name in ("model.safetensors", "model.pth", "comfy.safetensors"):
        loaded = WanDiT.from_pretrained(tmp_path / name)
        assert loaded.cfg == BARE.replace(text_len=512) and _same(loaded, model), name


def test_dtype_and_meta_free(dit, tmp_path):
    save_sharded(dit.state_dict(), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dit.cfg.to_dict()))
    loaded = WanDiT.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.is_meta for p in loaded.parameters())


def test_wan22_config_without_image_tokens(tmp_path):
    """Wan2.2 i2v experts share Wan2.1 i2v's config.json; the tensors (no img_emb) decide."""
    cfg = DIT_PRESETS["tiny-i2v"].replace(image_tokens=0)
    model = randomize(WanDiT(cfg))
    save_sharded(model.state_dict(), tmp_path)
    release_cfg = {k: v for k, v in cfg.to_dict().items() if k != "image_tokens"}  # as the release writes it
    (tmp_path / "config.json").write_text(json.dumps(release_cfg))
    assert WanDiT.from_pretrained(tmp_path).cfg.image_tokens == 0


def test_diffusers_layouts_both_ways(dit, vae, tmp_path):
    """Our diffusers output loads in diffusers itself, and diffusers' own save loads back in ours."""
    convert_dit(_official(dit, tmp_path / "official"), tmp_path / "d" / "transformer", "diffusers")
    convert_vae(_official_vae(vae, tmp_path / "official"), tmp_path / "d" / "vae", "diffusers")
    theirs = WanTransformer3DModel.from_pretrained(tmp_path / "d" / "transformer")
    their_vae = AutoencoderKLWan.from_pretrained(tmp_path / "d" / "vae")
    assert theirs.config.pos_embed_seq_len == 514
    theirs.save_pretrained(tmp_path / "resaved" / "transformer")
    their_vae.save_pretrained(tmp_path / "resaved" / "vae")
    for root in (tmp_path / "d", tmp_path / "resaved"):
        assert _same(WanDiT.from_pretrained(root), dit)  # the pipeline root
        assert _same(WanDiT.from_pretrained(root / "transformer"), dit)  # the subfolder
        loaded_vae = WanVAE.from_pretrained(root)
        assert _same(loaded_vae, vae) and loaded_vae.cfg == vae.cfg
    single = load_file(tmp_path / "d" / "vae" / "diffusion_pytorch_model.safetensors")
    save_file(single, tmp_path / "vae_diffusers_keys.safetensors")  # a lone file in diffusers' key layout
    assert _same(WanVAE.from_pretrained(tmp_path / "vae_diffusers_keys.safetensors"), vae)


def test_a_wider_decoder_loads_from_either_layout(tmp_path):
    """A VAE whose decoder is wider than its encoder (decoder_dim): diffusers reads our conversion with its
    decoder_base_dim, and both the official .pth alone and diffusers' folder load back with the same widths."""
    wide = randomize(WanVAE(VAE_PRESETS["tiny"].replace(decoder_dim=12)), std=0.1)
    official = _official_vae(wide, tmp_path / "official")
    assert WanVAE.from_pretrained(official).cfg.decoder_dim == 12  # no config file: the shapes tell
    convert_vae(official, tmp_path / "d" / "vae", "diffusers")
    theirs = AutoencoderKLWan.from_pretrained(tmp_path / "d" / "vae")
    assert theirs.config.decoder_base_dim == 12 and theirs.config.base_dim == 8
    loaded = WanVAE.from_pretrained(tmp_path / "d")
    assert _same(loaded, wide) and loaded.cfg == wide.cfg


def test_convert_round_trip_via_cli(dit, vae, tmp_path):
    src = _official(dit, tmp_path / "src")
    _official_vae(vae, src)
    assert main(["convert", str(src), str(tmp_path / "diff"), "--to", "diffusers"]) == 0
    assert main(["convert", str(tmp_path / "diff"), str(tmp_path / "back"), "--to", "official"]) == 0
    assert _same(WanDiT.from_pretrained(tmp_path / "back"), dit)
    assert _same(WanVAE.from_pretrained(tmp_path / "back" / "Wan2.1_VAE.pth"), vae)
    back = load_file(tmp_path / "back" / "diffusion_pytorch_model.safetensors")
    assert back.keys() == dit.state_dict().keys()
    assert main(["convert", str(src), str(tmp_path / "bf16"), "--to", "diffusers", "--dtype", "bf16"]) == 0
    assert WanDiT.from_pretrained(tmp_path / "bf16").patch_embedding.weight.dtype == torch.bfloat16
    convert_release(src, tmp_path / "again", "diffusers")
    assert (tmp_path / "again" / "transformer" / "config.json").is_file()


def test_vae_pth_and_inferred_architecture(vae, tmp_path):
    path = _official_vae(vae, tmp_path)
    loaded = WanVAE.from_pretrained(path)
    assert loaded.cfg == vae.cfg and _same(loaded, vae)
    assert _same(WanVAE.from_pretrained(tmp_path), vae)  # the release folder
    with torch.device("meta"):
        full = WanVAE(VAE_PRESETS["wan2.1"])
    from openwan.checkpoints.infer import infer_vae_config

    assert infer_vae_config(full.state_dict()) == VAE_PRESETS["wan2.1"]


# ------------------------------------------------------------------------------------------- broken files


def _official(dit, folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dit.cfg.to_dict()))
    save_sharded(dit.state_dict(), folder)
    return folder


def _official_vae(vae, folder):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(vae.state_dict(), folder / "Wan2.1_VAE.pth")
    return folder / "Wan2.1_VAE.pth"


def test_truncated_dit(dit, tmp_path):
    folder = _official(dit, tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        WanDiT.from_pretrained(folder)
    assert str(weights) in str(err.value) and "\n" not in str(err.value)


def test_missing_and_wrong_shaped_keys(dit, tmp_path):
    state = dict(dit.state_dict())
    state.pop("blocks.1.ffn.2.bias")
    state["head.head.weight"] = torch.zeros(3, 3)
    state["blocks.0.surplus"] = torch.zeros(1)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dit.cfg.to_dict()))
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError) as err:
        WanDiT.from_pretrained(folder)
    msg = str(err.value)
    assert "blocks.0.surplus" in msg  # not a Wan key at all: refused by the key map, which names it


def test_strict_errors_name_file_and_keys(vae, tmp_path):
    state = dict(vae.state_dict())
    state.pop("decoder.head.2.bias")
    state["conv1.weight"] = torch.zeros(1, 1, 1, 1, 1)
    torch.save(state, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(CheckpointError) as err:
        WanVAE.from_pretrained(tmp_path / "Wan2.1_VAE.pth")
    msg = str(err.value)
    assert str(tmp_path / "Wan2.1_VAE.pth") in msg
    assert "1 missing: decoder.head.2.bias" in msg and "conv1.weight (file (1, 1, 1, 1, 1)" in msg


def test_non_weights_pth_runs_no_code(tmp_path):
    marker = tmp_path / "ran"

    torch.save({"encoder.conv1.weight": PickleBomb(marker)}, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(CheckpointError, match="no pickled code is ever run"):
        WanVAE.from_pretrained(tmp_path)
    assert not marker.exists()


def test_folder_errors_say_what_a_release_holds(tmp_path):
    with pytest.raises(CheckpointError, match="release folder holds config.json"):
        WanDiT.from_pretrained(tmp_path)
    (tmp_path / "high_noise_model").mkdir()
    (tmp_path / "low_noise_model").mkdir()
    with pytest.raises(CheckpointError, match="two-expert release"):
        WanDiT.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="Wan2.1_VAE.pth"):
        WanVAE.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        WanDiT.from_pretrained(tmp_path / "nope")


def test_cli_convert_error_exits_2(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "diffusers"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert keymaps.is_diffusers_dit(["condition_embedder.time_proj.weight"])


def test_vae_statistics_sidecar(vae, tmp_path):
    """A VAE trained by openwan keeps its latent statistics in <name>.json beside <name>.pth."""
    stats = vae.cfg.replace(latents_mean=tuple(0.1 * i for i in range(16)), latents_std=(2.0,) * 16)
    path = _official_vae(vae, tmp_path)
    path.with_suffix(".json").write_text(json.dumps(stats.to_dict()))
    loaded = WanVAE.from_pretrained(path)
    assert loaded.cfg.latents_mean == stats.latents_mean and loaded.cfg.latents_std == stats.latents_std
    path.with_suffix(".json").write_text(json.dumps(stats.replace(z_dim=4, latents_mean=(0.0,) * 4,
                                                                  latents_std=(1.0,) * 4).to_dict()))
    with pytest.raises(CheckpointError, match="z_dim 4"):
        WanVAE.from_pretrained(path)


def test_a_release_with_a_half_precision_vae_loads_in_float32(tmp_path):
    """save_release(vae_dtype=float16) halves the VAE file; the pipeline and VAE training load it as float32."""
    from openwan.checkpoints.release import save_release
    from openwan.pipelines import WanPipeline
    from openwan.train.vae_models import load_trained_vae
    from tiny import tiny_components

    parts = tiny_components("tiny")
    folder = save_release(tmp_path / "rel", **parts, vae_dtype=torch.float16)
    stored = torch.load(folder / "Wan2.1_VAE.pth", weights_only=True)
    assert {v.dtype for v in stored.values()} == {torch.float16}
    pipe = WanPipeline.from_pretrained(folder, device="cpu")
    trained = load_trained_vae(folder / "Wan2.1_VAE.pth")
    for vae in (pipe.vae, trained):
        assert {p.dtype for p in vae.parameters()} == {torch.float32}
        for key, value in vae.state_dict().items():  # the stored values, upcast
            torch.testing.assert_close(value, parts["vae"].state_dict()[key].half().float(), rtol=0, atol=0)
