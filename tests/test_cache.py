"""The one cache policy: key, verify on load, warn + delete + rebuild, atomic write, build once under a lock."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from tlutils.cache import STALE_TMP_SECONDS, cache_key, load_or_build


def _save(value, f):
    f.write(json.dumps(value).encode())


def _load(path: Path):
    value = json.loads(path.read_text())
    if "v" not in value:
        raise ValueError("no 'v' entry")
    return value


def test_cache_key_is_stable_and_order_free():
    assert cache_key({"a": 1, "b": [2, 3]}) == cache_key({"b": [2, 3], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})
    assert len(cache_key({"a": 1}, length=20)) == 20


def test_builds_once_then_loads(tmp_path):
    calls = []
    build = lambda: calls.append(1) or {"v": 1}  # noqa: E731
    path = tmp_path / "x.json"
    assert load_or_build(path, build, load=_load, save=_save) == {"v": 1}
    assert load_or_build(path, build, load=_load, save=_save) == {"v": 1}
    assert len(calls) == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_bad_file_is_reported_deleted_and_rebuilt(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"broken": true}')
    with pytest.warns(UserWarning, match=r"x.json is invalid .*no 'v' entry.*deleting and rebuilding"):
        value = load_or_build(path, lambda: {"v": 2}, load=_load, save=_save, what="test cache")
    assert value == {"v": 2} and _load(path) == {"v": 2}


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def build():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        load_or_build(tmp_path / "x.json", build, load=_load, save=_save)
    assert [p.name for p in tmp_path.iterdir()] == [".x.json.lock"]


def _slow_build_in_process(path: str, log: str) -> None:
    def build():
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        return {"v": 3}

    assert load_or_build(path, build, load=_load, save=_save) == {"v": 3}


def test_two_processes_build_once(tmp_path):
    path, log = str(tmp_path / "x.json"), str(tmp_path / "log")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_slow_build_in_process, args=(path, log)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert Path(log).read_text() == "built\n"


def test_an_unwritable_location_warns_and_continues(tmp_path):
    """A read-only data dir: nothing can be locked or written there, so the value is built and returned uncached."""
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache directory should be: mkdir, the lock and the write all fail
    with pytest.warns(UserWarning, match="could not write test cache .*continuing without caching"):
        value = load_or_build(blocker / "x.json", lambda: {"v": 4}, load=_load, save=_save, what="test cache")
    assert value == {"v": 4}


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    path = tmp_path / "x.json"
    stale, fresh = tmp_path / ".x.json.old.tmp", tmp_path / ".x.json.new.tmp"
    for tmp in (stale, fresh):
        tmp.write_text("partial")
    old = time.time() - 2 * STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    load_or_build(path, lambda: {"v": 5}, load=_load, save=_save)
    assert not stale.exists() and fresh.exists()
