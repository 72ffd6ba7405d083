"""The compression study's VAE presets: equal latent budgets, trained directly in 3D, exported and reloaded; the
config fields they bring refuse bad values by name."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from openwan.cli import train_vae
from openwan.data.synthetic import dataset_combinations, render_clip
from openwan.models.vae import WanVAE
from openwan.train.vae_config import STUDY_VAE_PRESETS, VAEDataConfig, VAEModelConfig, vae_preset
from openwan.train.vae_trainer import VAETrainConfig, run_stage

pytestmark = pytest.mark.usefixtures("one_thread")


def shapes_clips(n: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """[n, 3, frames, size, size] in [-1, 1]: clips of the synthetic dataset (a coloured shape moving over a
    tinted background)."""
    combos = dataset_combinations(n, seed)
    clips = [render_clip(*c, seed=seed * 1000 + i, size=size, frames=frames) for i, c in enumerate(combos)]
    return torch.stack(clips).permute(0, 4, 1, 2, 3) * 2 - 1


@pytest.mark.parametrize("name, compression", [("demo", 8), ("demo-22", 16), ("demo-dcae", 32)])
def test_study_presets_hold_the_same_latent_budget(name, compression):
    cfg = vae_preset(name)
    torch.manual_seed(0)
    vae = WanVAE(cfg).eval()
    with torch.no_grad():
        z = vae.encode(shapes_clips(1, 17, 64))
    assert cfg.spatial_compression == compression and cfg.temporal_compression == 4
    assert z.shape[2:] == (5, 64 // compression, 64 // compression)
    assert z[0].numel() == 5 * 8 * 8 * 16  # what the 2.1 design's z16 at 4x8x8 holds


def _train_fresh(tmp_path, name: str, vae_config=None, steps: int = 10):
    video = shapes_clips(2, 5, 32)
    cfg = VAETrainConfig(stage=2, steps=steps, lr=1e-3, l1_weight=0, l2_weight=10, perceptual_weight=0,
                         stats_batches=1, save_every=0, model=VAEModelConfig(preset=name, fresh_3d=True),
                         data=VAEDataConfig(size=32, frames=5))
    torch.manual_seed(0)
    path = run_stage(cfg, [{"video": video}], tmp_path / name, vae_config=vae_config)
    logged = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return path, [m["l2"] for m in logged], video


@pytest.mark.parametrize("name", list(STUDY_VAE_PRESETS))
def test_study_design_at_width_4_trains_fresh_in_3d_and_reloads(tmp_path, name):
    """The preset's design (patchify, residual levels, depth, z) at base width 4: the default tier's size."""
    narrow = STUDY_VAE_PRESETS[name].replace(dim=4, decoder_dim=4)
    path, losses, video = _train_fresh(tmp_path, name, narrow)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    vae = WanVAE.from_pretrained(path, dtype=torch.float32)
    assert (vae.cfg.dim, vae.cfg.z_dim, vae.cfg.dim_mult) == (4, narrow.z_dim, narrow.dim_mult)
    assert vae.cfg.patch_size == 2 and vae.cfg.residual


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STUDY_VAE_PRESETS))
def test_study_preset_trains_fresh_in_3d_and_reloads(tmp_path, name):
    path, losses, video = _train_fresh(tmp_path, name)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    vae = WanVAE.from_pretrained(path, dtype=torch.float32)
    assert vae.cfg.patch_size == 2 and vae.cfg.residual and vae.cfg.z_dim == STUDY_VAE_PRESETS[name].z_dim
    assert vae.cfg.dim_mult == STUDY_VAE_PRESETS[name].dim_mult
    with torch.no_grad():
        z = vae.encode(video)
        assert z.flatten(1).std(1).min() > 0.3  # normalised by the statistics measured at export


def _cfg(**kw) -> VAETrainConfig:
    return VAETrainConfig(**kw)


@pytest.mark.parametrize("kwargs, field", [
    (dict(stage=1, model=VAEModelConfig(preset="demo-22")), "model.preset"),
    (dict(stage=2, model=VAEModelConfig(preset="no-such-vae", fresh_3d=True)), "model.preset"),
    (dict(stage=3, model=VAEModelConfig(preset="demo-22", fresh_3d=True)), "model.fresh_3d"),
    (dict(stage=2, model=VAEModelConfig(preset="demo", init="a.pth", fresh_3d=True)), "model.init"),
    (dict(stage=2, freeze_encoder=True, decode_noise=(0.2, 0.1)), "decode_noise"),
    (dict(stage=2, freeze_encoder=True, decode_noise=(0.0, 0.9)), "decode_noise"),
    (dict(stage=2, decode_noise=(0.0, 0.1)), "freeze_encoder"),
])
def test_study_fields_refuse_bad_values_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        _cfg(**kwargs)


def test_cli_sets_the_study_fields():
    parser = argparse.ArgumentParser()
    train_vae.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train-vae", "--stage", "2", "--freeze-encoder", "--init", "v.pth", "--manifest",
                              "m.jsonl", "--out", "o", "--decode-noise", "0", "0.1"])
    cfg = train_vae.resolve_config(args)
    assert cfg.decode_noise == (0.0, 0.1) and cfg.freeze_encoder
    args = parser.parse_args(["train-vae", "--stage", "2", "--fresh-3d", "--preset", "demo-dcae", "--manifest",
                              "m.jsonl", "--out", "o"])
    cfg = train_vae.resolve_config(args)
    assert cfg.model.fresh_3d and vae_preset(cfg.model.preset).spatial_compression == 32
    args = parser.parse_args(["train-vae", "--stage", "1", "--preset", "demo-22", "--manifest", "m.jsonl", "--out",
                              "o"])
    with pytest.raises(ValueError, match="--fresh-3d"):
        train_vae.resolve_config(args)


@pytest.mark.parametrize("name", ["demo", "demo-22"])
def test_per_frame_start_keeps_single_frames_and_leaves_a_model_as_inflation_does(name):
    """A 3D VAE trained on single frames has trained only its newest-frame taps: the per-frame start zeroes the rest
    and sets the temporal resampling to pass frames through, without changing how a single frame codes; an inflated
    image VAE is already in that form."""
    from openwan.models.image_vae import ImageVAE
    from openwan.train.vae_models import inflate_image_vae, per_frame_start

    cfg = vae_preset(name).replace(dim=4, decoder_dim=4)
    torch.manual_seed(0)
    vae = WanVAE(cfg).eval()
    frame = shapes_clips(1, 5, 32)[:, :, :1]
    start = WanVAE(cfg).eval()
    start.load_state_dict(vae.state_dict())
    per_frame_start(start)
    with torch.no_grad():
        z = vae.encode(frame)
        assert torch.equal(start.encode(frame), z) and torch.equal(start.decode(z), vae.decode(z))
    convs = [m for m in start.modules() if isinstance(m, torch.nn.Conv3d) and m.weight.shape[2] > 1]
    assert convs and not any(m.weight[:, :, :-1].any() for m in convs)
    assert any(m.weight[:, :, :-1].any() for m in vae.modules() if isinstance(m, torch.nn.Conv3d)
               and m.weight.shape[2] > 1)
    if cfg.patch_size == 1:  # the 2.1 design has an image VAE to inflate
        torch.manual_seed(1)
        inflated = inflate_image_vae(ImageVAE(cfg))
        torch.manual_seed(1)
        again = per_frame_start(inflate_image_vae(ImageVAE(cfg)))
        assert all(torch.equal(a, b) for a, b in zip(inflated.state_dict().values(), again.state_dict().values()))


def test_per_frame_start_is_refused_without_a_3d_init_and_set_by_the_cli(tmp_path, capsys):
    from openwan.cli.main import main
    from openwan.data.synthetic import make_dataset
    from openwan.models.image_vae import ImageVAE
    from openwan.train.vae_models import export_image_vae

    with pytest.raises(ValueError, match=r"model\.per_frame"):
        _cfg(stage=2, model=VAEModelConfig(preset="demo-22", fresh_3d=True, per_frame=True))
    with pytest.raises(ValueError, match=r"model\.per_frame"):
        _cfg(stage=3, model=VAEModelConfig(init="v.pth", per_frame=True))
    parser = argparse.ArgumentParser()
    train_vae.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train-vae", "--stage", "2", "--init", "v.pth", "--per-frame-start", "--manifest",
                              "m.jsonl", "--out", "o"])
    assert train_vae.resolve_config(args).model.per_frame
    image = export_image_vae(ImageVAE(vae_preset("demo").replace(dim=4, decoder_dim=4)), tmp_path)
    with pytest.raises(ValueError, match="drop per_frame"):
        run_stage(_cfg(stage=2, model=VAEModelConfig(init=str(image), per_frame=True)), [], tmp_path / "run")
    manifest = make_dataset(tmp_path / "clips", 2, frames=5, size=32)
    assert main(["train-vae", "--stage", "2", "--init", str(image), "--per-frame-start", "--manifest",
                 str(manifest), "--out", str(tmp_path / "out"), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "drop per_frame" in err and "Traceback" not in err and not (tmp_path / "out").exists()
