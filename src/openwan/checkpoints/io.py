"""Reading weight files safely.

Every reader here refuses to execute pickled code (``torch.load(weights_only=True)``) and turns each way a
file can be wrong — absent, truncated, not weights at all, holding NaN or Inf — into one :class:`CheckpointError`
whose message names the file and says what to do. (Tensors that do not fit a network are caught where the network
takes them: ``openwan.models.loading.load_strict``.)

The scan for non-finite values costs one ``isfinite().all()`` per floating-point tensor; ``check_finite=False`` on
a reader, or :func:`finite_check` (``False``) around code that loads, skips it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from openwan.configs import CheckpointError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
DOWNLOAD_AGAIN = "download it again"

_check_finite: contextvars.ContextVar[bool] = contextvars.ContextVar("openwan_check_finite", default=True)


@contextlib.contextmanager
def finite_check(enabled: bool) -> Iterator[None]:
    """Whether the readers called inside scan tensors for NaN/Inf (a reader's ``check_finite`` argument wins)."""
    token = _check_finite.set(enabled)
    try:
        yield
    finally:
        _check_finite.reset(token)


def refuse_non_finite(state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """CheckpointError naming ``source`` and the first tensor holding NaN or Inf."""
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{source} holds NaN or Inf values in tensor {name!r}; the file is damaged or its training diverged — "
                "use another checkpoint (or skip this check with --no-weight-check / check_finite=False)."
            )


@contextlib.contextmanager
def blame(source: str | Path) -> Iterator[None]:
    """A ValueError raised inside (a config field, a missing tensor) becomes a CheckpointError naming ``source``."""
    try:
        yield
    except CheckpointError:
        raise
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None


def read_json_config(path: str | Path) -> dict[str, Any]:
    """The JSON object in a config file; CheckpointError naming the file when it is unreadable or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is not a readable JSON config ({detail[:200]}); restore it from the release.") \
            from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; restore it from the release.")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 — any failure on bytes that are not a safetensors file means the same
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({detail[:200]}); it is probably truncated or corrupt — "
            f"{DOWNLOAD_AGAIN}."
        ) from None


def _first_sentence(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line.split(". ")[0].rstrip(".")[:200]


def _unpickler_detail(err: Exception) -> tuple[bool, str]:
    """(whether the file holds objects other than tensors, a short detail) from a ``torch.load`` failure. torch's
    advice to retry with weights_only=False is left out: that would run the file's code."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return True, f"it names {found.group(1)}"
    if "WeightsUnpickler error:" in text:
        return False, _first_sentence(text.split("WeightsUnpickler error:", 1)[1]) or "not a pickle of tensors"
    first = _first_sentence(text)
    if len(first) < 12 or "weights_only" in first:  # a bare KeyError('101') or IndexError says nothing to a user
        return False, type(err).__name__ + (f" {first}" if first and "weights_only" not in first else "")
    return False, first


def torch_load(path: str | Path, fix: str = DOWNLOAD_AGAIN, error: type[CheckpointError] = CheckpointError) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one ``error`` naming the file, ending in
    ``fix`` (what to do)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # noise before the refusal
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as err:  # noqa: BLE001 — the weights-only unpickler raises many types on bytes it cannot read
        objects, detail = _unpickler_detail(err)
    if objects:
        raise error(f"{path} holds Python objects other than tensors ({detail}), so it was not loaded (no pickled "
                    f"code is ever run); give a weights-only .pth or a .safetensors file, or {fix}.")
    raise error(f"{path} is not a readable PyTorch file ({detail}): it is empty, truncated or corrupt, or not a "
                f"weights file; {fix}.")


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    obj = torch_load(path)
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


def _read_index(index: Path, scan: bool) -> dict[str, torch.Tensor]:
    weight_map = read_json_config(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index} is not a valid shard index (no 'weight_map' of names to shard files); "
                              f"{DOWNLOAD_AGAIN}.")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise CheckpointError(
            f"{index} lists shard files that are not in {index.parent}: {', '.join(missing)}; "
            "download every shard of the release."
        )
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(_read_any(index.parent / shard, scan))
    return state


def read_state_dict(path: str | Path, check_finite: bool | None = None) -> dict[str, torch.Tensor]:
    """All tensors of one weights file, a shard index (``*.index.json``), or a list of shard files.

    Tensors stay in the file's dtype on the CPU (safetensors and zip-format .pth are memory-mapped). A tensor
    holding NaN or Inf is refused unless ``check_finite`` is False (None: as :func:`finite_check` set, else on).
    """
    if check_finite is None:
        check_finite = _check_finite.get()
    return _read_any(Path(path), check_finite)


def _read_any(path: Path, scan: bool) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; check the path to the weights.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the weights file inside it (or use from_pretrained).")
    name = path.name
    if name.endswith(".index.json"):
        return _read_index(path, scan)
    if name.endswith(".safetensors"):
        state = _read_safetensors(path)
    elif name.endswith((".pth", ".pt", ".bin", ".ckpt")):
        state = _read_torch(path)
    else:
        raise CheckpointError(
            f"{path} has an unknown weights format; use .safetensors, .pth/.pt/.bin or a *.index.json shard index."
        )
    if scan:
        refuse_non_finite(state, path)
    return state


def read_state_dicts(paths: Iterable[str | Path], check_finite: bool | None = None) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for p in paths:
        state.update(read_state_dict(p, check_finite))
    return state


__all__ = ["CheckpointError", "WEIGHT_SUFFIXES", "blame", "finite_check", "read_json_config",
           "read_state_dict", "read_state_dicts",
           "refuse_non_finite", "torch_load"]
