"""Claims of notebook 05 (quick profile): the MMD test keeps its level, has power, and sees DANN's alignment."""

import math

import pytest

pytestmark = pytest.mark.notebooks


def test_type1_error_is_close_to_alpha(quick_results):
    r = quick_results["05_mmd"]
    assert r["mmd.type1_trials"] >= 200, "the type-I error needs at least 200 same-distribution trials"
    # alpha = 0.05; [0.02, 0.08] is more than 3 binomial standard errors wide at 500 trials
    assert 0.02 <= r["mmd.type1_error"] <= 0.08, f"type-I error {r['mmd.type1_error']:.3f} is not close to 0.05"


def test_power_at_the_stated_shift(quick_results):
    r = quick_results["05_mmd"]
    assert r["mmd.power"] >= 0.9, f"power {r['mmd.power']:.2f} at the notebook's shift is below 0.9"


@pytest.mark.xfail(strict=True, reason=(
    "claim of issue 5 that does not hold in the quick profile, stated in notebook 05: after 1,000 steps DANN raises "
    "target accuracy (0.54 -> 0.64) while its feature MMD^2 stays at source-only's level (0.208 vs 0.187, seed 0); "
    "with 4,000 steps the MMD falls (0.144 vs 0.173) but the accuracy gain is gone. strict: a change that makes the "
    "claim hold must update the notebook's reading and remove this marker"))
def test_feature_mmd_falls_after_dann(quick_results):
    r = quick_results["05_mmd"]
    assert r["mmd.feature.source_only"] > r["mmd.feature.dann"], (
        f"DANN should shrink the source/target feature MMD: source-only {r['mmd.feature.source_only']:.4f}, "
        f"DANN {r['mmd.feature.dann']:.4f}"
    )


def test_dan_target_accuracy_recorded_beside_source_only(quick_results):
    r = quick_results["05_mmd"]
    for method in ("source_only", "dann", "dan"):
        acc = r[f"target_acc.{method}"]
        assert math.isfinite(acc) and 0.0 <= acc <= 1.0, f"target_acc.{method} = {acc} is not a fraction"
    # a trained digit classifier is far above chance (0.1) on the target, adapted or not
    assert r["target_acc.dan"] > 0.2, f"DAN's target accuracy {r['target_acc.dan']:.3f} is near chance"
    assert r["target_acc.source_only"] > 0.2, "the source-only baseline should be well above chance"
