"""Writing files safely: all-or-nothing replaces, the usual permissions, one-line errors.

Every file musicgpt writes goes to `NAME.tmp` first and replaces `NAME` by a rename, so a full
or read-only disk, or a kill, never leaves half a file under the real name; a failed write
removes its `.tmp` and raises `WriteError`, whose message names the path ("cannot write PATH:
No space left on device"). Files get the mode the umask gives (0644 usually), also those that a
library wrote with its own mode (safetensors writes 0600).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriteError(OSError):
    """Writing `filename` failed; str() is one line naming the path and the reason."""

    def __init__(self, path: str | Path, exc: OSError):
        super().__init__(exc.errno, exc.strerror or str(exc), str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def tmp_path(path: str | Path) -> Path:
    """The sibling a file or folder is written to before it replaces `path`."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def remove(path: Path) -> None:
    """Delete a file or folder if it is there; never raises (used while cleaning up)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def writing(path: str | Path, *leftovers: Path) -> Iterator[None]:
    """Turn an OSError inside the block (or safetensors' own error, which a full disk raises
    and which is not an OSError) into a WriteError naming `path`, after removing the
    `leftovers` (the `.tmp` files or folders the block was writing)."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as exc:
        for leftover in leftovers:
            remove(leftover)
        if isinstance(exc, WriteError):
            raise
        raise WriteError(path, _as_os_error(exc)) from exc


_RUST_IO_ERROR = re.compile(r'code: (\d+).*?message: "([^"]*)"')


def _as_os_error(exc: Exception) -> OSError:
    """An OSError for `exc`; safetensors' errors carry the OS error inside their text
    ('IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')."""
    if isinstance(exc, OSError):
        return exc
    found = _RUST_IO_ERROR.search(str(exc))
    if found:
        return OSError(int(found.group(1)), found.group(2))
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return OSError(errno.EIO, lines[0])


def umask() -> int:
    """The process umask, read without changing it where the system says it (Linux), as
    os.umask would briefly change it for every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(path: str | Path) -> None:
    """Give a file we wrote the usual mode (0666 less the umask), as `open` would have."""
    os.chmod(path, 0o666 & ~umask())
