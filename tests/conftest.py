"""Shared fixtures. ``quick_results`` runs every notebook once per session through the runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("TLUTILS_PROGRESS", "0")
    # unit tests train tiny models: worker processes would cost more than they save (tests that check the
    # workers pass workers=2 explicitly); the session's notebook run is set up before this and keeps them
    monkeypatch.setenv("TLUTILS_WORKERS", "1")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (thread start-up and spinning dominate otherwise)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_episodes():
    """Factory of few-shot episodes over random 12x12 images (12 classes of 8): ``(sampler, tasks)``."""
    import torch

    from tlutils.data.episodes import EpisodeSampler

    def make(num_tasks=4, n_way=3, k_shot=2, k_query=3, rotations=False, seed=0):
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(12 * 8, 1, 12, 12, generator=gen)
        y = torch.arange(12).repeat_interleave(8)
        sampler = EpisodeSampler(x, y, n_way, k_shot, k_query, rotations=rotations)
        return sampler, sampler.sample(num_tasks, gen)

    return make


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    """A fresh, empty data dir (``TLUTILS_DATA``) for tests that build caches."""
    monkeypatch.setenv("TLUTILS_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="session")
def quick_run() -> Path:
    """Execute all notebooks in the quick profile with ``python -m tlutils.course.run``; return results.json.

    Set ``TLUTILS_REUSE_RUN=1`` to reuse an existing ``runs/quick/results.json`` whose notebooks all
    succeeded (handy while editing claims; CI always executes).
    """
    results = REPO / "runs" / "quick" / "results.json"
    if os.environ.get("TLUTILS_REUSE_RUN") == "1" and results.exists():
        status = json.loads(results.read_text()).get("_run", {}).get("status", {})
        if status and all(s == "ok" for s in status.values()):
            return results
    proc = subprocess.run(
        [sys.executable, "-m", "tlutils.course.run", "--profile", "quick"], cwd=REPO, capture_output=True, text=True
    )
    print(proc.stdout[-5000:])
    print(proc.stderr[-5000:], file=sys.stderr)
    (REPO / "runs" / "quick").mkdir(parents=True, exist_ok=True)
    (REPO / "runs" / "quick" / "runner.log").write_text(proc.stdout + "\n" + proc.stderr)
    if not results.exists():
        pytest.fail(f"the runner wrote no results.json (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return results


@pytest.fixture(scope="session")
def quick_results(quick_run) -> dict:
    """``{notebook stem: {metric: value}}`` of the quick run (plus ``_run`` metadata)."""
    return json.loads(quick_run.read_text())


def pytest_collection_modifyitems(items):
    """Every test that needs the quick run is a ``notebooks`` test (``-m "not notebooks"`` skips them all)."""
    for item in items:
        if "quick_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.notebooks)
