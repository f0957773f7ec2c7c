"""Content-checked, atomically written cache of generated domains.

A domain is stored as one ``.npz`` file under ``data_dir()/"domains"``: images as uint8 (one channel
when grayscale), labels as int64, and a JSON header (cache key, classes, info). A sha256 over all of
it is embedded and verified on load, and the file is first written to a temporary name in the same
directory and then moved into place with ``os.replace``. So a killed write leaves at most a
``.tmp`` file that is never read, and a truncated, corrupted or mismatched file is detected, reported
with a warning and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tlutils.config import data_dir

FORMAT = 1
"""Version of the file layout itself (bump to invalidate every cached file)."""
_TMP_SUFFIX = ".tmp"
_STALE_TMP_SECONDS = 24 * 3600


class Arrays(NamedTuple):
    """What a domain builder returns: uint8 images (N, C, 32, 32) with C in {1, 3}, int64 labels, metadata."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    info: dict


def cache_dir() -> Path:
    """``data_dir()/"domains"``, created on demand."""
    path = data_dir() / "domains"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(fields: dict) -> str:
    """Stable hash of the JSON-serialisable ``fields`` (name, builder version, options, seed, split)."""
    blob = json.dumps({"format": FORMAT, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_path(name: str, split: str, key: str) -> Path:
    return cache_dir() / f"{name}-{split}-{key}.npz"


def _checksum(x: np.ndarray, y: np.ndarray, header: bytes) -> str:
    h = hashlib.sha256()
    for part in (
        str(x.shape).encode(),
        str(x.dtype).encode(),
        np.ascontiguousarray(x).tobytes(),
        str(y.shape).encode(),
        str(y.dtype).encode(),
        np.ascontiguousarray(y).tobytes(),
        header,
    ):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _validate(arrays: Arrays) -> None:
    x, y = arrays.x, arrays.y
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2:] != (32, 32):
        raise ValueError(f"builder returned x {x.dtype} {x.shape}; expected uint8 (N, 1|3, 32, 32)")
    if y.dtype != np.int64 or y.shape != (x.shape[0],):
        raise ValueError(f"builder returned y {y.dtype} {y.shape}; expected int64 ({x.shape[0]},)")
    if len(y) and (y.min() < 0 or y.max() >= len(arrays.classes)):
        raise ValueError(f"labels out of range for {len(arrays.classes)} classes")


def write_arrays(path: Path, arrays: Arrays, key: str) -> None:
    """Write ``arrays`` to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``)."""
    header = json.dumps({"key": key, "classes": list(arrays.classes), "info": arrays.info}).encode()
    digest = _checksum(arrays.x, arrays.y, header)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(
                f,
                x=arrays.x,
                y=arrays.y,
                header=np.frombuffer(header, dtype=np.uint8),
                sha256=np.frombuffer(digest.encode(), dtype=np.uint8),
            )
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; the cache is an ordinary shared file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_arrays(path: Path, key: str) -> Arrays:
    """Read and verify a cache file; raise ValueError (or an I/O error) when it is not valid for ``key``."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"x", "y", "header", "sha256"} - set(z.files)
        if missing:
            raise ValueError(f"missing entries {sorted(missing)}")
        x, y, header, stored = z["x"], z["y"], z["header"].tobytes(), z["sha256"].tobytes().decode()
    if _checksum(x, y, header) != stored:
        raise ValueError("checksum mismatch")
    meta = json.loads(header)
    if meta.get("key") != key:
        raise ValueError(f"cache key mismatch (file has {meta.get('key')!r}, expected {key!r})")
    arrays = Arrays(x, y, meta["classes"], meta["info"])
    _validate(arrays)
    return arrays


def _remove_stale_tmp(directory: Path) -> None:
    """Delete temp files left by writes killed more than a day ago (they are never read)."""
    now = time.time()
    for tmp in directory.glob(f".*{_TMP_SUFFIX}"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def cached(
    name: str, split: str, fields: dict, build: Callable[[], Arrays], *, use_cache: bool = True
) -> Arrays:
    """Return the arrays for ``fields`` from the cache, building (and caching) them when absent or invalid."""
    key = cache_key({"name": name, "split": split, **fields})
    if not use_cache:
        arrays = build()
        _validate(arrays)
        return arrays
    path = cache_path(name, split, key)
    if path.exists():
        try:
            return read_arrays(path, key)
        except Exception as err:  # noqa: BLE001 - any unreadable file is rebuilt, never trusted
            warnings.warn(
                f"cache file {path} is invalid ({type(err).__name__}: {err}); rebuilding it", stacklevel=3
            )
    arrays = build()
    _validate(arrays)
    try:
        write_arrays(path, arrays, key)
        _remove_stale_tmp(path.parent)
    except OSError as err:
        warnings.warn(f"could not write cache file {path} ({err}); continuing without caching", stacklevel=3)
    return arrays


def clear_cache(name: str | None = None) -> int:
    """Delete cached domain files (all, or those of domain ``name``); return how many were removed."""
    removed = 0
    for path in cache_dir().iterdir():
        base = path.name.lstrip(".")
        if path.is_file() and (name is None or base.startswith(f"{name}-")):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
