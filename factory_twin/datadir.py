"""One demo per data directory: an OS file lock held for the whole run, and what the holder says about itself.

Two ``factory-twin demo`` runs on one directory would share its SQLite file and agent outbox and break each other
(and ``--fresh`` would delete the other's data under it). The first takes ``<data dir>/.demo.lock`` with ``flock``
(the OS frees it when the process ends, however it ends) and writes its pid and dashboard address into it; a
second run finds it held and refuses, naming the holder and how to run beside it::

    var/demo is in use by another demo (pid 4242, dashboard http://127.0.0.1:8000/): stop that one,
    or give this one its own directory: factory-twin demo --data-dir var/demo-2
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

LOCK_NAME = ".demo.lock"


class DataDirBusy(Exception):
    """Another run holds the data directory."""


class DataDirLock:
    """The exclusive use of a data directory for one run; ``release`` (or the process ending) frees it.

    Args:
        path: the data directory (created if missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> DataDirLock:
        """Take the directory; DataDirBusy saying who holds it and what to do otherwise."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = (self.path / LOCK_NAME).open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(handle)
            handle.close()
            raise DataDirBusy(_busy_message(self.path, holder)) from None
        self._handle = handle
        self.note(pid=os.getpid())
        return self

    def note(self, **facts: Any) -> None:
        """Write facts about this run into the lock file (read by a second run to name the holder)."""
        if self._handle is None:
            return
        current = _read(self._handle)
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps(current | facts))
        self._handle.flush()

    def clear(self) -> None:
        """Empty the directory (``--fresh``), keeping the lock: nobody can take it in between."""
        assert self._handle is not None, "clear() needs the lock"
        for child in self.path.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def release(self) -> None:
        """Let go of the directory."""
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()
            handle.close()  # closing frees the flock

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(handle: IO[str]) -> dict[str, Any]:
    try:
        handle.seek(0)
        data = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _busy_message(path: Path, holder: dict[str, Any]) -> str:
    who = [f"pid {holder['pid']}"] if holder.get("pid") else []
    if holder.get("dashboard"):
        who.append(f"dashboard {holder['dashboard']}")
    named = f" ({', '.join(who)})" if who else ""
    return (
        f"{path} is in use by another demo{named}: stop that one, or give this one its own directory: "
        f"factory-twin demo --data-dir {path}-2"
    )
