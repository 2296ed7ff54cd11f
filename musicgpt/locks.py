"""One writer per folder: `train.py` and `preprocess` hold a lock on their `--out`.

The lock is `flock` on `FOLDER/.musicgpt.lock`, which names its holder (pid, command, start
time). The kernel drops a flock when its holder dies, so the lock of a killed process is taken
over by the next one at once, whatever the file still says; a live holder makes a second writer
fail at once with `FolderBusyError` naming it. Nested locks of one folder in one process (a run
whose --data-dir is its --out) are one lock. Imports nothing heavy.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .files import writing

LOCK_NAME = ".musicgpt.lock"
_held: dict[str, int] = {}  # real path of a folder this process holds -> nesting depth


class FolderBusyError(ValueError):
    """Another live process writes to the folder; the message names it."""


@contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[None]:
    """Hold `folder`'s lock (creating the folder) for the block; FolderBusyError if held."""
    folder = Path(folder)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _acquire(folder / LOCK_NAME, command)
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        _release(folder / LOCK_NAME, fd)


def _acquire(path: Path, command: str) -> int:
    """An open, flocked descriptor of `path` holding our name; retried when the file was
    replaced between open and flock (a holder removing it as it let go)."""
    for _ in range(100):
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusyError(f"{path.parent} is in use by {holder}; wait for it to "
                                  f"finish or stop it, or give another --out") from None
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            os.write(fd, f"pid {os.getpid()} ({command}, since {stamp})".encode())
            return fd
        os.close(fd)
    raise FolderBusyError(f"{path.parent}: cannot take its lock {path}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 500, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process"


def _release(path: Path, fd: int) -> None:
    """Remove the lock file, then let go (in this order, so no one locks a removed file and
    believes they hold the folder: `_acquire` checks the file is still the one at `path`)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
    os.close(fd)
