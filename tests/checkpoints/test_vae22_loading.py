"""Loading the Wan2.2 VAE from the official layout (Wan2.2_VAE.pth / .safetensors, a file or a release folder) and
from a diffusers vae/ folder, with the architecture read off the tensor shapes; converting it both ways."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

from openwan.checkpoints.convert import convert_vae
from openwan.checkpoints.infer import infer_vae_config
from openwan.checkpoints.io import CheckpointError
from openwan.checkpoints.keymaps import vae_config_to_diffusers
from openwan.configs import VAE_PRESETS
from openwan.models import WanVAE
from tiny import randomize, tiny_vae22

TINY = VAE_PRESETS["tiny-22"]


@pytest.fixture(scope="module")
def model() -> WanVAE:
    return tiny_vae22(seed=3)


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    return torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _same_numbers(a: WanVAE, b: WanVAE, video: torch.Tensor) -> None:
    with torch.no_grad():
        z = a.encode(video)
        assert torch.equal(b.encode(video), z)
        assert torch.equal(b.decode(z), a.decode(z))


@pytest.mark.parametrize("name", ["Wan2.2_VAE.pth", "Wan2.2_VAE.safetensors"])
def test_official_layout_loads_strictly_from_a_file_or_release_folder(model, video, tmp_path, name):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / name
    if name.endswith(".pth"):
        torch.save(state, path)
    else:
        save_file(state, path)
    for where in (path, tmp_path):  # the file, or a release folder holding it
        loaded = WanVAE.from_pretrained(where)
        assert loaded.cfg == TINY and not loaded.training  # patch size, residual levels, widths, 2.2 statistics
        _same_numbers(model, loaded, video)


def test_a_missing_tensor_is_refused(model, tmp_path):
    state = dict(model.state_dict())
    del state["decoder.upsamples.1.upsamples.3.time_conv.weight"]
    torch.save(state, tmp_path / "Wan2.2_VAE.pth")
    with pytest.raises(ValueError, match="time_conv"):
        WanVAE.from_pretrained(tmp_path / "Wan2.2_VAE.pth")


def test_diffusers_folder_loads_with_the_architecture_inferred(video, tmp_path):
    torch.manual_seed(0)
    params = {k: v for k, v in vae_config_to_diffusers(TINY).items() if not k.startswith("_")}
    theirs = randomize(AutoencoderKLWan(**params), std=0.1, seed=5)
    theirs.save_pretrained(tmp_path / "vae")
    for where in (tmp_path, tmp_path / "vae"):  # a diffusers release root, or its vae/
        ours = WanVAE.from_pretrained(where)
        assert ours.cfg == TINY
        with torch.no_grad():
            mu, _ = ours.encode_moments(video)
            ref = theirs.encode(video).latent_dist.mean
            z = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
            decoded = ours.decode(z)
            mean, std = ours.latents_mean.view(1, -1, 1, 1, 1), ours.latents_std.view(1, -1, 1, 1, 1)
            decoded_ref = theirs.decode(z * std + mean).sample
        assert (mu - ref).abs().max() <= 1e-4 * ref.abs().max()
        assert (decoded - decoded_ref).abs().max() <= 1e-4 * decoded_ref.abs().max()


def test_wan21_files_still_infer_wan21():
    for name in ("tiny", "wan2.1", "tiny-22", "wan2.2"):
        with torch.device("meta"):
            state = WanVAE(VAE_PRESETS[name]).state_dict()
        assert infer_vae_config(state) == VAE_PRESETS[name], name


def test_a_folder_with_both_vaes_is_refused(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "Wan2.2_VAE.pth")
    torch.save({}, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(CheckpointError, match="both Wan2.1_VAE.pth and Wan2.2_VAE.pth"):
        WanVAE.from_pretrained(tmp_path)


def test_convert_both_ways(model, video, tmp_path):
    torch.save(model.state_dict(), tmp_path / "Wan2.2_VAE.pth")
    folder = convert_vae(tmp_path / "Wan2.2_VAE.pth", tmp_path / "diffusers" / "vae", "diffusers")
    theirs = AutoencoderKLWan.from_pretrained(folder).eval()  # diffusers itself reads what was written
    assert theirs.config.is_residual and theirs.config.patch_size == 2 and theirs.config.z_dim == 48
    with torch.no_grad():
        ref = theirs.encode(video).latent_dist.mean
        mu, _ = model.encode_moments(video)
    assert (mu - ref).abs().max() <= 1e-4 * ref.abs().max()
    back = convert_vae(folder, tmp_path / "official", "official")
    assert back.name == "Wan2.2_VAE.pth"
    assert not back.with_suffix(".json").exists()  # the released statistics: nothing to write beside it
    state = torch.load(back, weights_only=True)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    _same_numbers(model, WanVAE.from_pretrained(back), video)


def test_a_ti2v_release_converts_both_ways(model, tmp_path):
    from diffusers import WanPipeline as DiffusersWanPipeline

    from openwan.checkpoints.release import save_release
    from openwan.cli.main import main
    from tiny import tiny_components

    parts = tiny_components("tiny-ti2v")
    parts["vae"] = model
    save_release(tmp_path / "ti2v", **parts)
    assert main(["convert", str(tmp_path / "ti2v"), str(tmp_path / "diffusers"), "--to", "diffusers"]) == 0
    pipe = DiffusersWanPipeline.from_pretrained(tmp_path / "diffusers")
    assert pipe.config.expand_timesteps and pipe.vae.config.is_residual and pipe.vae.config.z_dim == 48
    assert main(["convert", str(tmp_path / "diffusers"), str(tmp_path / "official"), "--to", "official"]) == 0
    state = torch.load(tmp_path / "official" / "Wan2.2_VAE.pth", weights_only=True)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
