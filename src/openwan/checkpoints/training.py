"""Reading the checkpoints the trainers write: one folder per step, ``step-00001000/``, in a run's output folder.

A complete folder holds ``trainer_state.json`` (written last); tensors are ``.safetensors`` files, objects of
tensors and plain values (optimizer states) ``.pt`` files read with ``torch.load(weights_only=True)``, plain state
``.json``. A multi-process DiT run adds ``sharded/``: model, optimizer and EMA as ``torch.distributed.checkpoint``
wrote them, loadable at any world size (one process needs no process group). The writers are in
:mod:`openwan.train.checkpoint`.

:func:`read_checkpoint_dit` returns a DiT checkpoint's (config, state dict), for ``WanDiT.from_config`` to build.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from openwan.checkpoints.io import torch_load
from openwan.configs import CheckpointError

STATE_FILE = "trainer_state.json"  # present in every complete checkpoint
MODEL_FILE = "diffusion_pytorch_model.safetensors"  # the DiT's full weights: a step folder loads with from_pretrained
EMA_FILE = "ema.safetensors"  # the EMA of the weights, same keys
CONFIG_FILE = "config.json"  # the DiT's config (official key names)
SHARDED_DIR = "sharded"  # multi-process runs: the torch.distributed.checkpoint folder
CHECKSUM_FILE = "checksums.json"  # size and sha256 of every other file of the folder (sharded/ included)
STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointCorrupt(CheckpointError):
    """A checkpoint folder cannot be read back; the message names the file."""

RESUME_EARLIER = "resume from an earlier checkpoint"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, folder), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and entry.is_dir() and (entry / STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


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


def read_file(path: str | Path) -> Any:
    """Read one checkpoint file back (tensors never unpickle code: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointCorrupt(f"{path} is missing; the checkpoint is incomplete — resume from an earlier one.")
    if path.suffix == ".pt":
        return torch_load(path, fix=RESUME_EARLIER, error=CheckpointCorrupt)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        if path.suffix == ".json":
            return json.loads(path.read_bytes().decode("utf-8"))
    except Exception as err:  # noqa: BLE001 — any failure on a damaged file means the same
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointCorrupt(f"{path} cannot be read ({detail[:200]}); the checkpoint is damaged — "
                                f"{RESUME_EARLIER}.") from None
    raise CheckpointCorrupt(f"{path} is not a checkpoint file openwan writes (.safetensors, .pt or .json).")


# ------------------------------------------------------------------------------------------ verification

# What each trainer's resume reads from trainer_state.json (the VAE trainer's folders say kind "vae").
_STATE_KEYS = {"vae": ("stage", "step", "batches_seen", "data_state", "model_kind", "model_config", "train_config"),
               "dit": ("step", "rng")}


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def folder_checksums(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Relative path (``/``-separated) -> {"size", "sha256"} of every file under ``folder`` but checksums.json."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != CHECKSUM_FILE)
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}


def state_problem(state: Any) -> str | None:
    """Why a trainer_state.json's content cannot resume a run (None: it can)."""
    if not isinstance(state, dict):
        return f"{STATE_FILE} holds a {type(state).__name__}, not an object"
    if not state:
        return f"{STATE_FILE} is empty ({{}})"
    missing = [key for key in _STATE_KEYS["vae" if state.get("kind") == "vae" else "dit"] if key not in state]
    if missing:
        return f"{STATE_FILE} lacks {', '.join(missing)}"
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        return f"{STATE_FILE} holds step {state['step']!r}, not a count of steps"
    return None


def read_state(folder: str | Path) -> dict[str, Any]:
    """A step folder's trainer_state.json, refused (:class:`CheckpointCorrupt`) when a resume could not use it."""
    path = Path(folder) / STATE_FILE
    state = read_file(path)
    problem = state_problem(state)
    if problem is not None:
        raise CheckpointCorrupt(f"{path} cannot resume a run ({problem.removeprefix(STATE_FILE + ' ')}); the "
                                "checkpoint is damaged — resume from an earlier one.")
    return state


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a step folder fails verification, in a few words naming the file (None: it verifies). A folder with
    checksums.json is checked against it (every file present, of its size and sha256); one written before
    checksums existed is verified by reading each of its files. Either way trainer_state.json must resume a run."""
    folder = Path(folder)
    try:
        state = read_file(folder / STATE_FILE)
    except CheckpointCorrupt:
        return f"{STATE_FILE} cannot be read"
    problem = state_problem(state)
    if problem is not None:
        return problem
    if not (folder / CHECKSUM_FILE).is_file():
        return _read_problem(folder)
    try:
        recorded = read_file(folder / CHECKSUM_FILE)["files"]
        entries = [(name, int(entry["size"]), str(entry["sha256"])) for name, entry in recorded.items()]
    except (CheckpointCorrupt, KeyError, TypeError, ValueError, AttributeError):
        return f"{CHECKSUM_FILE} cannot be read"
    for name, size, _ in entries:  # sizes first: a missing or truncated file is found without hashing the rest
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, {size} when written"
    for name, _, digest in entries:
        if file_sha256(folder / name) != digest:
            return f"{name} does not match its checksum"
    return None


def _read_problem(folder: Path) -> str | None:
    """A folder without checksums: every file must read back."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".safetensors", ".pt", ".json"):
            try:
                read_file(path)
            except CheckpointCorrupt:
                return f"{path.name} cannot be read"
    if (folder / SHARDED_DIR).is_dir():
        try:
            sharded_metadata(folder / SHARDED_DIR)
        except CheckpointCorrupt:
            return f"{SHARDED_DIR}/ cannot be read"
    return None


# ------------------------------------------------------------------------------------------ sharded folders


def sharded_metadata(path: str | Path) -> dict[str, Any]:
    """Flattened key (``model.blocks.0.self_attn.q.weight``, ``ema...``, ``optimizer...``) -> its metadata (size,
    dtype) of a ``sharded/`` folder."""
    try:
        return dict(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    except (OSError, RuntimeError, ValueError, EOFError) as err:
        raise CheckpointCorrupt(f"{path} cannot be read as a distributed checkpoint ({type(err).__name__}); the "
                                "checkpoint is damaged — use an earlier one.") from None


def load_sharded(state: dict[str, Any], path: str | Path, single_process: bool) -> None:
    """``torch.distributed.checkpoint.load`` of ``state`` (in place) from a ``sharded/`` folder; collective unless
    ``single_process`` (then no process group is used, whatever world size wrote it)."""
    try:
        with warnings.catch_warnings():
            # DCP warns whenever it reads without a process group; here that is the intent.
            warnings.filterwarnings("ignore", message="torch.distributed is .* single process")
            dcp.load(state, checkpoint_id=str(path), no_dist=single_process)
    except (CheckpointException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointCorrupt(f"{path} cannot be read ({first[:300]}); the checkpoint is damaged or incomplete — "
                                "use an earlier one.") from None


def read_sharded(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The whole tensors saved under ``prefix`` ("model", "ema") in a ``sharded/`` folder, read in this process
    (no process group; the world size that wrote it does not matter). Keys lose the prefix."""
    path, head = Path(path), prefix + "."
    saved = sharded_metadata(path)
    out = {key: torch.empty(meta.size, dtype=meta.properties.dtype) for key, meta in saved.items()
           if key.startswith(head) and isinstance(meta, TensorStorageMetadata)}
    if out:
        load_sharded(out, path, single_process=True)
    return {key[len(head):]: value for key, value in out.items()}


# ------------------------------------------------------------------------------------------ a DiT checkpoint


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


def checkpoint_config(path: str | Path) -> dict:
    """The DiT config.json (official keys) of a training checkpoint (a step or run folder)."""
    folder = resolve_checkpoint(path)
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointCorrupt(f"{folder / CONFIG_FILE} is missing; the checkpoint is incomplete.")
    return read_file(folder / CONFIG_FILE)


def read_checkpoint_dit(path: str | Path, weights: str = "ema") -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, full state dict) of a DiT training checkpoint (a step or run folder, any world size): its
    EMA or trained weights, for ``WanDiT.from_config(config)`` + ``load_state_dict``."""
    folder = resolve_checkpoint(path)
    return checkpoint_config(folder), checkpoint_weights(folder, weights)


__all__ = [
    "CHECKSUM_FILE",
    "CONFIG_FILE",
    "EMA_FILE",
    "MODEL_FILE",
    "SHARDED_DIR",
    "STATE_FILE",
    "CheckpointCorrupt",
    "checkpoint_config",
    "checkpoint_name",
    "checkpoint_problem",
    "checkpoint_weights",
    "file_sha256",
    "folder_checksums",
    "latest_checkpoint",
    "list_checkpoints",
    "load_sharded",
    "read_checkpoint_dit",
    "read_file",
    "read_sharded",
    "read_state",
    "resolve_checkpoint",
    "sharded_metadata",
    "state_problem",
]
