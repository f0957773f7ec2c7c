"""tlutils.atomic: a write either lands whole or leaves the old file."""

import stat

import pytest

from tlutils.atomic import atomic_write, atomic_write_text


def test_atomic_write_replaces_whole_and_is_readable_by_others(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.json", "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["a.json"], "no temporary file left behind"


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
