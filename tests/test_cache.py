"""The one cache policy: key, verify on load, warn + delete + rebuild, atomic write, build once under a lock."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import pytest

from tlutils import cache as cache_module
from tlutils.cache import STALE_TMP_SECONDS, cache_key, code_fingerprint, load_or_build, modules_fingerprinted


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


# ----------------------------------------------------------------------------- code fingerprints

PKG_FILES = {
    "__init__.py": "",
    "low.py": '"""Lowest."""\n\ndef f(x):\n    return x + 1\n',
    "mid.py": "from fpkg.low import f\n\ndef g(x):\n    return f(x) * 2\n",
    "top.py": "from fpkg import mid\nfrom . import sub\n\ndef h(x):\n    return mid.g(x)\n",
    "sub/__init__.py": "from .leaf import k\n",
    "sub/leaf.py": "def k():\n    return 0\n",
    "plots.py": "from fpkg.top import h\n\ndef show():\n    return h(1)\n",
}


@pytest.fixture
def fpkg(tmp_path, monkeypatch):
    """A throw-away package ``fpkg`` on ``sys.path`` (never imported: only its files are read); returns an editor."""
    for name, text in PKG_FILES.items():
        (tmp_path / "fpkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fpkg" / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))

    def edit(name: str, old: str, new: str) -> None:
        path = tmp_path / "fpkg" / name
        path.write_text(path.read_text().replace(old, new))

    return edit


def test_the_fingerprint_covers_what_a_module_imports_transitively_and_nothing_above(fpkg):
    assert modules_fingerprinted("fpkg.top") == ["fpkg.low", "fpkg.mid", "fpkg.sub", "fpkg.sub.leaf", "fpkg.top"]
    assert modules_fingerprinted("fpkg.low") == ["fpkg.low"]


def test_changing_a_function_on_the_path_changes_the_fingerprint(fpkg):
    before = code_fingerprint("fpkg.top")
    fpkg("low.py", "x + 1", "x + 2")
    assert code_fingerprint("fpkg.top") != before
    again = code_fingerprint("fpkg.top")
    fpkg("sub/leaf.py", "return 0", "return 1")  # reached through a relative import
    assert code_fingerprint("fpkg.top") != again


def test_changing_a_module_off_the_path_comments_or_docstrings_keeps_it(fpkg):
    before = code_fingerprint("fpkg.top")
    fpkg("plots.py", "h(1)", "h(2)")  # a module above (it imports top, top does not import it)
    fpkg("low.py", '"""Lowest."""', '"""The lowest module, documented at length."""')
    fpkg("mid.py", "return f(x) * 2", "return f(x) * 2  # doubled")
    fpkg("mid.py", "def g(x):", "\n\ndef g(x):")
    assert code_fingerprint("fpkg.top") == before


def test_a_code_change_rebuilds_the_cache_and_an_unrelated_one_does_not(fpkg, tmp_path):
    calls = []

    def get():
        key = cache_key({"what": "x", "code": code_fingerprint("fpkg.mid")})
        return load_or_build(tmp_path / f"x-{key}.json", lambda: calls.append(1) or {"v": len(calls)},
                             load=_load, save=_save)

    assert get() == {"v": 1} and get() == {"v": 1}
    fpkg("plots.py", "h(1)", "h(3)")
    assert get() == {"v": 1}, "a module off the path must not invalidate the cache"
    fpkg("low.py", "x + 1", "x - 1")
    assert get() == {"v": 2}, "a change to a function on the path must rebuild"


def test_a_module_edited_after_it_was_imported_gets_a_key_of_its_own(fpkg):
    import fpkg.low  # noqa: F401  (now this process runs the file's current code)

    try:
        with pytest.warns(UserWarning, match="fpkg.low changed on disk after this process imported it"):
            before = code_fingerprint("fpkg.low")  # the files were written after tlutils.cache was imported
    finally:
        for name in [m for m in sys.modules if m == "fpkg" or m.startswith("fpkg.")]:
            del sys.modules[name]
    assert before != code_fingerprint("fpkg.low")


def test_unknown_modules_get_a_clear_error():
    with pytest.raises(ValueError, match="cannot fingerprint 'no_such_package_xyz'"):
        code_fingerprint("no_such_package_xyz")
    with pytest.raises(ValueError, match="no such module"):
        code_fingerprint("tlutils.no_such_module")


HEAVY = ("tlutils.source", "tlutils.budget", "tlutils.features", "tlutils.adapt_runs", "tlutils.data.glyphs",
         "tlutils.data.digits", "tlutils.data.syndigits")
"""The modules whose code keys the caches: source model, label-budget runs, features, chapters 04-05's networks,
domains."""


@pytest.fixture
def edited_source(monkeypatch):
    """``edit(module file, old, new)``: pretend a tlutils file reads differently (through ``read_source``)."""
    edits: dict[str, tuple[str, str]] = {}
    real = cache_module.read_source

    def fake(path):
        text = real(path)
        for suffix, (old, new) in edits.items():
            if path.as_posix().endswith(suffix):
                assert old in text, f"{old!r} not in {suffix}"
                text = text.replace(old, new, 1)
        return text

    monkeypatch.setattr(cache_module, "read_source", fake)
    cache_module._parsed.cache_clear()
    yield lambda suffix, old, new: (edits.__setitem__(suffix, (old, new)), cache_module._parsed.cache_clear())
    cache_module._parsed.cache_clear()


def test_notebook_tooling_plots_and_results_never_key_a_heavy_cache():
    covered = set().union(*(modules_fingerprinted(m) for m in HEAVY))
    above = {m for m in covered
             if m in ("tlutils", "tlutils.plots", "tlutils.results") or m.startswith("tlutils.course")}
    assert not above, f"heavy caches are keyed on presentation code: {sorted(above)}"


def test_editing_fit_rekeys_the_training_caches_but_not_the_domains(edited_source):
    before = {m: code_fingerprint(m) for m in HEAVY}
    edited_source("tlutils/train.py", "model.eval()\n    return history", "model.eval()\n    return  history")
    assert {m: code_fingerprint(m) for m in HEAVY} == before, "formatting is not code"
    edited_source("tlutils/train.py", "model.eval()\n    return history", "model.train()\n    return history")
    after = {m: code_fingerprint(m) for m in HEAVY}
    changed = {m for m in HEAVY if after[m] != before[m]}
    assert changed == {"tlutils.source", "tlutils.budget", "tlutils.features", "tlutils.adapt_runs"}


def test_editing_a_domain_builder_rekeys_its_domains_and_what_trains_on_them(edited_source):
    before = {m: code_fingerprint(m) for m in HEAVY}
    edited_source("tlutils/data/syndigits.py", "import annotations\n", "import annotations\nUNUSED = 1\n")
    changed = {m for m in HEAVY if code_fingerprint(m) != before[m]}
    # budget and features get their data as tensors, keyed by content
    assert changed == {"tlutils.data.syndigits", "tlutils.source", "tlutils.adapt_runs"}
