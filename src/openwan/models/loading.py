"""How the networks take weights from files without reading files themselves.

Reading a checkpoint — finding a release's files, telling the official layout from the diffusers one, renaming
keys, inferring the architecture from tensor shapes — is :mod:`openwan.checkpoints`' job, and the two packages
do not import each other. ``checkpoints`` answers ``read(kind, path) -> (config, state dict, source)``; the
package root (``openwan/__init__.py``) hands that function to :func:`set_weights_reader`, and every
``from_pretrained`` here asks it for its kind. Python runs the package root before any ``openwan.*`` module, so
``from openwan.models import WanDiT; WanDiT.from_pretrained(path)`` always finds the reader set.

What is left here is the building half: a network made on the meta device takes the file's tensors strictly
(:func:`load_strict`), so a 14B model never sits in memory twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from openwan.configs import CheckpointError

# kind ("dit", "vae", "umt5", "clip"), path, check_finite -> (config, state dict, the file read)
WeightsReader = Callable[[str, "str | Path", "bool | None"], tuple[Any, dict[str, torch.Tensor], Path]]
_reader: WeightsReader | None = None


def set_weights_reader(reader: WeightsReader) -> None:
    """Use ``reader`` for every ``from_pretrained`` (``openwan/__init__.py`` sets ``openwan.checkpoints.read``)."""
    global _reader
    _reader = reader


def read_weights(kind: str, path: str | Path,
                 check_finite: bool | None = None) -> tuple[Any, dict[str, torch.Tensor], Path]:
    """(config, state dict, source) of the ``kind`` network stored at ``path``, through the reader set. Tensors
    holding NaN or Inf are refused unless ``check_finite`` is False (None: the reader's default, which
    ``openwan.checkpoints.finite_check`` sets)."""
    if _reader is None:  # internal invariant: importing any openwan module sets it
        raise RuntimeError("no weights reader is set; import openwan (its __init__ sets openwan.checkpoints.read).")
    return _reader(kind, path, check_finite)


def load_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | Path,
    *,
    dtype: torch.dtype | None = None,
    assign: bool = True,
) -> torch.nn.Module:
    """Load ``state_dict`` into ``module`` requiring exactly its keys and shapes.

    With ``assign=True`` (the default) a module built on the meta device takes the file's tensors as its
    parameters, so a model never sits in memory twice. ``dtype`` converts floating-point tensors on the way.
    Buffers that are not persistent (RoPE tables and the like) are left as the module built them.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrong)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise CheckpointError(
            f"{source} does not match {type(module).__name__} — " + "; ".join(parts)
            + ". Check that the file belongs to this model and is complete."
        )
    converted = {}
    for k, v in state_dict.items():
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        converted[k] = v
    module.load_state_dict(converted, strict=True, assign=assign)
    return module


def finish_loading(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``model`` (just loaded from the meta device) moved to ``device`` in eval mode."""
    leftover = [n for n, b in model.named_buffers() if b.is_meta]
    if leftover:  # internal invariant: models keep no state outside their checkpoint keys
        raise RuntimeError(f"{type(model).__name__} has buffers not restored by loading: {leftover[:4]}")
    return model.to(device).eval()


__all__ = ["WeightsReader", "set_weights_reader", "read_weights", "load_strict", "finish_loading"]
