"""Notebook housekeeping: strip outputs before committing, and check that they are stripped.

python -m tlutils.course.nbtools strip notebooks/*.ipynb
python -m tlutils.course.nbtools check notebooks/*.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs, execution counts and run-time metadata (cell tags are kept)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    return nb


def dirty_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of code cells that carry outputs or execution counts."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("strip", "check"):
        print(__doc__)
        return 2
    bad = 0
    for name in argv[1:]:
        path = Path(name)
        nb = nbformat.read(path, as_version=4)
        if argv[0] == "strip":
            nbformat.write(strip(nb), path)
        elif dirty_cells(nb):
            print(f"{path}: code cells {dirty_cells(nb)} carry outputs; run `make strip`")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
