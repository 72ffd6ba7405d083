"""Atomic file writes, shared by every writer in openwan (checkpoints, manifests, caches, reports, media)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
