"""Content-checked cache of generated domains, on the one cache policy of :mod:`tlutils.cache`.

A domain is stored as one ``.npz`` file under ``data_dir()/"domains"``: images as uint8 (one channel
when grayscale), labels as int64, and a JSON header (cache key, classes, info). A sha256 over all of
it is embedded and verified on load (:func:`read_arrays`); :func:`tlutils.cache.load_or_build` does the
rest: a truncated, corrupted or mismatched file is reported with a warning, deleted and rebuilt; files
are written atomically (a killed write leaves at most a ``.tmp`` file that is never read); and a file
lock makes two processes that need the same missing domain build it once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from tlutils import cache
from tlutils.config import data_dir

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
    """:func:`tlutils.cache.cache_key` of ``fields`` (name, split, the builder's code fingerprint, options, seed).

    The file layout below is code of the data modules too: changing it changes every domain's fingerprint."""
    return cache.cache_key(fields, length=20)


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


def write_arrays(f: BinaryIO, arrays: Arrays, key: str) -> None:
    """Write ``arrays`` with their header and embedded sha256 to the binary file ``f``."""
    header = json.dumps({"key": key, "classes": list(arrays.classes), "info": arrays.info}).encode()
    digest = _checksum(arrays.x, arrays.y, header)
    np.savez_compressed(
        f,
        x=arrays.x,
        y=arrays.y,
        header=np.frombuffer(header, dtype=np.uint8),
        sha256=np.frombuffer(digest.encode(), dtype=np.uint8),
    )


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


def cached(
    name: str, split: str, fields: dict, build: Callable[[], Arrays], *, use_cache: bool = True
) -> Arrays:
    """Return the arrays for ``fields`` from the cache, building (and caching) them when absent or invalid."""

    def checked_build() -> Arrays:
        arrays = build()
        _validate(arrays)
        return arrays

    if not use_cache:
        return checked_build()
    key = cache_key({"name": name, "split": split, **fields})
    return cache.load_or_build(
        cache_path(name, split, key),
        checked_build,
        load=lambda path: read_arrays(path, key),
        save=lambda arrays, f: write_arrays(f, arrays, key),
        what="domain cache file",
    )


def clear_cache(name: str | None = None) -> int:
    """Delete cached domain files and leftover temp files (all, or those of domain ``name``); return how many.

    The empty lock files stay (see :func:`tlutils.cache.file_lock`).
    """
    removed = 0
    for path in cache_dir().iterdir():
        base = path.name.lstrip(".")
        if path.is_file() and not base.endswith(".lock") and (name is None or base.startswith(f"{name}-")):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
