"""Training checkpoints: one folder per step, written under a temporary name and renamed when complete.

A folder ``step-00001000/`` appears only once every file in it is written and synced, so a process killed at
any moment leaves either the new checkpoint or none (plus a ``.tmp-step-*`` folder that the next start
removes); the previous checkpoint is never touched until the new one is in place. Old checkpoints beyond
``keep_last`` are first renamed away, then deleted.

Files are written by suffix: ``.safetensors`` (tensors), ``.pt`` (a tensors-and-plain-values object such as
an optimizer state, read back with ``torch.load(weights_only=True)``), ``.json`` (plain state).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"  # present in every complete checkpoint
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-step-"
_TRASH_PREFIX = ".trash-step-"


class CheckpointCorrupt(ValueError):
    """A checkpoint folder cannot be read back; the message names the file."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, folder), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and (entry / STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def remove_stale(root: str | Path) -> list[Path]:
    """Delete what killed writers left behind (temporary and half-deleted folders); returns what was removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.is_dir() and p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_checkpoint(root: str | Path, step: int, files: Mapping[str, Any], keep_last: int | None = None) -> Path:
    """Write ``files`` (name -> object, by suffix) as the checkpoint of ``step``; keep the newest ``keep_last``."""
    assert STATE_FILE in files, f"a checkpoint needs its {STATE_FILE}"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f"{_TMP_PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # The state file goes last: a folder holding it is complete even if the rename below was not atomic.
    for name in sorted(files, key=lambda n: n == STATE_FILE):
        _write_file(tmp / name, files[name])
    _fsync(tmp)
    if final.exists():  # the same step saved again (a resumed run): move the old one away first
        _discard(final)
    os.replace(tmp, final)
    _fsync(root)
    if keep_last is not None:
        for _, old in list_checkpoints(root)[:-keep_last]:
            _discard(old)
    return final


def _write_file(path: Path, obj: Any) -> None:
    """Write one file of a checkpoint (by suffix) and sync it to disk."""
    suffix = path.suffix
    if suffix == ".safetensors":
        save_file({k: v.detach().contiguous().cpu() for k, v in obj.items()}, str(path), metadata={"format": "pt"})
    elif suffix == ".pt":
        torch.save(obj, str(path))
    elif suffix == ".json":
        path.write_text(json.dumps(obj, indent=1) + "\n")
    else:
        raise AssertionError(f"no checkpoint writer for {path.name}")
    _fsync(path)


def read_file(path: str | Path) -> Any:
    """Read one checkpoint file back (tensors never unpickle code: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointCorrupt(f"{path} is missing; the checkpoint is incomplete — resume from an earlier one.")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        if path.suffix == ".pt":
            return torch.load(str(path), map_location="cpu", weights_only=True)
        if path.suffix == ".json":
            return json.loads(path.read_text())
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as err:
        raise CheckpointCorrupt(
            f"{path} cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "the checkpoint is damaged — resume from an earlier one."
        ) from None
    raise CheckpointCorrupt(f"{path} is not a checkpoint file openwan writes (.safetensors, .pt or .json).")


def _discard(folder: Path) -> None:
    trash = folder.with_name(f"{_TRASH_PREFIX}{folder.name}-{os.getpid()}")
    os.replace(folder, trash)  # atomic: the folder stops looking like a checkpoint at once
    shutil.rmtree(trash, ignore_errors=True)


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some filesystems do not allow opening folders; the data is still written
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ RNG state


def capture_rng(generators: Mapping[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every random state a step can touch: torch CPU/CUDA, Python ``random``, NumPy and the named generators.

    Returns (tensors for a .safetensors file, plain values for JSON).
    """
    import random

    import numpy as np

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    for name, gen in generators.items():
        tensors[f"generator_{name}"] = gen.get_state()
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, plain


def restore_rng(tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any],
                generators: Mapping[str, torch.Generator]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    for name, gen in generators.items():
        key = f"generator_{name}"
        if key not in tensors:
            raise CheckpointCorrupt(f"the checkpoint holds no state for the {name!r} random generator.")
        gen.set_state(tensors[key])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
