"""Training checkpoints: one folder per step, written under a temporary name and renamed when complete.

A folder ``step-00001000/`` appears only once every file in it is written and synced, so a process killed at
any moment leaves either the new checkpoint or none (plus a ``.tmp-step-*`` folder that the next start
removes); the previous checkpoint is never touched until the new one is in place. Old checkpoints beyond
``keep_last`` are first renamed away, then deleted.

Files are written by suffix: ``.safetensors`` (tensors), ``.pt`` (a tensors-and-plain-values object such as
an optimizer state, read back with ``torch.load(weights_only=True)``), ``.json`` (plain state).

A multi-process run (``save_sharded_checkpoint``) adds ``sharded/``: model, optimizer and EMA as
``torch.distributed.checkpoint`` writes them, each rank its own shards, loadable at any world size (one process
needs no process group). Rank 0 writes the plain files next to it and renames the folder after a barrier.
``export_dit`` turns either kind into one release-layout DiT (official keys + config.json).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"  # present in every complete checkpoint
MODEL_FILE = "diffusion_pytorch_model.safetensors"  # the full weights: a step folder loads with WanDiT.from_pretrained
EMA_FILE = "ema.safetensors"  # the EMA of the weights, same keys
CONFIG_FILE = "config.json"  # the DiT's config (official key names)
SHARDED_DIR = "sharded"  # multi-process runs: the torch.distributed.checkpoint folder
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
    tmp = _begin(Path(root), step)
    _write_files(tmp, files)
    return _commit(Path(root), tmp, step, keep_last)


def save_sharded_checkpoint(root: str | Path, step: int, sharded: Mapping[str, Any], files: Mapping[str, Any] | None,
                            keep_last: int | None = None) -> Path:
    """Collective: every rank of the default process group calls it. ``sharded`` (state dicts as
    ``get_model_state_dict`` / ``get_optimizer_state_dict`` give them) goes to ``<folder>/sharded`` through
    ``torch.distributed.checkpoint``, each rank its shards; rank 0 writes ``files`` as :func:`save_checkpoint` does
    (other ranks pass None) and, once every rank is done, renames the folder into place."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    root, main = Path(root), dist.get_rank() == 0
    assert not main or STATE_FILE in files, f"a checkpoint needs its {STATE_FILE}"
    name = [str(_begin(root, step)) if main else None]
    dist.broadcast_object_list(name, src=0)  # one temporary folder for all ranks (a shared filesystem)
    tmp = Path(name[0])
    dcp.save(dict(sharded), checkpoint_id=str(tmp / SHARDED_DIR))  # files are synced as they are written
    if main:
        _write_files(tmp, files)
        _fsync(tmp / SHARDED_DIR)
    dist.barrier()  # every rank's shards are on disk before the folder becomes a checkpoint
    if main:
        _commit(root, tmp, step, keep_last)
    dist.barrier()  # ... and no rank goes on before it is in place
    return root / checkpoint_name(step)


def _begin(root: Path, step: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{_TMP_PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _write_files(tmp: Path, files: Mapping[str, Any]) -> None:
    # The state file goes last: a folder holding it is complete even if the rename below was not atomic.
    for name in sorted(files, key=lambda n: n == STATE_FILE):
        _write_file(tmp / name, files[name])


def _commit(root: Path, tmp: Path, step: int, keep_last: int | None) -> Path:
    _fsync(tmp)
    final = root / checkpoint_name(step)
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


# ------------------------------------------------------------------------------------------ release export


def read_sharded(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The whole tensors saved under ``prefix`` ("model", "ema") in a ``sharded/`` folder, read in this process
    (no process group; the world size that wrote it does not matter). Keys lose the prefix."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path, head = Path(path), prefix + "."
    saved = sharded_metadata(path)
    out = {key: torch.empty(meta.size, dtype=meta.properties.dtype) for key, meta in saved.items()
           if key.startswith(head) and isinstance(meta, TensorStorageMetadata)}
    if out:
        load_sharded(out, path, single_process=True)
    return {key[len(head):]: value for key, value in out.items()}


def sharded_metadata(path: str | Path) -> dict[str, Any]:
    """Flattened key (``model.blocks.0.self_attn.q.weight``, ``ema...``, ``optimizer...``) -> its metadata (size,
    dtype) of a ``sharded/`` folder."""
    import torch.distributed.checkpoint as dcp

    try:
        return dict(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    except (OSError, RuntimeError, ValueError, EOFError) as err:
        raise CheckpointCorrupt(f"{path} cannot be read as a distributed checkpoint ({type(err).__name__}); the "
                                "checkpoint is damaged — use an earlier one.") from None


def load_sharded(state: dict[str, Any], path: str | Path, single_process: bool) -> None:
    """``torch.distributed.checkpoint.load`` of ``state`` (in place) from a ``sharded/`` folder; collective unless
    ``single_process`` (then no process group is used, whatever world size wrote it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():
            # DCP warns whenever it reads without a process group; here that is the intent.
            warnings.filterwarnings("ignore", message="torch.distributed is .* single process")
            dcp.load(state, checkpoint_id=str(path), no_dist=single_process)
    except (CheckpointException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointCorrupt(f"{path} cannot be read ({first[:300]}); the checkpoint is damaged or incomplete — "
                                "use an earlier one.") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A step folder as given, or the newest one in a run's output folder."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"{path} is neither a checkpoint folder (with {STATE_FILE}) nor a run folder holding one; "
                         "give a step-XXXXXXXX folder or the run's output_dir.")
    return latest


def checkpoint_weights(path: str | Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The full DiT state dict (official keys) of a training checkpoint of any world size: its EMA or its
    trained weights (``weights`` "ema" / "model"). ``path``: a step folder or a run folder (its newest)."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be ema or model; got {weights!r}.")
    folder = resolve_checkpoint(path)
    if read_file(folder / STATE_FILE).get("lora"):
        raise ValueError(f"{folder} is a LoRA checkpoint: its adapter is lora.safetensors (diffusers keys) or "
                         "lora_official.safetensors; export works on full fine-tunes.")
    if (folder / SHARDED_DIR).is_dir():
        tensors = read_sharded(folder / SHARDED_DIR, weights)
    else:
        file = folder / (EMA_FILE if weights == "ema" else MODEL_FILE)
        tensors = read_file(file) if file.is_file() else {}
    if not tensors:
        raise ValueError(f"{folder} holds no {weights} weights (the EMA exists when ema.decay > 0); export "
                         f"weights={'model' if weights == 'ema' else 'ema'} instead.")
    return tensors


def _checkpoint_config(folder: Path) -> dict:
    """The DiT config.json of a resolved checkpoint folder."""
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointCorrupt(f"{folder / CONFIG_FILE} is missing; the checkpoint is incomplete.")
    return read_file(folder / CONFIG_FILE)


def checkpoint_dit(path: str | Path, weights: str = "ema"):
    """The :class:`~openwan.models.WanDiT` of a training checkpoint (a step or run folder, any world size), built
    from the checkpoint's own config.json (so it loads after presets change) with its EMA or trained weights."""
    from openwan.models import WanDiT

    folder = resolve_checkpoint(path)
    dit = WanDiT.from_config(_checkpoint_config(folder))
    dit.load_state_dict(checkpoint_weights(folder, weights), strict=True)
    return dit.eval()


def export_dit(checkpoint: str | Path, out: str | Path, weights: str = "ema",
               dtype: torch.dtype | None = None) -> Path:
    """Write a training checkpoint (one process or sharded, any world size; a step or run folder) as a release
    DiT: ``out/diffusion_pytorch_model.safetensors`` with the official keys and ``out/config.json`` — or, when
    ``out`` ends in .safetensors, that file with config.json beside it. ``WanDiT.from_pretrained`` and
    ``openwan.checkpoints.loaders.load_dit`` load either. ``dtype`` casts floating-point tensors. Returns the file."""
    from openwan.fileio import atomic_write

    folder = resolve_checkpoint(checkpoint)
    tensors = checkpoint_weights(folder, weights)
    config = _checkpoint_config(folder)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    out = Path(out)
    file = out if out.suffix == ".safetensors" else out / MODEL_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                             metadata={"format": "pt"}))
    atomic_write(file.parent / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=1) + "\n"))
    return file
