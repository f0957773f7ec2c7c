"""Claims of chapters 01-03, checked on the quick run's recorded numbers (fixture ``quick_results``).

01 records the scratch and linear-probe label-budget curves and the feature-cache speed-up, 02 the fine-tuning
curve, 03 the staged-unfreezing curve (its table shows all four, from the same cached runs). All accuracies are
means over the same 3 seeds (label subsets) on mnist5k's 1,000 test digits.
"""

import pytest

pytestmark = pytest.mark.notebooks

NB = {"scratch": "01_feature_extraction", "linear_probe": "01_feature_extraction",
      "finetune": "02_full_fine_tuning", "staged": "03_staged_unfreezing"}
BUDGETS = (1, 5, 10, 50)
TRANSFER = ("linear_probe", "finetune", "staged")


def acc(results: dict, strategy: str, k: int) -> float:
    name = f"target_acc.{strategy}.k{k}"
    values = results.get(NB[strategy], {})
    assert name in values, f"{NB[strategy]} did not record {name}; it recorded {sorted(values)[:20]}"
    return values[name]


def test_label_budget_curve_is_recorded_as_fractions(quick_results):
    for strategy in NB:
        for k in BUDGETS:
            value = acc(quick_results, strategy, k)
            assert 0.1 < value <= 1.0, f"target_acc.{strategy}.k{k} = {value} is not an accuracy above chance"


@pytest.mark.parametrize("k,margin", [(1, 0.10), (10, 0.03)])
def test_best_transfer_beats_scratch(quick_results, k, margin):
    scratch = acc(quick_results, "scratch", k)
    best = max(TRANSFER, key=lambda s: acc(quick_results, s, k))
    gap = acc(quick_results, best, k) - scratch
    assert gap >= margin, (f"at {k} label(s) per class the best transfer strategy ({best}) beats scratch by "
                           f"{100 * gap:.1f} points; the claim is >= {100 * margin:.0f}")


def test_more_labels_help_scratch(quick_results):
    curve = [acc(quick_results, "scratch", k) for k in BUDGETS]
    assert curve[-1] > curve[0] + 0.1, f"scratch should improve a lot from 1 to 50 labels per class: {curve}"


def test_feature_cache_speedup(quick_results):
    speedup = quick_results["01_feature_extraction"]["feature_cache.speedup"]
    assert speedup >= 10, f"head training on cached features is only x{speedup:.1f} faster per epoch (claim: >= 10)"


def test_large_learning_rate_forgets_more(quick_results):
    r = quick_results["02_full_fine_tuning"]
    assert r["forgetting.source_acc.largest_lr"] < r["forgetting.source_acc.default_lr"], (
        "fine-tuning with the largest rate should keep less source accuracy than with the default rate")
    assert r["forgetting.cka.largest_lr"] < r["forgetting.cka.default_lr"], "a large rate should move features more"
