"""How a command ends: a user's error as one line on stderr and exit status 2 (`fail`), and a
stdout whose write errors are WriteErrors (`guarded_stdout`), so a full disk ends in one line too.

Shared by the CLI's commands (cli.py) and train.py (cli_train.py); no torch.
"""

from __future__ import annotations

import contextlib
import os
import sys

from .files import WriteError


def fail(message: str) -> int:
    print(f"musicgpt: error: {message}", file=sys.stderr)
    return 2


class _GuardedStdout:
    """sys.stdout whose write errors (a full disk under a redirected stdout) are WriteErrors,
    so they end in one line; what could not be written then goes to /dev/null, so that Python
    does not fail again flushing it at exit."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except OSError as exc:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            raise WriteError("standard output", exc) from exc

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def guarded_stdout():
    real = sys.stdout
    sys.stdout = _GuardedStdout(real)
    try:
        yield
    finally:
        sys.stdout = real
