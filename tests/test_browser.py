"""Readers: the HTML render of a run, and JupyterLab driven end to end in a real (headless) Chromium.

The browser tests need Debian's ``chromium`` (``/usr/bin/chromium``, or ``$TLUTILS_CHROMIUM``) and the
``playwright`` Python package (its own browser download is never used); without them they are
skipped with the reason. Screenshots go to ``runs/browser/``.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tlutils.course.render import (
    ANCHORS,
    README_BEGIN,
    README_END,
    README_METRICS,
    export_figures,
    index_html,
    readme_results_table,
    render_run,
    update_readme,
)

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "runs" / "browser"
CHROMIUM = Path(os.environ.get("TLUTILS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT, ERROR = ".jp-OutputArea-output", "application/vnd.jupyter.error"
LAB_SETTINGS = {  # user settings for the test's JupyterLab: never write the notebook, no news pop-up
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def fake_run(runs_dir: Path, profile: str = "quick") -> Path:
    """A run in miniature: one executed chapter (text and a figure) and a failed one, with results.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    ax.set(title="accuracy vs. labels", xlabel="labels", ylabel="accuracy")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    out = nbformat.v4.new_output
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 00 · A tiny chapter\n\nWhat it shows."),
        nbformat.v4.new_code_cell(
            "cfg = tlutils.setup(PROFILE, SEED)",
            execution_count=1,
            outputs=[out("stream", name="stdout", text="tlutils: profile=quick seed=0 device=cpu\n")],
        ),
        nbformat.v4.new_code_cell(
            "plot()",
            execution_count=2,
            outputs=[
                out(
                    "display_data",
                    data={"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": ""},
                )
            ],
        ),
    ]
    run = runs_dir / profile
    run.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, run / "00_tiny.ipynb")
    meta = {"profile": profile, "seed": 0, "device": "cpu (2 cores)", "versions": {"python": "3.11"}}
    meta |= {
        "wall_s": {"00_tiny": 61.4, "01_broken": 3.0},
        "status": {"00_tiny": "ok", "01_broken": "FAILED"},
    }
    results = {"00_tiny": {"source_acc": 0.91234, "epochs": 6}, "01_broken": {}, "_run": meta}
    (run / "results.json").write_text(json.dumps(results))
    return run


# ------------------------------------------------------------------------------------------- rendering
def test_render_run_writes_chapters_index_and_figures(tmp_path):
    run = fake_run(tmp_path)
    index = render_run("quick", tmp_path)
    page = index.read_text()
    assert index == run / "html" / "index.html"
    assert '<a href="00_tiny.html">00 · A tiny chapter</a>' in page
    assert "<code>source_acc</code> = 0.9123" in page and "61 s" in page
    assert "FAILED" in page and "01_broken" in page and "none recorded" in page
    assert "cpu (2 cores)" in page
    chapter = (run / "html" / "00_tiny.html").read_text()
    assert "tlutils: profile=quick" in chapter and "data:image/png;base64" in chapter
    figures = export_figures(run / "00_tiny.ipynb", tmp_path / "figs")
    assert [p.name for p in figures] == ["00_tiny_cell2_0.png"] and figures[0].read_bytes()[:4] == b"\x89PNG"


def test_render_run_without_results_says_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m tlutils.course.run --profile quick"):
        render_run("quick", tmp_path)


def test_index_escapes_html():
    page = index_html({"00_x": {"a": 1.0}, "_run": {"profile": "<b>"}}, {"00_x": "<script>"}, {})
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page


def test_readme_results_table_with_anchors():
    results = {
        "04_dann": {"target_acc.dann": 0.71234, "target_acc.source_only": 0.52},
        "_run": {"profile": "quick"},
    }
    anchors = {"04_dann": {"target_acc.dann": "0.767 (Ganin et al. 2016)"}}
    table = readme_results_table(results, anchors).splitlines()
    assert table[0] == "| Chapter | Metric | This repo (quick run) | Published |"
    assert table[2] == "| 04_dann | `target_acc.dann` | 0.712 | 0.767 (Ganin et al. 2016) |"
    assert table[3] == "| 04_dann | `target_acc.source_only` | 0.52 |  |"
    only = readme_results_table(results, metrics={"04_dann": ["target_acc.source_only"]})
    assert len(only.splitlines()) == 3
    with pytest.raises(KeyError, match="it recorded"):
        readme_results_table(results, {"04_dann": {"target_acc.dan": 0.9}})


# ------------------------------------------------------------------------------------------- browser
def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found: run .ci/install_chromium.sh (Debian chromium) or set TLUTILS_CHROMIUM"
    if importlib.util.find_spec("playwright") is None:
        return (
            "the playwright package is not installed (pip install playwright; no `playwright install` needed)"
        )
    return None


browser_needed = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 (random port, random token) serving a copy of the first chapters.

    A copy, so the committed notebooks are never written (autosave is off as well); user settings,
    workspaces and runtime files live in the temporary folder. One server for the module's tests.
    """
    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    root = tmp_path / "lab"
    shutil.copytree(
        REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints")
    )
    for name, values in LAB_SETTINGS.items():
        (root / ".settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / ".settings" / name).write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **{k: v for k, v in os.environ.items() if k != "TLUTILS_PROGRESS"},
        "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces"),
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
        "TLUTILS_PROFILE": "quick",
        "TLUTILS_PROGRESS": "1",  # a student's JupyterLab: progress bars on (the test suite turns them off elsewhere)
    }
    args = [
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        f"--ServerApp.root_dir={root}",
    ]
    log = tmp_path / "jupyter.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", *args], cwd=root, env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{base}/api/status?token={token}", proc, log)
        yield base, token, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _setup_cell_count(path: Path) -> int:
    """How many leading code cells to run: up to and including the ``tlutils.setup(...)`` cell."""
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return next((k + 1 for k, c in enumerate(code) if "tlutils.setup(" in c.source), 2)


@browser_needed
def test_jupyterlab_runs_the_first_cells_of_a_chapter(jupyter_lab, page):
    from playwright.sync_api import expect

    base, token, root = jupyter_lab
    books = ("01_feature_extraction.ipynb", "00_pretrain_source.ipynb")
    name = next(n for n in books if (root / "notebooks" / n).exists())
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(f"{base}/lab/tree/notebooks/{name}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
        expect(page.locator(".jp-StatusBar-Widget", has_text="| Idle")).to_be_visible(timeout=60_000)
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        for k in range(_setup_cell_count(root / "notebooks" / name)):
            cells.nth(k).locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            expect(cells.nth(k).locator(".jp-InputPrompt")).not_to_have_text("[ ]:", timeout=15_000)
        done = page.locator(
            f"{OUTPUT}:has-text('tlutils: profile=quick'), {OUTPUT}[data-mime-type='{ERROR}']"
        )
        done.first.wait_for(timeout=90_000)
    except Exception:
        page.screenshot(path=str(SHOTS / "jupyterlab_failed.png"))
        raise
    page.screenshot(path=str(SHOTS / "jupyterlab.png"))
    assert not page.locator(f"{OUTPUT}[data-mime-type='{ERROR}']").count(), (
        "a cell raised; see jupyterlab.png"
    )
    assert "device=" in page.locator(OUTPUT, has_text="tlutils: profile=quick").first.inner_text()


TRAINING_CELL = """import time
import torch
from tlutils.train import fit

class Slow:  # ~4 s of training whatever the CPU, so the bar is on screen long enough to be seen
    def on_epoch_end(self, state):
        time.sleep(0.4)

torch.manual_seed(0)
x, y = torch.randn(256, 4), torch.randint(0, 2, (256,))
history = fit(torch.nn.Linear(4, 2), (x, y), epochs=10, batch_size=32, callbacks=[Slow()], desc="train")
print("trained", len(history.epochs), "epochs")"""
STDERR = "application/vnd.jupyter.stderr"


@browser_needed
def test_jupyterlab_training_cell_shows_a_widget_progress_bar_and_no_warning(jupyter_lab, page):
    """A student's view: tlutils' progress bar is an ipywidgets bar, and no TqdmWarning lands in stderr."""
    from playwright.sync_api import expect

    base, token, root = jupyter_lab
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(TRAINING_CELL)]
    nbformat.write(nb, root / "notebooks" / "train_widget.ipynb")
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        # ?reset: a fresh workspace with only this notebook open (no other tab's kernel status to confuse)
        page.goto(f"{base}/lab/tree/notebooks/train_widget.ipynb?reset&token={token}")
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
        expect(page.locator(".jp-StatusBar-Widget", has_text="| Idle")).to_be_visible(timeout=120_000)
        cell = page.locator(".jp-Notebook .jp-CodeCell").first
        bar, finished = cell.locator(".widget-hprogress"), cell.locator(OUTPUT, has_text="trained 10 epochs")
        started = cell.locator(".jp-InputPrompt", has_text="[*]").or_(bar).or_(finished).first
        for attempt in range(3):  # a key press that lands before the editor has focus is lost: try again
            cell.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            try:
                started.wait_for(timeout=20_000)
                break
            except Exception:
                if attempt == 2:
                    raise
        # the bar shows while training runs (leave=False removes it afterwards); a text bar never matches
        bar.or_(finished).first.wait_for(timeout=120_000)
        seen = bar.count() > 0
        page.screenshot(path=str(SHOTS / "jupyterlab_progress.png"))
        finished.first.wait_for(timeout=60_000)
    except Exception:
        page.screenshot(path=str(SHOTS / "jupyterlab_progress_failed.png"))
        raise
    outputs = cell.locator(OUTPUT)
    texts = [outputs.nth(k).inner_text() for k in range(outputs.count())]
    assert seen, f"no ipywidgets progress bar while training (is ipywidgets installed?); outputs: {texts}"
    assert not cell.locator(f"{OUTPUT}[data-mime-type='{STDERR}']").count(), f"stderr in the cell's output: {texts}"
    assert not any("Warning" in t or "IProgress" in t for t in texts), texts
    assert not cell.locator(f"{OUTPUT}[data-mime-type='{ERROR}']").count(), texts


def _check_index(page, index: Path, shot: str) -> None:
    page.goto(index.as_uri())
    rows = page.locator("tbody tr")
    assert rows.count() >= 1 and "Headline numbers" in page.locator("thead").inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / shot), full_page=True)
    rows.first.locator("a").first.click()
    page.wait_for_selector(".jp-Notebook", timeout=30_000)
    assert "tlutils: profile=" in page.locator(".jp-Notebook").inner_text()
    page.screenshot(path=str(SHOTS / shot.replace("index", "chapter")))


@browser_needed
def test_rendered_index_opens_in_the_browser(tmp_path, page):
    fake_run(tmp_path)
    _check_index(page, render_run("quick", tmp_path), "index_example.png")


@browser_needed
@pytest.mark.notebooks
def test_rendered_quick_run_opens_in_the_browser(quick_run, page):
    index = render_run("quick", quick_run.parent.parent)
    _check_index(page, index, "index.png")


# ------------------------------------------------------------------------------------------- README block
def test_update_readme_rewrites_only_its_block_and_copies_tagged_figures(tmp_path):
    run = fake_run(tmp_path)
    nb = nbformat.read(run / "00_tiny.ipynb", as_version=4)
    nb.cells[2].metadata["tags"] = ["readme-figure:tiny_plot"]
    nbformat.write(nb, run / "00_tiny.ipynb")
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nbefore\n<!-- results:begin old -->\nstale\n<!-- results:end -->\nafter\n")
    results = json.loads((run / "results.json").read_text())
    results["00_pretrain_source"] = {"source_acc": 0.98765}
    block = update_readme(readme, results, run, tmp_path / "docs" / "figures")
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n<!-- results:begin") and text.endswith("<!-- results:end -->\nafter\n")
    assert "stale" not in text and block in text
    assert "| 00_pretrain_source | `source_acc` | 0.988 |  |" in text
    assert "![" in text and "(docs/figures/tiny_plot.png)" in text
    assert (tmp_path / "docs" / "figures" / "tiny_plot.png").read_bytes()[:4] == b"\x89PNG"
    assert update_readme(readme, results, run, tmp_path / "docs" / "figures") == block, "idempotent"
    assert readme.read_text() == text


def test_update_readme_without_markers_says_what_to_add(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no block here\n")
    with pytest.raises(ValueError, match="results:begin"):
        update_readme(readme, {}, fake_run(tmp_path), tmp_path / "figs")
    assert readme.read_text() == "# no block here\n", "left untouched"


def test_repo_readme_has_the_generated_block_and_its_figures():
    text = (REPO / "README.md").read_text()
    assert README_BEGIN in text and README_END in text, "README lost its generated results block"
    block = text[text.index(README_BEGIN):text.index(README_END)]
    for rel in re.findall(r"\]\((docs/figures/[^)]+\.png)\)", block):
        assert (REPO / rel).is_file(), f"README shows {rel}, which is not committed"


def test_readme_metrics_are_recorded_by_the_quick_run(quick_results):
    for stem, names in README_METRICS.items():
        missing = [n for n in names if n not in quick_results.get(stem, {})]
        assert not missing, f"README_METRICS names {missing} that {stem} did not record"
    for stem, anchors in ANCHORS.items():
        assert set(anchors) <= set(README_METRICS[stem]), f"{stem}: an anchor without its metric in the README"
