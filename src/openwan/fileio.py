"""Atomic file writes, shared by every writer in openwan (checkpoints, manifests, caches, reports, media).

A temporary file is named ``.NAME.~PID@HOST.XXXXXXXX.SUFFIX`` beside its target, so that a later write to the
same target can tell a killed writer's leftover (this host, dead process) from another writer's live file and
remove it. Temporary files are removed on any error, on SIGINT, and on SIGTERM while :func:`terminate_cleanly`
is in force (the CLI's commands install it); only SIGKILL can leave one, and the next write to the same path
removes it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

STALE_AGE_S = 24 * 3600  # a temporary file untouched this long is stale whoever wrote it (another host included)
_LIVE: dict[str, int] = {}  # temporary files being written -> the writer's pid (a forked child inherits the dict)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM under :func:`terminate_cleanly`, so writers unwind and clean up."""


@functools.cache
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files a killed writer left beside ``path``: this host's with a dead pid, any host's
    untouched for a day. Returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.~(\d+)@([0-9a-f]{{6}})\.")
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if not match:
            continue
        candidate = path.parent / name
        try:
            age = time.time() - candidate.stat().st_mtime
        except OSError:
            continue
        pid, host = int(match[1]), match[2]
        if (host == _host_tag() and pid != os.getpid() and not _alive(pid)) or age > STALE_AGE_S:
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def make_temp(path: str | Path, suffix: str = ".tmp") -> str:
    """Create an empty temporary file beside ``path`` (after removing stale ones) and track it until
    :func:`forget_temp`; the folder must exist."""
    path = Path(path)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.~{os.getpid()}@{_host_tag()}.", suffix=suffix,
                               dir=path.parent)
    os.close(fd)
    _LIVE[tmp] = os.getpid()
    return tmp


def forget_temp(tmp: str | Path, remove: bool = True) -> None:
    """Stop tracking ``tmp``, removing it unless it was published."""
    _LIVE.pop(str(tmp), None)
    if remove:
        Path(tmp).unlink(missing_ok=True)


@atexit.register
def _remove_live_temps() -> None:
    for tmp, pid in list(_LIVE.items()):
        if pid == os.getpid():  # never a parent's file from a forked child
            forget_temp(tmp)


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While in force, SIGTERM raises :class:`Terminated` in the main thread (as SIGINT raises
    KeyboardInterrupt), so every writer's cleanup runs; outside the main thread it does nothing."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A crash or a kill at any point leaves the old file or the new one, never a partial file. ``suffix`` lets
    writers that infer the format from the name (Pillow, PyAV) see the real extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp(path, suffix)
    published = False
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        publish(tmp, path)
        published = True
    finally:
        forget_temp(tmp, remove=not published)


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
