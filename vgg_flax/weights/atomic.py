"""Atomic file writes: the whole new file appears under its name, or nothing changes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO


def check_output(path: str | os.PathLike, *, new: bool = False) -> str:
    """Refuse, before any work, an output whose folder is missing or not writable.

    `new`: `path` must not exist yet (a checkpoint directory). Returns the absolute path.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise ValueError(
            f"cannot write {path}: the folder {folder} does not exist; create it first"
        )
    if not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write {path}: the folder {folder} is not writable")
    if new and os.path.exists(path):
        raise ValueError(f"{path} already exists; choose a new path or remove the old one")
    return path


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; rename it onto `path` on success.

    On any error (or KeyboardInterrupt) the temporary file is removed and `path` keeps what it
    held before, so a reader never sees a half-written file.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise ValueError(
            f"cannot write {path}: the folder {folder} does not exist; create it first"
        )
    handle, temp = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".part"
    )
    try:
        # mkstemp creates the file 0600; the finished file gets the usual umask-based mode.
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
