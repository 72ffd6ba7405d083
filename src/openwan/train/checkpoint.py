"""Writing training checkpoints, for both trainers: one folder per step, written under a temporary name and
renamed when complete.

A folder ``step-00001000/`` appears only once every file in it is written and synced, so a process killed at
any moment leaves either the new checkpoint or none (plus a ``.tmp-step-*`` folder that the next start
removes); the previous checkpoint is never touched until the new one is in place. Old checkpoints beyond
``keep_last`` are first renamed away, then deleted.

Files are written by suffix: ``.safetensors`` (tensors), ``.pt`` (a tensors-and-plain-values object such as
an optimizer state, read back with ``torch.load(weights_only=True)``), ``.json`` (plain state). Every folder carries
``checksums.json``: the size and sha256 of each of its other files (those under ``sharded/`` too), written before
trainer_state.json. A resume verifies the newest folder against it and falls back to the newest one that verifies
(:func:`resume_folder`).

A multi-process run (``save_sharded_checkpoint``) adds ``sharded/``: model, optimizer and EMA as
``torch.distributed.checkpoint`` writes them, each rank its own shards, loadable at any world size. Rank 0 writes
the plain files next to it and renames the folder after a barrier. Reading them back is
:mod:`openwan.checkpoints.training` (re-exported here); ``export_dit`` turns either kind into one release-layout DiT
(official keys + config.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from openwan.checkpoints.training import (
    CHECKSUM_FILE,
    CONFIG_FILE,
    EMA_FILE,
    MODEL_FILE,
    SHARDED_DIR,
    STATE_FILE,
    CheckpointCorrupt,
    checkpoint_config,
    checkpoint_name,
    checkpoint_problem,
    checkpoint_weights,
    folder_checksums,
    latest_checkpoint,
    list_checkpoints,
    load_sharded,
    read_checkpoint_dit,
    read_file,
    read_sharded,
    read_state,
    resolve_checkpoint,
    sharded_metadata,
)
from openwan.fileio import atomic_write
from openwan.models import WanDiT

log = logging.getLogger("openwan.train")

_TMP_PREFIX = ".tmp-step-"
_TRASH_PREFIX = ".trash-step-"


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
    root, main = Path(root), dist.get_rank() == 0
    assert not main or STATE_FILE in files, f"a checkpoint needs its {STATE_FILE}"
    name = [str(_begin(root, step)) if main else None]
    dist.broadcast_object_list(name, src=0)  # one temporary folder for all ranks (a shared filesystem)
    tmp = Path(name[0])
    dcp.save(dict(sharded), checkpoint_id=str(tmp / SHARDED_DIR))  # files are synced as they are written
    dist.barrier()  # every rank's shards are on disk before rank 0 takes their checksums
    if main:
        _fsync(tmp / SHARDED_DIR)
        _write_files(tmp, files)
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
    """``files`` into ``tmp`` (where sharded/ may already be), then checksums.json of all of them, then the state
    file: a folder holding it is complete even if the rename into place was not atomic."""
    for name in sorted(files):
        if name != STATE_FILE:
            _write_file(tmp / name, files[name])
    sums = folder_checksums(tmp)
    state = _json_text(files[STATE_FILE]).encode()
    sums[STATE_FILE] = {"size": len(state), "sha256": hashlib.sha256(state).hexdigest()}
    _write_file(tmp / CHECKSUM_FILE, {"algorithm": "sha256", "files": sums})
    _write_file(tmp / STATE_FILE, files[STATE_FILE])


def _commit(root: Path, tmp: Path, step: int, keep_last: int | None) -> Path:
    _fsync(tmp)
    final = root / checkpoint_name(step)
    if final.exists():  # the same step saved again (a resumed run): move the old one away first
        _discard(final)
    os.replace(tmp, final)
    _fsync(root)
    if keep_last is not None:
        # Folders of later steps (left by a run resumed from an earlier checkpoint) are replaced as the run gets
        # there; they must not count, or keeping the newest would delete the checkpoint just written.
        for _, old in [c for c in list_checkpoints(root) if c[0] <= step][:-keep_last]:
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
        path.write_text(_json_text(obj))
    else:
        raise AssertionError(f"no checkpoint writer for {path.name}")
    _fsync(path)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=1) + "\n"


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


def checkpoint_dit(path: str | Path, weights: str = "ema") -> WanDiT:
    """The :class:`~openwan.models.WanDiT` of a training checkpoint (a step or run folder, any world size), built
    from the checkpoint's own config.json (so it loads after presets change) with its EMA or trained weights."""
    config, state = read_checkpoint_dit(path, weights)
    dit = WanDiT.from_config(config)
    dit.load_state_dict(state, strict=True)
    return dit.eval()


def export_dit(checkpoint: str | Path, out: str | Path, weights: str = "ema",
               dtype: torch.dtype | None = None) -> Path:
    """Write a training checkpoint (one process or sharded, any world size; a step or run folder) as a release
    DiT: ``out/diffusion_pytorch_model.safetensors`` with the official keys and ``out/config.json`` — or, when
    ``out`` ends in .safetensors, that file with config.json beside it. ``WanDiT.from_pretrained`` loads either.
    ``dtype`` casts floating-point tensors. Returns the file."""
    folder = resolve_checkpoint(checkpoint)
    tensors = checkpoint_weights(folder, weights)
    config = checkpoint_config(folder)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    out = Path(out)
    file = out if out.suffix == ".safetensors" else out / MODEL_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                             metadata={"format": "pt"}))
    atomic_write(file.parent / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=1) + "\n"))
    return file


# ------------------------------------------------------------------------------------------ resume


def resume_folder(out: str | Path, resume: str) -> Path | None:
    """The checkpoint a run in ``out`` starts from: ``resume`` "auto" takes the newest that verifies
    (:func:`~openwan.checkpoints.training.checkpoint_problem`; None: a fresh run), "never" refuses a folder that
    already holds checkpoints, anything else names a step folder, which must verify."""
    out, found = Path(out), latest_checkpoint(out)
    if resume == "auto":
        return _newest_verified(out)
    if resume == "never":
        if found is not None:
            raise ValueError(f"{out} already holds checkpoints (latest {found.name}); resume to continue that run "
                             "(resume=auto, or --resume), or choose another output folder.")
        return None
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file():
        raise ValueError(f"resume={resume} is not a complete checkpoint folder (no {STATE_FILE}); give a "
                         "step-XXXXXXXX folder, or resume=auto.")
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise ValueError(f"resume={resume} fails verification ({problem}); give a checkpoint that verifies, or "
                         "resume=auto for the newest one that does.")
    return folder


def _newest_verified(out: Path) -> Path | None:
    """The newest checkpoint in ``out`` that verifies, with one log line for each newer one that does not."""
    found = list_checkpoints(out)
    bad: list[tuple[Path, str]] = []
    for _, folder in reversed(found):
        problem = checkpoint_problem(folder)
        if problem is None:
            for skipped, why in bad:
                log.warning("resume: %s fails verification (%s); resuming from %s instead", skipped, why, folder.name)
            return folder
        bad.append((folder, problem))
    if bad:
        newest, why = bad[0]
        raise ValueError(f"no checkpoint in {out} verifies (the newest, {newest.name}: {why}); remove the damaged "
                         "step folders to start afresh, or resume from a copy of the run.")
    return None


__all__ = [
    "CHECKSUM_FILE",
    "CONFIG_FILE",
    "EMA_FILE",
    "MODEL_FILE",
    "SHARDED_DIR",
    "STATE_FILE",
    "CheckpointCorrupt",
    "capture_rng",
    "checkpoint_config",
    "checkpoint_dit",
    "checkpoint_name",
    "checkpoint_problem",
    "checkpoint_weights",
    "export_dit",
    "latest_checkpoint",
    "list_checkpoints",
    "load_sharded",
    "read_checkpoint_dit",
    "read_file",
    "read_sharded",
    "read_state",
    "remove_stale",
    "restore_rng",
    "resolve_checkpoint",
    "resume_folder",
    "save_checkpoint",
    "save_sharded_checkpoint",
    "sharded_metadata",
]
