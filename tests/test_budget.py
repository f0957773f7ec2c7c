"""Unit tests for tlutils.budget: the strategies, the label-budget curve, its run cache and the rate choice."""

import json
import math
import warnings

import pytest
from helpers import all_equal, tiny_model, toy_data

from tlutils.budget import (
    STRATEGIES,
    budget_rows,
    label_budget_curve,
    select_lr,
    train_strategy,
)
from tlutils.data.domain import Domain
from tlutils.finetune import StrategyRecipe


def toy_domain(n_per_class: int = 6, num_classes: int = 3):
    x, y = toy_data(n_per_class * num_classes, num_classes)
    return Domain(x, y, [str(c) for c in range(num_classes)], "toy", "train")


def test_strategies_are_deterministic_and_leave_the_source_alone(tmp_data):
    source = tiny_model()
    before = [p.clone() for p in source.parameters()]
    recipe = StrategyRecipe(epochs=2, batch_size=8, min_epoch=16, head_epochs=5)
    train = toy_domain()
    for strategy in STRATEGIES:
        a = train_strategy(strategy, source, train, num_classes=3, recipe=recipe, seed=1)
        b = train_strategy(strategy, source, train, num_classes=3, recipe=recipe, seed=1)
        assert all_equal(a.parameters(), b.parameters()), strategy
    assert all_equal(before, source.parameters())


def test_label_budget_curve_shape(tmp_data):
    recipe = StrategyRecipe(epochs=1, batch_size=8, min_epoch=8, head_epochs=3)
    curve = label_budget_curve(tiny_model(), toy_domain(), toy_domain(), budgets=(1, 2), seeds=(0, 1),
                               recipe=recipe, progress=False)
    assert set(curve) == set(STRATEGIES)
    files = sorted((tmp_data / "budget_runs").glob("*.json"))
    assert len(files) == 4 * 2 * 2
    assert label_budget_curve(tiny_model(), toy_domain(), toy_domain(), budgets=(1, 2), seeds=(0, 1),
                              recipe=recipe, progress=False) == curve, "a cached run returns the same number"
    assert sorted((tmp_data / "budget_runs").glob("*.json")) == files
    for per_k in curve.values():
        assert list(per_k) == [1, 2] and all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in per_k.values())
    with pytest.raises(ValueError, match="unknown strategies"):
        label_budget_curve(tiny_model(), toy_domain(), toy_domain(), strategies=["magic"])


def test_changing_one_strategys_rate_keeps_the_other_runs_cached(tmp_data):
    base = StrategyRecipe(epochs=1, batch_size=8, min_epoch=8, head_epochs=3)
    label_budget_curve(tiny_model(), toy_domain(), toy_domain(), budgets=(1,), seeds=(0,), recipe=base,
                       progress=False)
    first = {p.name for p in (tmp_data / "budget_runs").glob("*.json")}
    label_budget_curve(tiny_model(), toy_domain(), toy_domain(), budgets=(1,), seeds=(0,),
                       recipe=base.replace(lr_staged=base.lr_staged * 3), progress=False)
    new = {p.name for p in (tmp_data / "budget_runs").glob("*.json")} - first
    assert len(new) == 1 and next(iter(new)).startswith("staged-"), new
    label_budget_curve(tiny_model(), toy_domain(), toy_domain(), strategies=("finetune", "linear_probe"),
                       budgets=(1,), seeds=(0,), recipe=base.replace(augment="digits"), progress=False)
    new = {p.name for p in (tmp_data / "budget_runs").glob("*.json")} - first
    assert sorted(n.split("-")[0] for n in new) == ["finetune", "staged"], "augment keys trained runs, not the probe"


def test_augmented_strategy_differs_and_select_lr_picks_the_best(tmp_data):
    recipe = StrategyRecipe(epochs=1, batch_size=8, min_epoch=16)
    plain = train_strategy("finetune", tiny_model(), toy_domain(), num_classes=3, recipe=recipe, seed=1)
    jittered = train_strategy("finetune", tiny_model(), toy_domain(), num_classes=3,
                              recipe=recipe.replace(augment="digits"), seed=1)
    assert not all_equal(plain.parameters(), jittered.parameters()), "augmentation changes the training batches"
    best, scores = select_lr(tiny_model(), toy_domain(), toy_domain(3), strategy="finetune", lrs=[1e-4, 1e-2],
                             k=2, recipe=recipe)
    assert set(scores) == {1e-4, 1e-2} and scores[best] == max(scores.values())
    with pytest.raises(ValueError, match="trained strategy"):
        select_lr(tiny_model(), toy_domain(), toy_domain(), strategy="linear_probe", lrs=[1e-3], k=1)


SMALL = StrategyRecipe(epochs=1, batch_size=8, min_epoch=8, head_epochs=3)


def test_a_bad_run_file_is_reported_deleted_and_recomputed(tmp_data):
    args = (tiny_model(), toy_domain(), toy_domain())
    kwargs = dict(strategies=("finetune", "linear_probe"), budgets=(1,), seeds=(0,), recipe=SMALL, progress=False)
    curve = label_budget_curve(*args, **kwargs)
    files = {p.name.split("-")[0]: p for p in (tmp_data / "budget_runs").glob("*.json")}
    files["finetune"].write_text("{not json")
    stored = json.loads(files["linear_probe"].read_text())
    files["linear_probe"].write_text(json.dumps({**stored, "acc": 0.5, "key": "0" * 16}))
    with pytest.warns(UserWarning, match="invalid") as caught:
        again = label_budget_curve(*args, **kwargs)
    assert len(caught) == 2 and again == curve, "both files rebuilt, to the same numbers"
    assert json.loads(files["linear_probe"].read_text()) == stored
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert label_budget_curve(*args, **kwargs) == curve, "the rebuilt files are valid"


@pytest.mark.parametrize("acc", [1.5, -0.1, math.nan, "0.9", None])
def test_an_accuracy_outside_0_1_is_not_trusted(tmp_data, acc):
    args = (tiny_model(), toy_domain(), toy_domain())
    kwargs = dict(strategies=("linear_probe",), budgets=(1,), seeds=(0,), recipe=SMALL, progress=False)
    curve = label_budget_curve(*args, **kwargs)
    (path,) = (tmp_data / "budget_runs").glob("*.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "acc": acc}))
    with pytest.warns(UserWarning, match="not a fraction"):
        assert label_budget_curve(*args, **kwargs) == curve


def test_without_cache_nothing_is_written(tmp_data):
    label_budget_curve(tiny_model(), toy_domain(), toy_domain(), strategies=("linear_probe",), budgets=(1,),
                       seeds=(0,), recipe=SMALL, cache=False, progress=False)
    assert not list(tmp_data.glob("budget_runs/*.json"))


def test_budget_rows_mean_and_std_over_seeds():
    rows = budget_rows({"scratch": {1: [0.2, 0.4], 5: [0.5]}, "finetune": {1: [0.6, 0.6, 0.9]}})
    assert [(r["strategy"], r["k"], r["n"]) for r in rows] == [("scratch", 1, 2), ("scratch", 5, 1), ("finetune", 1, 3)]
    assert rows[0]["mean"] == pytest.approx(0.3) and rows[0]["std"] == pytest.approx(0.1414213562)
    assert rows[1]["std"] == 0.0 and rows[2]["mean"] == pytest.approx(0.7)


def test_runs_trained_in_two_workers_equal_one_process_and_are_cached(tmp_data, monkeypatch):
    from tlutils.budget import run_grid

    args = (tiny_model(), toy_domain(), toy_domain(4))
    cells = [(s, k, seed, SMALL) for s in ("finetune", "linear_probe", "staged") for k in (1, 2) for seed in (0, 1)]
    here = run_grid(*args, cells, cache=False, progress=False, workers=1)
    there = run_grid(*args, cells, progress=False, workers=2)
    assert here == there and len(here) == len(cells)
    assert len(list((tmp_data / "budget_runs").glob("*.json"))) == len(cells)
    monkeypatch.setattr("tlutils.budget.budget_run", lambda *a, **k: pytest.fail("cached: nothing to train"))
    assert run_grid(*args, cells, progress=False) == here
