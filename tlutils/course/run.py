"""The notebook runner: execute the chapters in order with papermill and gather their numbers.

    python -m tlutils.course.run [--profile quick|full] [--only 01 04] [--seed N]

Executed notebooks go to ``runs/<profile>/``; every ``record(...)`` they made goes to
``runs/<profile>/results.json`` with the run's metadata; a summary table is printed. The exit
status is non-zero when a notebook failed, and the message names the notebook and the cell.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tlutils.atomic import atomic_write_text
from tlutils.config import PROFILES, REPO_ROOT, get_device, resolve_profile
from tlutils.results import collect_from_notebook

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUNS_DIR = REPO_ROOT / "runs"
META_KEY = "_run"
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]
"""Kernel arguments: no start-up warnings (e.g. ipykernel's "running over TCP" notice) in the runner's log.
Warnings raised by notebook code still appear in the cells' outputs."""


def list_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR, only: list[str] | None = None) -> list[Path]:
    """Chapters in reading order (``NN_name.ipynb``), optionally only those whose prefix or stem matches."""
    books = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return books
    chosen = [p for p in books if any(p.stem == o or p.stem.split("_")[0] == o.zfill(2) for o in only)]
    unknown = [o for o in only if not any(p.stem == o or p.stem.split("_")[0] == o.zfill(2) for p in books)]
    if unknown:
        raise SystemExit(f"error: no notebook matches {unknown}; available: {', '.join(p.stem for p in books)}")
    return chosen


def _versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "sklearn", "numpy", "papermill"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - versions are informational
            pass
    return out


def _device_name() -> str:

    dev = get_device()
    if dev.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"{dev.type} ({os.cpu_count()} cores)"


def failed_cell(nb_path: Path) -> str:
    """Describe the first cell of an executed notebook that raised (index, first line, error)."""
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    code_index = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_index += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                return f"code cell {code_index} ({first[:60]!r}): {out.get('ename')}: {out.get('evalue')}"
    return "unknown cell"


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished children: the kernels it ran.

    Unlike wall time it depends little on what else a shared machine runs (the kernel must exit and be
    reaped first, which papermill does before returning)."""

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def execute(nb: Path, out_dir: Path, profile: str, seed: int, timeout: int | None) -> tuple[float, str | None]:
    """Run one notebook with papermill; return (wall seconds, error description or None)."""
    import papermill as pm

    out = out_dir / nb.name
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(nb),
            str(out),
            parameters={"PROFILE": profile, "SEED": seed},
            kernel_name="python3",
            cwd=str(nb.parent),
            progress_bar=False,
            execution_timeout=timeout,
            log_output=False,
            extra_arguments=QUIET_KERNEL,
        )
        error = None
    except pm.PapermillExecutionError as exc:
        error = f"{nb.name}: code cell {exc.exec_count} failed: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # noqa: BLE001 - kernel death, timeout, bad notebook JSON
        error = f"{nb.name}: {type(exc).__name__}: {exc}"
        if out.exists():
            error += f" (at {failed_cell(out)})"
    return time.perf_counter() - start, error


def write_results(path: Path, results: dict) -> None:
    """Write results.json atomically."""
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True))


def summary_table(results: dict, stems: list[str] | None = None, max_metrics: int = 6) -> str:
    """Plain-text table: notebook, wall seconds, headline metrics."""
    meta = results.get(META_KEY, {})
    walls = meta.get("wall_s", {})
    status = meta.get("status", {})
    rows = [("notebook", "status", "wall s", "headline metrics")]
    for stem in stems or [k for k in results if k != META_KEY]:
        metrics = results.get(stem, {})
        shown = ", ".join(f"{k}={v:.3g}" for k, v in list(metrics.items())[:max_metrics])
        more = f" (+{len(metrics) - max_metrics} more)" if len(metrics) > max_metrics else ""
        rows.append((stem, status.get(stem, "?"), f"{walls.get(stem, float('nan')):.0f}", shown + more))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
    lines.insert(1, "-" * min(160, max(len(line) for line in lines)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlutils.course.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile", default=None, help=f"one of {', '.join(PROFILES)} (default: $TLUTILS_PROFILE or quick)"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NN", help="run only these notebooks (prefix like 01 or full stem)"
    )
    parser.add_argument("--seed", type=int, default=0, help="SEED parameter passed to every notebook (default 0)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where executed notebooks and results go")
    parser.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    args = parser.parse_args(argv)
    try:
        profile = resolve_profile(args.profile)
    except ValueError as exc:
        parser.error(str(exc))
    books = list_notebooks(args.notebooks_dir, args.only)
    if not books:
        parser.error(f"no notebooks found in {args.notebooks_dir}")
    out_dir = args.runs_dir / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "results.json"
    results = json.loads(results_file.read_text()) if (args.only and results_file.exists()) else {}
    meta = results.setdefault(META_KEY, {})
    meta.update(
        {
            "profile": profile,
            "seed": args.seed,
            "device": _device_name(),
            "versions": _versions(),
            "finished": None,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    meta.setdefault("wall_s", {})
    meta.setdefault("cpu_s", {})
    meta.setdefault("status", {})
    os.environ["TLUTILS_PROGRESS"] = "0"  # keep saved notebooks free of progress-bar noise
    os.environ["TLUTILS_PROFILE"] = profile


    failures = []
    for nb in books:
        print(f"[{profile}] running {nb.name} ...", flush=True)
        cpu_before = _children_cpu_s()
        wall, error = execute(nb, out_dir, profile, args.seed, args.timeout)
        meta["cpu_s"][nb.stem] = round(_children_cpu_s() - cpu_before, 1)
        stem = nb.stem
        out = out_dir / nb.name
        results[stem] = collect_from_notebook(out) if out.exists() else {}
        meta["wall_s"][stem] = round(wall, 1)
        meta["status"][stem] = "ok" if error is None else "FAILED"
        print(f"[{profile}] {nb.name}: {'ok' if error is None else 'FAILED'} in {wall:.0f} s", flush=True)
        if error:
            failures.append(error)
            print(f"  error: {error}\n  executed notebook: {out}", file=sys.stderr, flush=True)
        write_results(results_file, results)
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["total_wall_s"] = round(sum(meta["wall_s"].values()), 1)
    write_results(results_file, results)
    print()
    print(summary_table(results, [nb.stem for nb in books]))
    print(f"\nresults: {results_file}   executed notebooks: {out_dir}/")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
