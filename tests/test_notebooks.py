"""Execute every chapter through the runner (quick profile) and check that each one ran and recorded numbers.

The numbers themselves are checked in ``test_claims_*.py``; this file checks the run and nbval.
"""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
BOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.notebooks


@pytest.mark.parametrize("stem", BOOKS)
def test_notebook_ran_and_recorded(quick_results, stem):
    status = quick_results["_run"]["status"].get(stem)
    log = REPO / "runs" / "quick" / "runner.log"
    assert status == "ok", f"{stem} failed in the quick run; see {log} and runs/quick/{stem}.ipynb"
    assert quick_results[stem], f"{stem} recorded no numbers"


def test_run_metadata(quick_results):
    meta = quick_results["_run"]
    assert meta["profile"] == "quick" and meta["seed"] == 0
    assert set(meta["wall_s"]) == set(BOOKS)
    assert {"python", "torch"} <= set(meta["versions"])


@pytest.mark.parametrize("stem", BOOKS)
def test_executed_notebooks_carry_no_progress_noise(quick_run, stem):
    nb = nbformat.read(REPO / "runs" / "quick" / f"{stem}.ipynb", as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            assert "\r" not in text and "it/s" not in text, f"{stem}: progress-bar output saved in the notebook"
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), f"{stem}: widget saved"


def test_nbval_lax_on_pretraining_notebook(quick_run):
    """nbval (lax) re-executes notebook 00; after the quick run its checkpoint is cached, so this is fast."""
    env = {**os.environ, "TLUTILS_PROFILE": "quick", "TLUTILS_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
                           "notebooks/00_pretrain_source.ipynb"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
