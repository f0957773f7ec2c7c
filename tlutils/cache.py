"""One cache policy for every artefact the course builds: domains, features, checkpoints, budget runs.

- one key function: :func:`cache_key`, a hash of the JSON of what the artefact depends on, which includes
  :func:`code_fingerprint` of the modules the artefact is built by (no hand-bumped version numbers);
- verify on load: the caller's ``load`` raises when a file is not what the key promises;
- a bad file is reported (a warning naming the file and the problem), deleted and rebuilt;
- atomic writes (:func:`tlutils.atomic.atomic_write`): readers see the old file or the new one; a temp file
  left by a killed write (``.<name>.<random>.tmp``) is never read, and removed by the next write after a day;
- a file lock: two processes (two kernels, two pytest workers) that need the same missing artefact build
  it once; the second waits for the lock, then loads what the first wrote.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import BinaryIO, TypeVar

from tlutils.atomic import atomic_write

try:  # POSIX; on Windows the lock is a no-op (one kernel at a time is the norm there)
    import fcntl
except ImportError:  # pragma: no cover - not on the CI platforms
    fcntl = None

T = TypeVar("T")
STALE_TMP_SECONDS = 24 * 3600
"""Age after which a temp file left by a killed write is removed (by the next write of the same artefact)."""


_IMPORTED_AT = time.time()
"""When this module was imported: about when the process loaded the package's code (see :func:`code_fingerprint`)."""
STORAGE_MODULES = frozenset({"tlutils.cache", "tlutils.atomic"})
"""Modules left out of every :func:`code_fingerprint`: they decide where and how a file is written, never what it
holds (a change of file layout is caught by the loaders' verification), and every cached module imports them."""


def _package_modules(root: str) -> dict[str, tuple[Path, bool]]:
    """``{module name: (source file, is a package)}`` of the importable top-level package or module ``root``."""
    spec = importlib.util.find_spec(root)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise ValueError(f"cannot fingerprint {root!r}: it is not importable from source files")
    if not spec.submodule_search_locations:
        return {root: (Path(spec.origin), False)}
    base = Path(spec.origin).parent
    modules = {}
    for path in sorted(base.rglob("*.py")):
        parts = (root, *path.relative_to(base).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, package)
    return modules


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Drop the docstrings of the module, its classes and functions (they never change what code computes)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _imported(tree: ast.AST, name: str, package: bool, modules: frozenset[str]) -> set[str]:
    """Modules of ``modules`` that ``tree`` (module ``name``) imports, anywhere in the file.

    ``from pkg import a, b`` depends on the submodules ``pkg.a``/``pkg.b`` where they are modules, and on ``pkg``
    itself only for names that are attributes of it (``from tlutils.data import load_domain`` -> tlutils.data).
    """
    deps: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                anchor = name.split(".") if package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            subs = {f"{base}.{a.name}" for a in node.names}
            deps |= subs & modules
            if subs - modules:
                deps.add(base)
    return {d for d in deps if d in modules and d != name}


def read_source(path: Path) -> str:
    """The source text of a module file (the one place :func:`code_fingerprint` reads files; tests replace it)."""
    return path.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=512)
def _parsed(path: Path, name: str, package: bool, stamp: tuple, modules: frozenset[str]) -> tuple[str, frozenset[str]]:
    """``(digest of the code without comments, docstrings and layout, imported modules)`` of one file;
    ``stamp`` (mtime, size) makes an edited file parse again."""
    tree = ast.parse(read_source(path), filename=str(path))
    deps = frozenset(_imported(tree, name, package, modules))
    return hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest(), deps


def _closure(names: list[str]) -> dict[str, tuple[str, Path]]:
    """``{module: (code digest, file)}`` of ``names`` and every module of their packages they import, transitively
    (minus :data:`STORAGE_MODULES`)."""
    found: dict[str, tuple[str, Path]] = {}
    packages: dict[str, dict[str, tuple[Path, bool]]] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        root = name.split(".")[0]
        modules = packages[root] if root in packages else packages.setdefault(root, _package_modules(root))
        if name not in modules:
            raise ValueError(f"cannot fingerprint {name!r}: no such module in its package's source files")
        path, package = modules[name]
        stat = path.stat()
        digest, deps = _parsed(path, name, package, (stat.st_mtime_ns, stat.st_size), frozenset(modules))
        found[name] = (digest, path)
        todo += [d for d in deps if d not in STORAGE_MODULES]
    return found


def modules_fingerprinted(*modules: str | ModuleType) -> list[str]:
    """The modules whose code :func:`code_fingerprint` of ``modules`` covers, sorted."""
    return sorted(_closure([m if isinstance(m, str) else m.__name__ for m in modules]))


def code_fingerprint(*modules: str | ModuleType, length: int = 12) -> str:
    """Digest of the code of ``modules`` and of every module of their package they import, transitively.

    What goes into a cache key in place of a hand-bumped version number: editing a function on an artefact's
    import path (``tlutils.source`` -> ``tlutils.train`` -> ``tlutils.models`` ...) gives a new key, so the
    artefact is rebuilt; editing a module off the path (the plots, the results, the course tooling, a notebook,
    which the layers keep above every cached artefact) does not. Comments, docstrings and formatting are not
    code: changing them keeps the key. The storage modules (:data:`STORAGE_MODULES`) are left out.

    A module that this process imported and whose file changed since runs code the file no longer holds: the
    fingerprint then says so (a warning, and a key of its own, never shared with the edited code's artefacts);
    restart the kernel to use the edit.
    """
    found = _closure([m if isinstance(m, str) else m.__name__ for m in modules])
    h = hashlib.sha256()
    for name in sorted(found):
        h.update(f"{name}:{found[name][0]};".encode())
    changed = sorted(name for name, (_, path) in found.items()
                     if name in sys.modules and path.stat().st_mtime > _IMPORTED_AT)
    if changed:
        warnings.warn(f"{', '.join(changed)} changed on disk after this process imported it; caching under a key "
                      "of this process only (restart the kernel to run the edited code)", stacklevel=2)
        h.update(f"loaded-then-edited:{os.getpid()}:{_IMPORTED_AT}".encode())
    return h.hexdigest()[:length]


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
