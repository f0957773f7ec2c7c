"""One cache policy for every artefact the course builds: domains, features, checkpoints, budget runs.

- one key function: :func:`cache_key`, a hash of the JSON of what the artefact depends on;
- verify on load: the caller's ``load`` raises when a file is not what the key promises;
- a bad file is reported (a warning naming the file and the problem), deleted and rebuilt;
- atomic writes (:func:`tlutils.atomic.atomic_write`): readers see the old file or the new one; a temp file
  left by a killed write (``.<name>.<random>.tmp``) is never read, and removed by the next write after a day;
- a file lock: two processes (two kernels, two pytest workers) that need the same missing artefact build
  it once; the second waits for the lock, then loads what the first wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

from tlutils.atomic import atomic_write

try:  # POSIX; on Windows the lock is a no-op (one kernel at a time is the norm there)
    import fcntl
except ImportError:  # pragma: no cover - not on the CI platforms
    fcntl = None

T = TypeVar("T")
STALE_TMP_SECONDS = 24 * 3600
"""Age after which a temp file left by a killed write is removed (by the next write of the same artefact)."""


def cache_key(fields: Mapping, length: int = 16) -> str:
    """Stable hex digest of the JSON-serialisable ``fields`` (everything the artefact depends on)."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``<dir>/.<name>.lock`` (blocks until the holder releases it).

    The empty lock file stays (deleting it while held would let a third process lock a new file). Where it
    cannot be created (a read-only directory) nothing can be written either, so there is nothing to build
    once: the block runs unlocked.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.parent / f".{path.name}.lock", "a") if fcntl is not None else None  # noqa: SIM115
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_load(path: Path, load: Callable[[Path], T], what: str) -> tuple[bool, T | None]:
    """``(True, value)`` for a valid file; ``(False, None)`` when absent or bad (a bad one is deleted)."""
    if not path.exists():
        return False, None
    try:
        return True, load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is rebuilt, never trusted
        reason = (str(err).strip().splitlines() or [""])[0]  # torch's unpickling errors run to many lines
        reason = reason if len(reason) <= 200 else reason[:199] + "…"
        warnings.warn(f"{what} {path} is invalid ({type(err).__name__}: {reason}); deleting and rebuilding it",
                      stacklevel=4)
        path.unlink(missing_ok=True)
        return False, None


def _remove_stale_tmp(path: Path) -> None:
    """Delete temp files of ``path`` left by writes killed more than ``STALE_TMP_SECONDS`` ago."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def load_or_build(
    path: str | os.PathLike,
    build: Callable[[], T],
    *,
    load: Callable[[Path], T],
    save: Callable[[T, BinaryIO], object],
    what: str = "cache file",
) -> T:
    """The artefact at ``path``: loaded (``load`` verifies it and raises if it is bad) or built and saved.

    ``build()`` makes it; ``save(value, f)`` writes it to a binary file (atomically, via a temp file).
    Under a file lock, so concurrent callers build once. A file that cannot be written (read-only data
    dir) is reported and the built value returned uncached.
    """
    path = Path(path)
    found, value = _try_load(path, load, what)
    if found:
        return value
    with file_lock(path):
        found, value = _try_load(path, load, what)  # another process may have built it while we waited
        if found:
            return value
        value = build()
        try:
            atomic_write(path, lambda f: save(value, f))
            _remove_stale_tmp(path)
        except OSError as err:
            warnings.warn(f"could not write {what} {path} ({err}); continuing without caching", stacklevel=2)
    return value
