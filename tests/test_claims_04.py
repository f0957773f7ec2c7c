"""Claims of notebook 04 (DANN) on the quick run's numbers (fractions in [0, 1], means over 3 seeds)."""

from __future__ import annotations

import pytest

METHODS = ("source_only", "adabn", "dann", "oracle")
PAIRS = {"mnist5k -> mnistm-lite": "", "syndigits -> mnist5k": "syn2real."}


@pytest.fixture
def r(quick_results) -> dict:
    if "04_dann" not in quick_results:
        pytest.fail("notebook 04_dann recorded nothing; see runs/quick/runner.log for its error")
    return quick_results["04_dann"]


@pytest.mark.parametrize("prefix", PAIRS.values(), ids=PAIRS.keys())
def test_every_method_is_recorded_as_a_fraction_with_its_spread(r, prefix):
    for m in METHODS:
        assert 0.0 <= r[f"{prefix}target_acc.{m}"] <= 1.0, f"{prefix}target_acc.{m} must be a fraction"
        assert 0.0 <= r[f"{prefix}target_acc.{m}.std"] < 0.15, f"{prefix}target_acc.{m}.std is implausibly large"
    for m in ("adabn", "dann", "oracle"):
        gain = r[f"{prefix}transfer_gain.{m}"]
        assert gain == pytest.approx(r[f"{prefix}target_acc.{m}"] - r[f"{prefix}target_acc.source_only"], abs=1e-9), (
            f"{prefix}transfer_gain.{m} must be the mean of the per-seed differences to source-only")


def test_dann_gains_at_least_15_points_and_reaches_075_on_mnist_to_mnistm(r):
    dann, source_only = r["target_acc.dann"], r["target_acc.source_only"]
    assert dann - source_only >= 0.15, f"DANN {dann:.3f} vs source-only {source_only:.3f}: gain below 15 points"
    assert dann >= 0.75, f"DANN reaches only {dann:.3f} on mnistm-lite (>= 0.75 expected)"
    assert r["transfer_gain.dann.min"] > 0.05, "DANN should beat source-only on every seed, not only on average"


def test_adabn_helps_and_dann_adds_to_it_on_mnist_to_mnistm(r):
    assert r["target_acc.adabn"] > r["target_acc.source_only"], "target statistics alone should help on MNIST-M"
    assert r["target_acc.dann"] - r["target_acc.adabn"] >= 0.05, "the domain game should add to normalisation"


def test_the_shift_is_real_and_the_oracle_is_the_ceiling_on_mnist_to_mnistm(r):
    assert r["target_acc.oracle"] - r["target_acc.source_only"] > 0.2, "MNIST-M should be hard for source-only"
    assert r["target_acc.oracle"] > r["target_acc.dann"], "DANN without target labels should stay below the oracle"


def test_dann_never_collapses_on_synthetic_to_real(r):
    # Before BatchNorm DANN fell 23-31 points below source-only here. Now the per-seed difference stays within the
    # seed-to-seed noise of a single method (source-only's std over seeds is about 2.5 points on this pair).
    assert r["syn2real.transfer_gain.dann.min"] >= -0.05, (
        f"DANN fell {-100 * r['syn2real.transfer_gain.dann.min']:.1f} points below source-only on a seed (collapse)")
    assert r["syn2real.target_acc.oracle"] - r["syn2real.target_acc.source_only"] > 0.2, "the shift should be real"


@pytest.mark.xfail(strict=False, reason=(
    "the aim (DANN >= source-only + 3 points on syndigits -> mnist5k) is not met reliably: with BatchNorm and "
    "per-domain statistics DANN no longer collapses, but gains -1.0 +- 2.4 points over seeds 0-2 with one thread per "
    "run (+0.3 +- 2.5 when the runs used two threads; calibration seeds 10-12: "
    "-0.5 on average; lambda_max 0.3 and 0.1, a 1024-1024 domain head, 2,000 steps and Adam gave no reliable gain "
    "either); the runner's --seed 7 (seeds 7-9) gave +4.5 (smallest +0.6), so whether a run passes depends on its "
    "seeds, and the marker is not strict. Notebook 04, section 8, shows why (per-digit accuracy, nearest-neighbour "
    "agreement). A recipe that meets the aim at every seed must update the notebook and remove this marker. "
    "Self-training on the target's confident predictions lifts this pair: a claim of chapter 09, "
    "tests/test_claims_09.py"))
def test_dann_gains_3_points_on_synthetic_to_real(r):
    assert r["syn2real.transfer_gain.dann"] >= 0.03
