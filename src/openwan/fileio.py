"""Atomic file writes, shared by every writer in openwan (checkpoints, manifests, caches, reports, media)."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A crash or a kill at any point leaves the old file or the new one, never a partial file. ``suffix`` lets
    writers that infer the format from the name (Pillow, PyAV) see the real extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write`. Saved through a file object, the archive's inner folder is
    "archive/" rather than the temporary file's random name, so the same tensors give the same bytes."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


@functools.cache
def default_mode() -> int:
    """The permissions a plainly created file gets here (0o666 less the umask; read once, as reading it means
    setting it); temporary files start at 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def publish(tmp: str | Path, path: str | Path) -> None:
    """Give a finished temporary file ordinary permissions and rename it over ``path`` (atomic on one filesystem)."""
    os.chmod(tmp, default_mode())
    os.replace(tmp, path)
