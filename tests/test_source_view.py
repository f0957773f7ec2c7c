"""show_source: a function's and a class's source with file and line; a clear error for what has none."""

import pytest

from tlutils.course.source_view import show_source, source_location, source_markdown
from tlutils.schedules import ramp
from tlutils.train import History


def test_function_source_with_location(capsys):
    path, line = source_location(ramp)
    assert path == "tlutils/schedules.py"
    text = open(path).read().splitlines()
    assert text[line - 1].startswith("def ramp(")
    show_source(ramp)
    out = capsys.readouterr().out
    assert "def ramp(" in out and f"tlutils/schedules.py`, line {line}" in out


def test_class_source_and_cut():
    md = source_markdown(History, max_lines=3)
    assert "class History" in md and "more lines in tlutils/train.py" in md


def test_builtin_is_a_clear_error():
    with pytest.raises(TypeError, match="show_source needs a Python function"):
        source_location(len)
