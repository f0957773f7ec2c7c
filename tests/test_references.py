"""Every backticked ``tlutils.…`` name in the prose resolves: notebooks (markdown, code and its comments), docs/,
README.md, CONTRIBUTING.md, and the docstrings and comments of the package, scripts and benchmarks.

A name is resolved the way a reader would follow it: import the longest importable module prefix, then getattr
the rest (a dataclass field counts as an attribute of its class). A renamed or removed function fails here with
the file and line of every stale reference."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NAME = re.compile(r"`+(tlutils(?:\.[A-Za-z_]\w*)*)")
"""A backticked span that starts with a dotted ``tlutils`` name (```tlutils.train.fit(model, ...)``` -> the name)."""


def _texts() -> list[tuple[str, str]]:
    """``(where, text)`` of every place a reference may sit."""
    texts = []
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            texts.append((f"{path.relative_to(REPO)} cell {i}", "".join(cell["source"])))
    docs = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
    code = [p for d in ("tlutils", "scripts", "benchmarks", "tests") for p in sorted((REPO / d).rglob("*.py"))]
    texts += [(str(p.relative_to(REPO)), p.read_text()) for p in docs + code if p.exists()]
    return texts


def references(text: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every backticked ``tlutils.…`` name in ``text``."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in NAME.finditer(text)]


def resolves(name: str) -> bool:
    """Whether ``name`` is an importable module or an attribute (at any depth) of one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            fields = getattr(obj, "__dataclass_fields__", {}) if dataclasses.is_dataclass(obj) else {}
            if attr in fields:
                obj = fields[attr].type
                continue
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_the_reference_finder():
    text = "see `tlutils.train.fit(model, data)` and ``tlutils.cache``,\n:func:`tlutils.maml.adapt`; `fit` is not one"
    assert references(text) == [(1, "tlutils.train.fit"), (1, "tlutils.cache"), (2, "tlutils.maml.adapt")]
    assert resolves("tlutils.train.fit") and resolves("tlutils.data.episodes.TaskBatch")
    assert resolves("tlutils.train.History.epochs"), "a dataclass field is an attribute"
    assert resolves("tlutils.setup") and resolves("tlutils.course.run")
    assert not resolves("tlutils.fit") and not resolves("tlutils.adapt_runs.cached_models")
    assert not resolves("tlutils.no_such_module.thing")


def test_the_repository_has_references_to_check():
    assert sum(len(references(text)) for _, text in _texts()) > 100


@pytest.mark.parametrize("where", ["notebooks", "docs and guides", "code"])
def test_every_backticked_tlutils_name_resolves(where):
    kind = {"notebooks": ("notebooks/",), "docs and guides": ("docs/", "README.md", "CONTRIBUTING.md"),
            "code": ("tlutils/", "scripts/", "benchmarks/", "tests/")}[where]
    broken = [f"{place}, line {line}: `{name}`" for place, text in _texts() if place.startswith(kind)
              for line, name in references(text) if not resolves(name)]
    assert not broken, "these tlutils names do not resolve (renamed or removed?):\n" + "\n".join(broken)
