"""The label-budget experiment of chapters 01-03: four strategies on the same target, label budgets and seeds.

* ``STRATEGIES``: ``scratch``, ``linear_probe``, ``finetune``, ``staged`` (the methods of ``tlutils.finetune``
  and ``tlutils.features`` applied one way each), sized and paced by a ``tlutils.finetune.StrategyRecipe``.
* ``train_strategy``: one strategy trained on one labelled set.
* ``label_budget_curve``: test accuracy of each strategy at each budget (labels per class) and seed, every run
  cached under ``<data dir>/budget_runs`` with the policy of ``tlutils.cache``.
* ``select_lr``: a strategy's peak rate chosen on a validation split; ``budget_rows``: mean and std over seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from tlutils.augment import get as get_augment
from tlutils.cache import code_fingerprint, load_or_build
from tlutils.config import data_dir, get_device
from tlutils.features import cached_features, data_fingerprint, train_linear_head, weights_fingerprint
from tlutils.finetune import (
    StrategyRecipe,
    fit_one_cycle,
    freeze,
    reinitialise,
    staged_unfreezing,
    tile,
    unfreeze,
    with_new_head,
)
from tlutils.parallel import map_jobs
from tlutils.train import accuracy, progress_enabled

STRATEGIES = ("scratch", "linear_probe", "finetune", "staged")


RECIPE_FIELDS = {
    "scratch": ("epochs", "batch_size", "min_epoch", "weight_decay", "augment", "lr_scratch"),
    "finetune": ("epochs", "batch_size", "min_epoch", "weight_decay", "augment", "lr_finetune"),
    "staged": ("epochs", "batch_size", "min_epoch", "weight_decay", "augment", "lr_staged", "factor"),
    "linear_probe": ("head_epochs", "lr_head", "weight_decay"),
}
"""The recipe fields each strategy's training reads: a run's cache key holds only these, so changing one
strategy's rate (chapter 03 tunes staged's) leaves the other strategies' cached runs valid."""


def train_strategy(strategy: str, source_model: nn.Module, train, *, num_classes: int,
                   recipe: StrategyRecipe = StrategyRecipe(), seed: int = 0, device: str | torch.device | None = None,
                   head_hidden: int | None = None, train_features=None) -> nn.Module:
    """Train one strategy on labelled ``train`` and return the resulting ``Classifier`` (in eval mode).

    * ``scratch``: the source model's architecture with random weights, every layer at ``lr_scratch``.
    * ``linear_probe``: the frozen source backbone + a new head trained on cached features
      (``train_features``: the ``Features`` of ``train``; extracted here when not given).
    * ``finetune``: the source backbone + new head, every layer at ``lr_finetune``.
    * ``staged``: ULMFiT: discriminative rates (``lr_staged / factor**k``) + gradual unfreezing.
    ``source_model`` is never modified; ``seed`` fixes the new head, the random init and the batch order.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    model = with_new_head(source_model, num_classes, hidden=head_hidden, seed=seed)
    unfreeze(model)
    common = dict(batch_size=recipe.batch_size, device=device, seed=seed, progress=False, desc=strategy,
                  augment=get_augment(recipe.augment))
    if strategy == "linear_probe":
        feats = train_features if train_features is not None else cached_features(model, train, device=device)
        model.head, _ = train_linear_head(feats, num_classes=num_classes, epochs=recipe.head_epochs,
                                          lr=recipe.lr_head, weight_decay=recipe.weight_decay, hidden=head_hidden,
                                          device=device, seed=seed)
        freeze(model)
        return model.eval()
    data = tile(train, recipe.min_epoch)
    if strategy == "scratch":
        reinitialise(model.backbone)
        fit_one_cycle(model, data, [{"params": list(model.parameters()), "lr": recipe.lr_scratch}],
                      epochs=recipe.epochs, weight_decay=recipe.weight_decay, **common)
    elif strategy == "finetune":
        fit_one_cycle(model, data, [{"params": list(model.parameters()), "lr": recipe.lr_finetune}],
                      epochs=recipe.epochs, weight_decay=recipe.weight_decay, **common)
    else:
        staged_unfreezing(model, data, epochs=recipe.epochs, lr=recipe.lr_staged, factor=recipe.factor,
                          weight_decay=recipe.weight_decay, **common)
        unfreeze(model)
    return model.eval()


# ----------------------------------------------------------------------------- the run cache


def run_inputs(source_model: nn.Module, train, test, head_hidden: int | None, device: torch.device) -> dict:
    """Everything besides the recipe and (strategy, k, seed) that determines a label-budget run's accuracy."""
    return {"code": code_fingerprint(__name__), "head_hidden": head_hidden,
            "source": weights_fingerprint(source_model.backbone), "train": data_fingerprint(train),
            "test": data_fingerprint(test), "torch": torch.__version__, "device": device.type,
            "threads": 1 if device.type == "cpu" else None}  # every run trains on one thread (map_jobs)


def run_key(recipe: StrategyRecipe, inputs: dict, strategy: str, k: int, seed: int) -> str:
    """Cache key of one run: the recipe's fields that ``strategy`` reads (``RECIPE_FIELDS``), ``inputs`` (see
    :func:`run_inputs`), strategy, k and seed."""
    return recipe.cache_key(only=RECIPE_FIELDS[strategy], **inputs, strategy=strategy, k=int(k), seed=int(seed))


def run_path(cache_dir: Path, key: str, strategy: str, k: int, seed: int) -> Path:
    """``<cache_dir>/<strategy>-k<k>-s<seed>-<key>.json``: readable names, one file per run."""
    return cache_dir / f"{strategy}-k{k}-s{seed}-{key}.json"


def _save_run(record: dict, f: BinaryIO) -> None:
    f.write(json.dumps(record).encode())


def _load_run(path: Path, expected: dict) -> dict:
    """The stored run if it is the one ``expected`` names (same key, strategy, k, seed) with an accuracy in [0, 1]."""
    record = json.loads(path.read_text())
    wrong = [f for f in ("key", "strategy", "k", "seed") if record.get(f) != expected[f]]
    if wrong:
        raise ValueError(f"stored {', '.join(f'{f}={record.get(f)!r}' for f in wrong)}, expected "
                         f"{', '.join(f'{f}={expected[f]!r}' for f in wrong)}")
    acc = record.get("acc")
    if not isinstance(acc, float) or not math.isfinite(acc) or not 0.0 <= acc <= 1.0:
        raise ValueError(f"accuracy {acc!r} is not a fraction in [0, 1]")
    return record


# ----------------------------------------------------------------------------- the experiment


def label_budget_curve(source_model: nn.Module, train, test, *, strategies: Sequence[str] = STRATEGIES,
                       budgets: Sequence[int] = (1, 5, 10, 50), seeds: Sequence[int] = (0, 1, 2),
                       recipe: StrategyRecipe = StrategyRecipe(), device: str | torch.device | None = None,
                       head_hidden: int | None = None, cache: bool = True,
                       progress: bool | None = None) -> dict[str, dict[int, list[float]]]:
    """Test accuracy of each strategy at each label budget (``k`` labels per class) and seed.

    Seed ``s`` draws the labelled subset ``train.per_class(k, s)`` and initialises the new head, so
    every strategy sees the same examples. Returns ``{strategy: {k: [acc per seed]}}`` (fractions).

    With ``cache`` each run's accuracy is kept in ``<data dir>/budget_runs``, keyed by everything that
    determines it (``run_key``: strategy, k, seed, the recipe fields the strategy reads, source weights,
    data, the code of this module and of everything it imports (:func:`tlutils.cache.code_fingerprint`: the
    strategies, ``fit``, the schedules, features, augmentation, the models), torch version and device type;
    every run trains on one CPU thread, side by side in worker processes (:func:`run_grid`)), so chapters that
    share runs (01-03) compute each one once; on the same machine a cached run is the number a fresh run gives.
    A file that is not the run its name promises is reported, deleted and recomputed
    (``tlutils.cache.load_or_build``).
    """
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {STRATEGIES}")
    cells = [(strategy, int(k), seed, recipe) for k in budgets for seed in seeds for strategy in strategies]
    accs = iter(run_grid(source_model, train, test, cells, device=device, head_hidden=head_hidden, cache=cache,
                         progress=progress))
    out: dict[str, dict[int, list[float]]] = {s: {int(k): [] for k in budgets} for s in strategies}
    for strategy, k, _, _ in cells:
        out[strategy][k].append(next(accs))
    return out


def budget_run(strategy: str, source_model: nn.Module, labelled, test, *, num_classes: int, recipe: StrategyRecipe,
               seed: int, device=None, head_hidden: int | None = None, train_features=None,
               test_features=None) -> float:
    """Test accuracy of one strategy trained on ``labelled`` (a linear probe trains and scores on the source
    model's features ``train_features`` / ``test_features``): one run of the grid."""
    model = train_strategy(strategy, source_model, labelled, num_classes=num_classes, recipe=recipe, seed=seed,
                           device=device, head_hidden=head_hidden, train_features=train_features)
    if strategy == "linear_probe":
        return accuracy(model.head, test_features, device=device)
    return accuracy(model, test, device=device)


COST = {"staged": 1.0, "finetune": 1.0, "scratch": 1.0, "linear_probe": 0.2}
"""Relative time of a run of each strategy (jobs are started longest first)."""


def run_grid(source_model: nn.Module, train, test, cells: Sequence[tuple[str, int, int, StrategyRecipe]], *,
             device: str | torch.device | None = None, head_hidden: int | None = None, cache: bool = True,
             progress: bool | None = None, workers: int | None = None) -> list[float]:
    """Test accuracy of every ``(strategy, k, seed, recipe)`` cell (see :func:`label_budget_curve`), in order.

    Cached runs are loaded; the others train side by side (:func:`tlutils.parallel.map_jobs`: worker processes of
    one thread each on a multi-core CPU, in this process on a GPU) and are then cached.
    """
    device = get_device(device) if not isinstance(device, torch.device) else device
    cache_dir = data_dir() / "budget_runs"
    inputs = run_inputs(source_model, train, test, head_hidden, device) if cache else {}
    indices = {(k, seed): train.per_class_index(k, seed) for _, k, seed, _ in cells}

    def expected(cell) -> dict:
        strategy, k, seed, recipe = cell
        return {"key": run_key(recipe, inputs, strategy, k, seed), "strategy": strategy, "k": int(k),
                "seed": int(seed)}

    def path(cell) -> Path:
        return run_path(cache_dir, expected(cell)["key"], cell[0], cell[1], cell[2])

    def stored(cell) -> bool:
        try:
            _load_run(path(cell), expected(cell))
            return True
        except (OSError, ValueError):
            return False

    todo = sorted({cell for cell in cells if not (cache and stored(cell))}, key=lambda c: -COST[c[0]])
    features = {}
    if any(strategy == "linear_probe" for strategy, *_ in todo):
        features = {"train": cached_features(source_model, train, device=device),
                    "test": cached_features(source_model, test, device=device)}
    jobs = [dict(strategy=strategy, source_model=source_model, labelled=train.subset(indices[k, seed]), test=test,
                 num_classes=train.num_classes, recipe=recipe, seed=seed, device=device, head_hidden=head_hidden,
                 train_features=features["train"].subset(indices[k, seed]) if strategy == "linear_probe" else None,
                 test_features=features.get("test") if strategy == "linear_probe" else None)
            for strategy, k, seed, recipe in todo]
    fresh = dict(zip(todo, map_jobs(budget_run, jobs, workers=workers, device=device,
                                    progress=progress_enabled(progress), desc="label-budget runs"), strict=True))
    if not cache:
        return [fresh[cell] for cell in cells]
    return [load_or_build(path(cell), lambda cell=cell: {**expected(cell), "acc": fresh[cell]},
                          load=lambda p, cell=cell: _load_run(p, expected(cell)), save=_save_run,
                          what="label-budget run")["acc"] for cell in cells]


def select_lr(source_model: nn.Module, train, val, *, strategy: str, lrs: Sequence[float], k: int, seed: int = 0,
              recipe: StrategyRecipe = StrategyRecipe(),
              device: str | torch.device | None = None) -> tuple[float, dict[float, float]]:
    """Choose ``strategy``'s peak learning rate on a validation split: train once per rate on
    ``train.per_class(k, seed)`` and score on ``val``. Returns ``(best rate, {rate: val accuracy})``
    (ties go to the first rate listed). Runs are cached like ``label_budget_curve``'s (keyed by ``val``) and
    trained side by side."""
    field = {"scratch": "lr_scratch", "finetune": "lr_finetune", "staged": "lr_staged"}.get(strategy)
    if field is None:
        raise ValueError(f"select_lr tunes a trained strategy (scratch, finetune, staged), not {strategy!r}")
    cells = [(strategy, int(k), seed, recipe.replace(**{field: lr})) for lr in lrs]
    scores = dict(zip(lrs, run_grid(source_model, train, val, cells, device=device, progress=False), strict=True))
    best = max(scores, key=lambda lr: (scores[lr], -list(lrs).index(lr)))
    return best, scores


def budget_rows(curve: dict[str, dict[int, list[float]]]) -> list[dict]:
    """One row ``{strategy, k, mean, std, n}`` per strategy and budget of a ``label_budget_curve`` result
    (mean and std over seeds, ddof=1; std 0 for one seed)."""
    return [{"strategy": s, "k": k, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
             "n": len(v)} for s, per_k in curve.items() for k, v in per_k.items()]
