"""Chapter 04's visible run executes the companion module: an edit to the DANN loss changes that cell's output.

The cell tagged ``visible-run`` in ``notebooks/04_dann.ipynb`` is run in-process, as the notebook runs it (its
imports are the notebook's own), on tiny random domains and a 12-step recipe: once as shipped and once with the
domain loss of ``tlutils.dann`` replaced, as a student editing ``tlutils/dann.py`` would.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import torch

from tlutils.adapt import Recipe
from tlutils.data.domain import Domain

matplotlib.use("Agg")
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_dann.ipynb"


def _cells() -> tuple[str, str]:
    """The notebook's import lines (not its setup) and its visible-run cell."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    imports = next(s for s in code if "import tlutils" in s)
    visible = [s for c, s in zip((c for c in cells if c["cell_type"] == "code"), code, strict=True)
               if "visible-run" in c["metadata"].get("tags", [])]
    assert len(visible) == 1, "notebook 04 needs exactly one code cell tagged 'visible-run'"
    lines = imports.splitlines()
    return "\n".join(line for line in lines if line.startswith(("import ", "from "))), visible[0]


def _domain(seed: int, shift: float, n: int = 96) -> Domain:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = (torch.rand(n, 3, 32, 32, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.04 + shift).clamp(0, 1)
    return Domain(x, y, [str(c) for c in range(10)], f"toy{seed}", "train")


def _run_visible_cell() -> str:
    imports, cell = _cells()
    ns: dict = {}
    exec(imports, ns)  # noqa: S102 - the notebook's own import lines
    ns.update(data={"main": (_domain(0, 0.0), _domain(1, 0.3), _domain(2, 0.3))}, MAIN="main", SEED=0,
              cfg=SimpleNamespace(device="cpu"), recipe=Recipe(steps=12, batch_size=8))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(cell, ns)  # noqa: S102
    matplotlib.pyplot.close("all")
    assert ns["history"].steps, "the visible run should log per-step values"
    return out.getvalue() + repr([round(float(r["domain_loss"]), 6) for r in ns["history"].steps])


def test_the_visible_run_is_reproducible_and_an_edit_to_the_dann_loss_changes_it(monkeypatch):
    torch.set_num_threads(1)
    shipped = _run_visible_cell()
    assert "target test accuracy" in shipped
    assert _run_visible_cell() == shipped, "the same seed should print the same run"

    import tlutils.dann

    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def edited(logits, target, *args, **kwargs):  # a student's edit: the domain loss weighted by 3
        return 3.0 * bce(logits, target, *args, **kwargs)

    monkeypatch.setattr(tlutils.dann.F, "binary_cross_entropy_with_logits", edited)
    assert _run_visible_cell() != shipped, "an edit to tlutils.dann's domain loss must change the visible run"
