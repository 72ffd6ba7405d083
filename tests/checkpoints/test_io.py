"""Reading weights refuses every broken file with one sentence naming it, and never runs pickled code."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from openwan.checkpoints.io import CheckpointError, read_state_dict
from openwan.models.loading import load_strict
from tiny import PickleBomb


def _tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))


def test_reads_safetensors_pth_and_shards(tmp_path):
    state = _tiny().state_dict()
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    keys = sorted(state)
    save_file({k: state[k] for k in keys[:2]}, tmp_path / "a.safetensors")
    save_file({k: state[k] for k in keys[2:]}, tmp_path / "b.safetensors")
    index = {"weight_map": {k: ("a" if k in keys[:2] else "b") + ".safetensors" for k in keys}}
    (tmp_path / "w.safetensors.index.json").write_text(json.dumps(index))
    for name in ("w.safetensors", "w.pth", "w.safetensors.index.json"):
        got = read_state_dict(tmp_path / name)
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


def test_wrapped_state_dict_is_unwrapped(tmp_path):
    state = _tiny().state_dict()
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    assert read_state_dict(tmp_path / "w.pth").keys() == state.keys()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    state = _tiny().state_dict()
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": PickleBomb(marker)}, path)
    with pytest.raises(CheckpointError, match="no pickled code is ever run"):
        read_state_dict(path)
    assert not marker.exists()


def test_non_weights_pth(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="mapping of names to tensors"):
        read_state_dict(path)


def test_missing_file_and_shard(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        read_state_dict(tmp_path / "m.safetensors.index.json")


def test_strict_load_lists_every_problem(tmp_path):
    state = _tiny().state_dict()
    state.pop("1.bias")
    state["0.weight"] = torch.zeros(5, 4)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_strict(_tiny(), state, source="file.safetensors")
    msg = str(err.value)
    assert msg.startswith("file.safetensors does not match Sequential")
    assert "1 missing: 1.bias" in msg and "1 unexpected: extra.weight" in msg
    assert "0.weight (file (5, 4), model (3, 4))" in msg


def test_strict_load_assigns_on_meta_and_casts():
    state = _tiny().state_dict()
    with torch.device("meta"):
        model = _tiny()
    load_strict(model, state, source="x", dtype=torch.float64)
    assert model[0].weight.dtype == torch.float64 and not model[0].weight.is_meta
    assert torch.equal(model[0].weight, state["0.weight"].double())
