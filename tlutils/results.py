"""Record a notebook's headline numbers; read a run's numbers back for checks.

``record`` prints the value for the reader and emits a display payload with the MIME type
``application/vnd.tlutils.record+json``; the runner collects those payloads from the executed
notebook into ``runs/<profile>/results.json`` (no side files, nothing to clean up).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tlutils.config import REPO_ROOT

MIME = "application/vnd.tlutils.record+json"
_recorded: dict[str, float] = {}


def _check_name(name: str) -> str:
    if not name or name != name.lower() or " " in name or name.startswith(".") or name.endswith("."):
        raise ValueError(f"metric name {name!r} must be dotted lower case without spaces, e.g. 'target_acc.dann'")
    return name


def record(name: str, value: float, fmt: str = ".4g") -> None:
    """Record ``name = value`` (a finite number) for the run's results.json, and show it once.

    Returns None, so a notebook cell that ends with ``record(...)`` does not echo the value a second time.
    """
    _check_name(name)
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"record({name!r}, ...) needs a number, got {type(value).__name__}") from exc
    if not math.isfinite(value):
        raise ValueError(f"record({name!r}, {value}) : the value must be finite")
    _recorded[name] = value
    text = f"{name} = {value:{fmt}}"
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display({"text/plain": text, MIME: {"name": name, "value": value}}, raw=True)
            return
    except ImportError:
        pass
    print(text)


def recorded() -> dict[str, float]:
    """Everything recorded in this process so far (a copy)."""
    return dict(_recorded)


def collect_from_notebook(nb) -> dict[str, float]:
    """The records inside an executed notebook (an ``nbformat`` node or a path)."""
    if isinstance(nb, (str, Path)):
        import nbformat

        nb = nbformat.read(str(nb), as_version=4)
    out: dict[str, float] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            payload = output.get("data", {}).get(MIME)
            if payload:
                out[payload["name"]] = float(payload["value"])
    return out


def results_path(profile: str = "quick", runs_dir: str | Path | None = None) -> Path:

    return Path(runs_dir or REPO_ROOT / "runs") / profile / "results.json"


def load_results(profile: str = "quick", runs_dir: str | Path | None = None) -> dict:
    """Read ``runs/<profile>/results.json`` (error says how to produce it when missing)."""
    path = results_path(profile, runs_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `python -m tlutils.course.run --profile {profile}` first")
    return json.loads(path.read_text())


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of a list of numbers."""
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else 0.0)


def format_mean_std(values, digits: int = 3) -> str:
    """``"mean ± std"`` of :func:`mean_std`, for tables (e.g. ``"0.812 ± 0.014"``)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """Mean of the paired differences ``a[i] - b[i]`` with its t confidence interval.

    Pairs share everything but the method (same seed: same labelled subset, same head init), so the
    seed-to-seed spread cancels. Returns ``{"mean", "sd", "n", "half_width", "low", "high"}``:
    ``half_width = t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` (needs n >= 2).
    """
    from scipy import stats

    a, b = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need two equally long lists of >= 2 paired values, got {len(a)} and {len(b)}")
    d = a - b
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, len(d) - 1) * sd / np.sqrt(len(d)))
    return {"mean": mean, "sd": sd, "n": len(d), "half_width": half, "low": mean - half, "high": mean + half}


def paired_verdict(d: dict, a: str, b: str, unit: float = 100.0, units: str = "points") -> str:
    """Read a :func:`paired_difference` of ``a - b``: "no detectable difference" when its interval holds 0,
    else who is better and by how much (the mean difference times ``unit``, e.g. accuracy points)."""
    if d["low"] <= 0 <= d["high"]:
        return "no detectable difference"
    winner = a if d["mean"] > 0 else b
    return f"{winner} better by {abs(unit * d['mean']):.1f} {units}"


def record_paired(name: str, d: dict) -> None:
    """Record a :func:`paired_difference` as ``name`` (its mean) and ``name.ci95``, ``name.sd``, ``name.n``."""
    record(name, d["mean"])
    record(f"{name}.ci95", d["half_width"])
    record(f"{name}.sd", d["sd"])
    record(f"{name}.n", d["n"])


def record_budget(rows, strategies=None, prefix: str = "target_acc") -> None:
    """Record the mean of each ``budget_rows`` row as ``{prefix}.{strategy}.k{k}`` (only ``strategies`` if given)."""
    for r in rows:
        if strategies is None or r["strategy"] in strategies:
            record(f"{prefix}.{r['strategy']}.k{r['k']}", r["mean"])


def budget_table(rows, wide: bool = False, digits: int = 3) -> list[dict]:
    """``budget_rows`` as table rows of ``"mean ± std"``: one per strategy and budget, or (``wide``) one per
    strategy with a column per budget (``k=1``, ``k=5``...)."""
    if not wide:
        return [{"strategy": r["strategy"], "labels per class": r["k"],
                 "test accuracy": f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}"} for r in rows]
    table: dict[str, dict] = {}
    for r in rows:
        table.setdefault(r["strategy"], {"strategy": r["strategy"].replace("_", " ")})[f"k={r['k']}"] = \
            f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}"
    return list(table.values())


def domain_game(history, window: int = 25) -> dict:
    """How the domain game of one DANN run went, from its per-batch logs (chapter 04, section 4).

    ``early`` / ``late``: the domain classifier's mean batch accuracy over the first / last tenth of training;
    ``peak``: its highest moving average over ``window`` batches; ``late_loss``: its mean loss over the last tenth;
    ``late_source_acc``: the label predictor's source batch accuracy over the last tenth; ``state``: a sentence
    reading ``late`` (below 0.6: the features fool the classifier; above 0.75: they still give the domain away).
    """
    acc = np.asarray([r["domain_acc"] for r in history.steps if "domain_acc" in r], dtype=float)
    if len(acc) == 0:
        raise ValueError("no 'domain_acc' in the history's per-step logs: pass the History of a DANN run")
    tenth = max(1, len(acc) // 10)
    k = max(1, min(window, len(acc) // 4))
    late = float(acc[-tenth:].mean())
    state = ("close to chance: the features fool the domain classifier" if late < 0.6 else
             "well above chance: the domain classifier still tells the domains apart, the features have not won "
             "the game" if late > 0.75 else "between chance and certainty: the game is undecided")
    tail = history.steps[-tenth:]
    return {"early": float(acc[:tenth].mean()), "peak": float(np.convolve(acc, np.ones(k) / k, "valid").max()),
            "late": late, "late_loss": float(np.mean([r["domain_loss"] for r in tail if "domain_loss" in r])),
            "late_source_acc": float(np.mean([r["acc"] for r in tail if "acc" in r])), "state": state}
