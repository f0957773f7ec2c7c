"""Atomic file writes: readers see the old file or the new one, never a part of it.

Every cache, checkpoint and result the project writes goes through :func:`atomic_write`; the caches
reach it through :func:`tlutils.cache.load_or_build`, which adds verification on load and a file lock.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then ``os.replace`` it into place.

    A crash or an exception leaves ``path`` as it was and removes the temporary file. ``mode``: the
    permissions of the result (``mkstemp`` would leave it private to the owner).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
