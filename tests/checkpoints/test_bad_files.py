"""Files that are not what they claim — not weights, holding NaN/Inf, configs with bad values — are refused by every
reader with one sentence that names the file (and the field or tensor), before any network is built."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from openwan.checkpoints import finite_check, read, read_state_dict
from openwan.checkpoints.io import CheckpointError
from openwan.checkpoints.training import read_file
from openwan.cli.main import main
from openwan.models import WanDiT, WanVAE, load_umt5_encoder
from openwan.pipelines.components import BUNDLED
from tiny import PickleBomb

DIT_FILE = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A copy of the bundled release (about 13 MB), so tests may damage their own copies of its parts."""
    root = tmp_path_factory.mktemp("bad-files") / "release"
    shutil.copytree(BUNDLED, root)
    return root


def _not_weights(tmp_path, marker) -> dict[str, bytes]:
    real = (BUNDLED / "Wan2.1_VAE.pth").read_bytes()
    return {
        "empty": b"",
        "text": b"these are not the weights you are looking for\n",
        "random": bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1)).tolist()),
        "truncated": real[: len(real) // 3],
        "planted": pickle.dumps({"w": PickleBomb(marker)}, protocol=2),
        "planted4": pickle.dumps({"w": PickleBomb(marker)}, protocol=4),
    }


LOADERS = {
    "WanVAE.from_pretrained": lambda p: WanVAE.from_pretrained(p),
    "load_umt5_encoder": lambda p: load_umt5_encoder(p),
    "checkpoints.read": lambda p: read("vae", p),
    "training read_file": lambda p: read_file(p),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_non_weights_files_are_refused_by_every_loader(tmp_path, loader):
    marker = tmp_path / "pickled-code-ran"
    for kind, data in _not_weights(tmp_path, marker).items():
        path = tmp_path / (f"{kind}_optimizer.pt" if loader == "training read_file" else f"{kind}.pth")
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as err:
            LOADERS[loader](path)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg, (kind, msg)
        assert "weights_only=False" not in msg and "add_safe_globals" not in msg, (kind, msg)
        assert not marker.exists(), kind
    planted = tmp_path / ("planted_optimizer.pt" if loader == "training read_file" else "planted.pth")
    with pytest.raises(CheckpointError, match=r"Python objects other than tensors \(it names [\w.]*open\)"):
        LOADERS[loader](planted)


@pytest.mark.parametrize("cut", [0, 7, 8, 100, 1000, -1000, -1])
def test_truncated_safetensors_names_the_file(release, tmp_path, cut):
    folder = tmp_path / "dit"
    shutil.copytree(release / "high_noise_model", folder)
    data = (folder / DIT_FILE).read_bytes()
    (folder / DIT_FILE).write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        WanDiT.from_pretrained(folder)
    assert str(folder / DIT_FILE) in str(err.value)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '"a string"', "null", "\udcff"])
def test_broken_json_configs_name_the_file(release, tmp_path, text):
    raw = text.encode("utf-8", "surrogateescape")
    dit = tmp_path / "dit"
    shutil.copytree(release / "high_noise_model", dit)
    (dit / "config.json").write_bytes(raw)
    with pytest.raises(CheckpointError, match="config") as err:
        WanDiT.from_pretrained(dit)
    assert str(dit / "config.json") in str(err.value)
    vae = tmp_path / "vae"
    vae.mkdir()
    shutil.copy(release / "Wan2.1_VAE.pth", vae)
    (vae / "Wan2.1_VAE.json").write_bytes(raw)
    with pytest.raises(CheckpointError) as err:
        WanVAE.from_pretrained(vae / "Wan2.1_VAE.pth")
    assert str(vae / "Wan2.1_VAE.json") in str(err.value)


def test_broken_configuration_json_through_generate(release, tmp_path, capsys):
    root = tmp_path / "release"
    shutil.copytree(release, root)
    (root / "configuration.json").write_text("[0.875")
    code = main(["generate", "--ckpt-dir", str(root), "--prompt", "x", "--save-file", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and str(root / "configuration.json") in err and "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()


def test_broken_configuration_json_through_convert(release, tmp_path, capsys):
    root = tmp_path / "release"
    shutil.copytree(release, root)
    (root / "configuration.json").write_text("{bad")
    code = main(["convert", str(root), str(tmp_path / "out"), "--to", "diffusers"])
    err = capsys.readouterr().err
    assert code == 2 and str(root / "configuration.json") in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(release, tmp_path, bad):
    folder = tmp_path / "dit"
    shutil.copytree(release / "high_noise_model", folder)
    state = load_file(folder / DIT_FILE)
    names = sorted(state)
    state[names[5]][..., 0] = bad
    state[names[9]][..., 0] = bad
    save_file(state, folder / DIT_FILE)
    with pytest.raises(CheckpointError, match="NaN or Inf") as err:
        WanDiT.from_pretrained(folder)
    assert str(folder / DIT_FILE) in str(err.value) and repr(names[5]) in str(err.value)
    assert names[9] not in str(err.value)  # the first offending tensor only
    # The scan can be skipped: by argument on the readers, or around a from_pretrained.
    assert torch.isnan(read_state_dict(folder / DIT_FILE, check_finite=False)[names[5]]).any() == (bad != bad)
    read("dit", folder, check_finite=False)
    with finite_check(False):
        WanDiT.from_pretrained(folder)
    with pytest.raises(CheckpointError):  # the context does not outlive its block
        read("dit", folder)


def test_non_finite_pth_and_encoder_weights(release, tmp_path):
    state = load_file(release / "high_noise_model" / DIT_FILE)  # any tensors do for the file reader
    state["x"] = torch.tensor([1.0, float("inf")], dtype=torch.bfloat16)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"in tensor 'x'"):
        read_state_dict(tmp_path / "w.pth")
    umt5 = torch.load(release / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    umt5[sorted(umt5)[0]].view(-1)[0] = float("nan")
    torch.save(umt5, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    with pytest.raises(CheckpointError, match=f"{sorted(umt5)[0]}"):
        load_umt5_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")


@pytest.mark.parametrize("std", [0.0, float("nan"), float("inf"), -1.0])
def test_vae_latents_std_must_be_positive_and_finite(release, tmp_path, std):
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(release / "Wan2.1_VAE.pth", folder)
    config = json.loads((release / "Wan2.1_VAE.json").read_text())
    config["latents_std"][3] = std
    (folder / "Wan2.1_VAE.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"latents_std.3 must be a finite number above 0") as err:
        WanVAE.from_pretrained(folder / "Wan2.1_VAE.pth")
    assert str(folder / "Wan2.1_VAE.json") in str(err.value)


BAD_DIT_VALUES = [
    ("num_heads", 0, "num_heads must be an integer from 1"),
    ("dim", None, "dim must be an integer"),
    ("dim", "abc", "dim must be an integer"),
    ("ffn_dim", 512.5, "ffn_dim must be an integer"),
    ("window_size", 5, "window_size must be a list of 2 values"),
    ("window_size", [0, 4], "window_size.0 must be -1"),
    ("num_heads", 3, "dim must be a multiple of num_heads"),
    ("num_heads", 64, "num_heads must be a divisor of dim"),
    ("num_layers", 20000, "num_layers must be an integer from 1 to 1000"),
    ("num_layers", 3, "says num_layers 3 but"),
    ("eps", float("nan"), "eps must be a finite number above 0"),
    ("eps", -1e-6, "eps must be a finite number above 0"),
    ("freq_dim", 255, "freq_dim must be an even integer"),
    ("patch_size", [1, 0, 1], "patch_size.1 must be an integer from 1"),
    ("model_type", "t3v", "model_type must be one of"),
    ("qk_norm", "yes", "qk_norm must be true or false"),
]


@pytest.mark.parametrize(("field", "value", "words"), BAD_DIT_VALUES)
def test_bad_dit_config_values_are_refused_before_building(release, tmp_path, field, value, words):
    folder = tmp_path / "dit"
    shutil.copytree(release / "high_noise_model", folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=words) as err:
        WanDiT.from_pretrained(folder)
    assert time.perf_counter() - start < 5  # num_layers 20000 is refused, not built
    msg = str(err.value)
    assert str(folder / "config.json") in msg and field in msg and "\n" not in msg


def test_bad_config_through_generate_exits_2(release, tmp_path, capsys):
    root = tmp_path / "release"
    shutil.copytree(release, root)
    config = json.loads((root / "low_noise_model" / "config.json").read_text())
    config["num_heads"] = 0
    (root / "low_noise_model" / "config.json").write_text(json.dumps(config))
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["generate", "--ckpt-dir", str(root), "--prompt", "x", "--save-file", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{root / 'low_noise_model' / 'config.json'}: config field num_heads must be" in err
