"""Render a run to HTML, so the results can be read without running anything.

    python -m tlutils.course.render [--profile quick] [--runs-dir runs]

writes ``runs/<profile>/html/<chapter>.html`` for each executed notebook of the run (nbconvert's
``HTMLExporter``, JupyterLab template, figures embedded), ``runs/<profile>/html/index.html`` (each
chapter with its status, wall time and headline numbers from ``results.json``, plus the run's
device and versions) and every figure as a PNG under ``runs/<profile>/html/figures/`` (to pick the
README's pictures from). ``readme_results_table`` formats the README's results table, and

    python -m tlutils.course.render --readme

rewrites the README's generated block (between ``<!-- results:begin`` and ``<!-- results:end -->``):
the curated table of :data:`README_METRICS` beside the published :data:`ANCHORS`, and the figures whose
notebook cell carries a ``readme-figure:<name>`` tag, copied to ``docs/figures/<name>.png``.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
from pathlib import Path

import nbformat

from tlutils.atomic import atomic_write_bytes, atomic_write_text
from tlutils.config import REPO_ROOT
from tlutils.results import load_results

RUNS_DIR = REPO_ROOT / "runs"
META_KEY = "_run"
CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .45em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; white-space: nowrap; }
.ok { color: #176b2c; font-weight: 600; } .bad { color: #b00020; font-weight: 600; } code { font-size: 90%; }
ul.metrics { margin: 0; padding-left: 1.1em; } .meta { color: #555; font-size: 90%; }
"""


def chapter_title(nb) -> str:
    """The first ``# `` heading of a notebook's markdown (empty if none)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def render_notebook(path: Path, out: Path) -> Path:
    """Write one executed notebook as a standalone HTML page (lab template, images embedded)."""
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(
        nb, resources={"metadata": {"name": chapter_title(nb) or path.stem}}
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def export_figures(path: Path, out_dir: Path) -> list[Path]:
    """Save every PNG output of an executed notebook as ``<stem>_cell<i>_<k>.png``; return the paths."""
    nb = nbformat.read(path, as_version=4)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, cell in enumerate(nb.cells):
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for k, data in enumerate(pngs):
            target = out_dir / f"{path.stem}_cell{i}_{k}.png"
            target.write_bytes(base64.b64decode(data))
            written.append(target)
    return written


def _fmt(value, fmt: str = ".4g") -> str:
    return format(value, fmt) if isinstance(value, int | float) else str(value)


def index_html(results: dict, titles: dict[str, str], pages: dict[str, str]) -> str:
    """The index page: a row per chapter (link, status, wall time, every recorded number), run metadata."""
    meta = results.get(META_KEY, {})
    walls, status = meta.get("wall_s", {}), meta.get("status", {})
    stems = sorted(set(titles) | {k for k in results if k != META_KEY} | set(status))
    rows = []
    for stem in stems:
        name = html.escape(titles.get(stem) or stem)
        link = f'<a href="{html.escape(pages[stem])}">{name}</a>' if stem in pages else name
        if titles.get(stem):
            link += f"<br><span class='meta'>{html.escape(stem)}</span>"
        state = status.get(stem, "not run" if stem not in pages else "?")
        css = "ok" if state == "ok" else "bad"
        wall = walls.get(stem)
        metrics = "".join(
            f"<li><code>{html.escape(k)}</code> = {_fmt(v)}</li>" for k, v in results.get(stem, {}).items()
        )
        rows.append(
            f"<tr><td>{link}</td>"
            f"<td class='{css}'>{html.escape(state)}</td>"
            f"<td class='num'>{'' if wall is None else f'{wall:.0f} s'}</td>"
            f"<td><ul class='metrics'>{metrics or '<li>none recorded</li>'}</ul></td></tr>"
        )
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    facts = [
        ("profile", meta.get("profile")),
        ("seed", meta.get("seed")),
        ("device", meta.get("device")),
        ("started", meta.get("started")),
        ("finished", meta.get("finished")),
        ("total wall time", f"{meta['total_wall_s']:.0f} s" if "total_wall_s" in meta else None),
        ("versions", versions or None),
    ]
    facts_html = " &middot; ".join(f"{k}: {html.escape(str(v))}" for k, v in facts if v is not None)
    profile = html.escape(str(meta.get("profile", "")))
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>Transfer Learning Notebooks: {profile} run</title><style>{CSS}</style></head><body>\n"
        f"<h1>Transfer Learning Notebooks: the {profile} run</h1>\n<p class='meta'>{facts_html}</p>\n"
        "<table><thead><tr><th>Chapter</th><th>Status</th><th>Wall time</th><th>Headline numbers</th></tr>"
        f"</thead><tbody>\n{chr(10).join(rows)}\n</tbody></table>\n"
        "<p class='meta'>Each chapter links to its executed notebook. Numbers come from "
        "<code>results.json</code>, written by <code>python -m tlutils.course.run</code>.</p>\n</body></html>\n"
    )


def render_run(profile: str = "quick", runs_dir: Path = RUNS_DIR) -> Path:
    """Render ``runs/<profile>/`` to ``runs/<profile>/html/``; return the index page's path."""

    results = load_results(profile, runs_dir)
    run_dir = Path(runs_dir) / profile
    out_dir = run_dir / "html"
    titles, pages = {}, {}
    for path in sorted(run_dir.glob("[0-9][0-9]_*.ipynb")):
        titles[path.stem] = chapter_title(nbformat.read(path, as_version=4))
        pages[path.stem] = render_notebook(path, out_dir / f"{path.stem}.html").name
        export_figures(path, out_dir / "figures")
    index = out_dir / "index.html"
    index.write_text(index_html(results, titles, pages), encoding="utf-8")
    return index


def readme_results_table(
    results: dict,
    anchors: dict[str, dict[str, str | float]] | None = None,
    metrics: dict[str, list[str]] | None = None,
    fmt: str = ".3g",
) -> str:
    """A Markdown table for the README: chapter, metric, this run's value, published anchor.

    ``results``: a ``results.json`` dict. ``anchors``: ``{chapter stem: {metric: "text or number"}}``,
    e.g. ``{"04_dann": {"target_acc.dann": "0.767 (Ganin et al. 2016, MNIST to MNIST-M)"}}``.
    ``metrics``: ``{chapter stem: [metric, ...]}`` to show (default: every recorded metric plus those
    with an anchor). A requested metric or anchor the run did not record is an error naming what it has.
    """
    anchors = anchors or {}
    meta = results.get(META_KEY, {})
    chosen = metrics or {
        stem: list(results.get(stem, {}))
        + [m for m in anchors.get(stem, {}) if m not in results.get(stem, {})]
        for stem in sorted({k for k in results if k != META_KEY} | set(anchors))
    }
    run = f"{meta.get('profile', 'this')} run" + (f", {meta['device']}" if meta.get("device") else "")
    lines = [f"| Chapter | Metric | This repo ({run}) | Published |", "|---|---|---|---|"]
    for stem, names in chosen.items():
        recorded = results.get(stem, {})
        missing = [m for m in names if m not in recorded]
        if missing:
            raise KeyError(
                f"{stem}: {missing} not in results.json; it recorded {sorted(recorded) or 'nothing'} "
                "(fix the name, or re-run the chapter with `python -m tlutils.course.run --only "
                f"{stem.split('_')[0]}`)"
            )
        for name in names:
            anchor = anchors.get(stem, {}).get(name)
            published = "" if anchor is None else _fmt(anchor, fmt)
            lines.append(f"| {stem} | `{name}` | {_fmt(recorded[name], fmt)} | {published} |")
    return "\n".join(lines)


README_METRICS: dict[str, list[str]] = {
    "00_pretrain_source": ["source_acc"],
    "01_feature_extraction": ["target_acc.scratch.k1", "target_acc.linear_probe.k1", "target_acc.scratch.k10",
                              "target_acc.linear_probe.k10", "probe_acc.stage2", "feature_cache.speedup"],
    "02_full_fine_tuning": ["target_acc.finetune.k1", "target_acc.finetune.k10", "forgetting.source_acc.default_lr",
                            "forgetting.source_acc.largest_lr", "negative_transfer.target_acc.k10"],
    "03_staged_unfreezing": ["target_acc.staged.k1", "target_acc.staged.k10", "target_acc.staged.k50"],
    "04_dann": ["target_acc.source_only", "target_acc.adabn", "target_acc.dann", "target_acc.oracle",
                "syn2real.target_acc.source_only", "syn2real.target_acc.dann", "syn2real.target_acc.oracle"],
    "05_mmd": ["mmd.type1_error", "mmd.power", "target_acc.source_only", "target_acc.dan", "mmd.feature.source_only",
               "mmd.feature.dann", "mmd.feature.dan"],
    "06_maml": ["sinusoid.mse.maml.k5.step10", "sinusoid.mse.pretrained.k5.step10", "fewshot.acc.maml.5w1s",
                "fewshot.acc.finetune.5w1s", "fewshot.acc.protonet.5w1s", "fewshot.acc.maml.5w5s",
                "cost.vmap_speedup.sinusoid"],
    "07_distillation_multitask": ["teacher_acc", "student_acc.labels_only", "student_acc.kd", "student_acc.kd_transfer",
                                  "teacher.parameters", "student.parameters", "source_acc.sequential",
                                  "source_acc.multitask", "source_acc.lwf", "target_acc.sequential",
                                  "target_acc.multitask", "target_acc.lwf"],
    "08_lpft_peft": ["lpft.id_acc.lp", "lpft.id_acc.ft", "lpft.id_acc.lpft", "lpft.ood_acc.lp", "lpft.ood_acc.ft",
                     "lpft.ood_acc.lpft", "lpft.paired_diff.ood.ft_minus_lp", "lpft.paired_diff.ood.lpft_minus_ft",
                     "lpft.feature_change.ft", "lpft.feature_change.lpft", "peft.acc.head", "peft.acc.bitfit",
                     "peft.acc.lora", "peft.acc.adapter", "peft.acc.full", "peft.trainable.lora", "peft.trainable.full",
                     "peft.lora.checkpoint_bytes", "peft.full.checkpoint_bytes"],
    "09_self_training_tta": ["source_only.target_acc", "dann.target_acc", "selftrain.target_acc",
                             "syn2real.source_only.target_acc", "syn2real.selftrain.target_acc",
                             "tent.failure.baseline.adabn", "tent.target_acc", "tent.failure.target_acc"],
}
"""The headline numbers the README shows, per chapter (every recorded number is in the HTML index)."""

ANCHORS: dict[str, dict[str, str]] = {
    "04_dann": {
        "target_acc.source_only": "0.5225 (Ganin et al. 2016, Table 2, MNIST → MNIST-M, 60k source images)",
        "target_acc.dann": "0.7666 (same)",
        "target_acc.oracle": "0.9596 (same)",
        "syn2real.target_acc.source_only": "0.5490 (same table, SVHN → MNIST, the closest published pair)",
        "syn2real.target_acc.dann": "0.7385 (same)",
        "syn2real.target_acc.oracle": "0.9942 (same)",
    },
    "05_mmd": {"mmd.type1_error": "0.05 (the level α: a valid test's target)"},
    "06_maml": {
        "sinusoid.mse.maml.k5.step10": "0.35 (Finn et al. 2017, Fig. 3, read off)",
        "sinusoid.mse.pretrained.k5.step10": "2.19 (same)",
        "fewshot.acc.maml.5w1s": "0.987 (Omniglot 5-way 1-shot)",
        "fewshot.acc.maml.5w5s": "0.999 (Omniglot 5-way 5-shot)",
    },
    "07_distillation_multitask": {
        "teacher_acc": "0.9933 (Hinton et al. 2015, MNIST, all 60k labels: large net, 67 errors)",
        "student_acc.labels_only": "0.9854 (same: small net alone, 146 errors)",
        "student_acc.kd": "0.9926 (same: small net distilled at T = 20, 74 errors)",
    },
    "08_lpft_peft": {
        "lpft.paired_diff.ood.ft_minus_lp": "-0.07 (Kumar et al. 2022: FT minus LP, OOD, mean of ten shifts; ID +0.02)",
        "lpft.paired_diff.ood.lpft_minus_ft": "+0.10 (same: LP-FT minus FT, OOD; ID +0.01)",
        "peft.acc.adapter": "within 0.004 of full FT with 3.6 % of the parameters (Houlsby et al. 2019, GLUE)",
    },
    "09_self_training_tta": {
        "dann.target_acc": "0.787 (Gallego et al. 2020, MNIST → MNIST-M, their DANN)",
        "selftrain.target_acc": "0.967 (same: iDANN, iterative confident pseudo-labels from DANN)",
    },
}
"""Published numbers beside ours, with their source. Ours use smaller data and schedules: compare orderings."""

README_BEGIN = "<!-- results:begin"
README_END = "<!-- results:end -->"
FIGURE_TAG = "readme-figure:"


def tagged_figures(run_dir: Path) -> dict[str, tuple[str, bytes]]:
    """``{name: (chapter stem, PNG bytes)}`` for each cell tagged ``readme-figure:<name>`` in an executed run."""
    found: dict[str, tuple[str, bytes]] = {}
    for path in sorted(Path(run_dir).glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            names = [t[len(FIGURE_TAG):] for t in cell.get("metadata", {}).get("tags", []) if t.startswith(FIGURE_TAG)]
            pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            for name in names:
                if not pngs:
                    raise ValueError(f"{path.name}: the cell tagged {FIGURE_TAG}{name} has no figure output; "
                                     "was the notebook executed (python -m tlutils.course.run)?")
                found[name] = (path.stem, base64.b64decode(pngs[0]))
    return found


def readme_block(results: dict, figures: dict[str, str], captions: dict[str, str] | None = None) -> str:
    """The README's generated block: run facts, the headline table and the figures (``{name: relative path}``)."""
    meta = results.get(META_KEY, {})
    metrics = {stem: names for stem, names in README_METRICS.items() if stem in results}
    wall = meta.get("total_wall_s")
    facts = ", ".join(str(x) for x in (
        f"profile `{meta.get('profile', '?')}`", f"seed {meta.get('seed', '?')}", meta.get("device"),
        f"{wall / 60:.1f} min for the chapters run" if wall else None, (meta.get("finished") or "")[:10] or None,
    ) if x)
    lines = [
        f"{README_BEGIN}: generated by `python -m tlutils.course.render --readme` from runs/quick/results.json; "
        "edit tlutils/render.py, not this block -->",
        f"Numbers of the last recorded run ({facts}); accuracies are fractions, means over the chapter's seeds. "
        "Published numbers come from the papers' full-scale setups (more data, longer training): compare the "
        "ordering of methods, not the values.",
        "",
        readme_results_table(results, {k: v for k, v in ANCHORS.items() if k in metrics}, metrics),
        "",
    ]
    captions = captions or {}
    for name, rel in figures.items():
        lines += [f"![{captions.get(name, name)}]({rel})", "", f"*{captions.get(name, name)}*", ""]
    lines.append(README_END)
    return "\n".join(lines)


FIGURE_CAPTIONS = {
    "label_budget_curve": "Chapter 03: test accuracy on mnist5k against labels per class, scratch and the three "
                          "transfer strategies (mean ± std over 3 seeds).",
    "dann_tsne": "Chapter 04: t-SNE of source (mnist5k) and target (mnistm-lite) features before and after DANN.",
    "mmd_per_stage": "Chapter 05: MMD² between digit domains, on pixels and at each stage of the source backbone.",
}


def update_readme(readme: Path, results: dict, run_dir: Path, figure_dir: Path) -> str:
    """Rewrite the generated block of ``readme`` and copy the tagged figures to ``figure_dir``; return the block."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no generated block: add a line starting with '{README_BEGIN}' and a "
                         f"line '{README_END}' where the results should go")
    figures = {}
    for name, (_, png) in tagged_figures(run_dir).items():
        target = figure_dir / f"{name}.png"
        atomic_write_bytes(target, png)
        figures[name] = os.path.relpath(target, readme.parent).replace(os.sep, "/")
    block = readme_block(results, figures, FIGURE_CAPTIONS)
    atomic_write_text(readme, text[:start] + block + text[end + len(README_END):])
    return block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlutils.course.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", help="which run to render (default: quick)")
    parser.add_argument(
        "--runs-dir", type=Path, default=RUNS_DIR, help="where the runs live (default: runs/)"
    )
    parser.add_argument("--table", action="store_true", help="also print the README results table")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite README.md's results block and docs/figures/ from this run")
    args = parser.parse_args(argv)
    try:
        index = render_run(args.profile, args.runs_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {index}")
    if args.table:
        print(readme_results_table(json.loads((index.parent.parent / "results.json").read_text())))
    if args.readme:
        run_dir = index.parent.parent
        update_readme(REPO_ROOT / "README.md", json.loads((run_dir / "results.json").read_text()), run_dir,
                      REPO_ROOT / "docs" / "figures")
        print(f"updated {REPO_ROOT / 'README.md'} and {REPO_ROOT / 'docs' / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
