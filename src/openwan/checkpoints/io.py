"""Reading weight files safely.

Every reader here refuses to execute pickled code (``torch.load(weights_only=True)``) and turns each way a
file can be wrong — absent, truncated, not weights at all — into one :class:`CheckpointError` whose message
names the file and says what to do. (Tensors that do not fit a network are caught where the network takes them:
``openwan.models.loading.load_strict``.)
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from openwan.configs import CheckpointError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); it is probably truncated or corrupt — "
            "download it again."
        ) from None


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors, so it was not loaded (no pickled code is ever "
            f"run); give a weights-only .pth or a .safetensors file. Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path} could not be read as a PyTorch weights file ({str(err).splitlines()[0]}); it is probably "
            "truncated or corrupt — download it again."
        ) from None
    # Some releases wrap the weights: {"state_dict": {...}} or {"model": {...}}.
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} does not hold a mapping of names to tensors; give a model weights file "
            "(.safetensors or a weights-only .pth)."
        )
    return dict(obj)


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _read_index(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a valid shard index (no readable 'weight_map': {err}).") from None
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise CheckpointError(
            f"{index} lists shard files that are not in {index.parent}: {', '.join(missing)}; "
            "download every shard of the release."
        )
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(read_state_dict(index.parent / shard))
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one weights file, a shard index (``*.index.json``), or a list of shard files.

    Tensors stay in the file's dtype on the CPU (safetensors and zip-format .pth are memory-mapped).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; check the path to the weights.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the weights file inside it (or use from_pretrained).")
    name = path.name
    if name.endswith(".index.json"):
        return _read_index(path)
    if name.endswith(".safetensors"):
        return _read_safetensors(path)
    if name.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return _read_torch(path)
    raise CheckpointError(
        f"{path} has an unknown weights format; use .safetensors, .pth/.pt/.bin or a *.index.json shard index."
    )


def read_state_dicts(paths: Iterable[str | Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for p in paths:
        state.update(read_state_dict(p))
    return state


__all__ = ["CheckpointError", "WEIGHT_SUFFIXES", "read_state_dict", "read_state_dicts"]
