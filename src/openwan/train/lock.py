"""One run per output folder: a lock file that a second run on the same folder refuses to pass while the first lives.

``run.lock`` in the output folder holds the owner's pid and host. It appears atomically, whole; a lock
whose process is gone (killed, crashed) is taken over with one log line, so a run SIGKILLed mid-training resumes
without a manual step. A lock written on another host cannot be checked and is respected. Within one process the
lock is re-entrant (a VAE stage holds it around training and export, the trainer's ``fit`` inside it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("openwan.train")

LOCK_FILE = "run.lock"

_held: dict[Path, int] = {}  # lock files this process holds -> how many times it acquired each


class RunLock:
    """``with RunLock(folder):`` — hold ``folder``'s run lock for the block (see the module doc)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = (self.folder / LOCK_FILE).absolute()

    def acquire(self) -> None:
        """Take the lock; ValueError naming the folder and the live owner's pid if another run holds it."""
        if self.path in _held:
            _held[self.path] += 1
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        # Written whole beside it, then linked into place: the lock never exists half written, and link fails
        # when the name is taken (an atomic create-if-absent).
        mine = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}")
        mine.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        try:
            while True:
                try:
                    os.link(mine, self.path)
                    break
                except FileExistsError:
                    self._refuse_or_clear()
        finally:
            mine.unlink(missing_ok=True)
        _held[self.path] = 1

    def release(self) -> None:
        count = _held.get(self.path, 0)
        if count > 1:
            _held[self.path] = count - 1
            return
        _held.pop(self.path, None)
        if count and _owner(self.path).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def _refuse_or_clear(self) -> None:
        owner = _owner(self.path)
        pid, host = owner.get("pid"), owner.get("host")
        if host not in (None, socket.gethostname()):
            raise ValueError(f"{self.folder} is in use by a training run on host {host} (pid {pid}); wait for it to "
                             f"end, choose another output folder, or delete {self.path} if that run is gone.")
        if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
            raise ValueError(f"{self.folder} is in use by another training run (pid {pid}); wait for it to end or "
                             "choose another output folder.")
        log.warning("taking over the run lock of %s: its process %s is gone", self.folder, pid)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _owner(path: Path) -> dict:
    """The pid and host in a lock file ({} for a damaged one: treated as a dead owner's)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


__all__ = ["LOCK_FILE", "RunLock"]
