"""Claims of notebook 09 (quick profile): self-training from DANN, self-training on syndigits -> mnist5k, TENT."""

import pytest

pytestmark = pytest.mark.notebooks

CHAPTER = "09_self_training_tta"

FLOOR, SEED_FLOOR = 0.92, 0.90
"""Issue 21's floor on mnist5k -> mnistm-lite: 90 % of the source-only-to-oracle gap of chapter 04 (oracle 0.942)."""


def test_records_every_headline_number(quick_results):
    r = quick_results[CHAPTER]
    names = [f"{m}.target_acc" for m in ("source_only", "adabn", "dann", "selftrain", "oracle")]
    names += [f"syn2real.{m}.target_acc" for m in ("source_only", "adabn", "selftrain", "oracle")]
    names += ["selftrain.target_acc.std", "selftrain.target_acc.min", "selftrain.pseudo_label_acc",
              "syn2real.selftrain.target_acc.std", "selftrain.too_low_threshold.target_acc",
              "tent.target_acc", "tent.failure.target_acc", "tent.failure.baseline.adabn"]
    missing = [n for n in names if n not in r]
    assert not missing, f"not recorded: {missing}"
    for n in names:
        if n.endswith("_acc") or n.endswith("acc.min") or n.endswith(".adabn"):
            assert 0.0 < r[n] <= 1.0, f"{n} = {r[n]} is not an accuracy"
    for n in ("transfer_gain.selftrain.min", "syn2real.transfer_gain.selftrain.min"):
        assert n in r, f"not recorded: {n}"


def test_selftraining_beats_dann_by_more_than_the_seed_spread(quick_results):
    r = quick_results[CHAPTER]
    gain = r["selftrain.target_acc"] - r["dann.target_acc"]
    spread = r["selftrain.target_acc.std"] + r["dann.target_acc.std"]
    assert gain > spread, f"self-training {r['selftrain.target_acc']:.3f} vs DANN {r['dann.target_acc']:.3f}"


def test_selftraining_every_seed_reaches_the_seed_floor(quick_results):
    r = quick_results[CHAPTER]
    assert r["selftrain.target_acc.min"] >= SEED_FLOOR, (
        f"worst seed {r['selftrain.target_acc.min']:.3f} (issue 21's floor for every seed: {SEED_FLOOR})")


def test_selftraining_closes_nine_tenths_of_the_gap_to_the_oracle(quick_results):
    r = quick_results[CHAPTER]
    so, st, oracle = (r[f"{m}.target_acc"] for m in ("source_only", "selftrain", "oracle"))
    share = (st - so) / (oracle - so)
    assert share >= 0.9, f"self-training closes {share:.0%} of the source-only-to-oracle gap ({so:.3f} -> {st:.3f}, " \
        f"oracle {oracle:.3f}); issue 21 asks for 90 %"


def test_selftraining_reaches_the_mean_floor(quick_results):
    """Issue 21's floor. The recipe (shares 40/60/80/90 %) was chosen on seeds 0-5 and checked on seeds 6-8, never
    run before: 0.922 / 0.926 / 0.929, mean 0.926 (docs/ch09_prototype_notes.md, session 8)."""
    r = quick_results[CHAPTER]
    assert r["selftrain.target_acc"] >= FLOOR, f"mean {r['selftrain.target_acc']:.3f} (floor {FLOOR})"


def test_selftraining_gains_on_syndigits_to_mnist(quick_results):
    r = quick_results[CHAPTER]
    gain = r["syn2real.selftrain.target_acc"] - r["syn2real.source_only.target_acc"]
    assert gain >= 0.05 and r["syn2real.transfer_gain.selftrain.min"] >= 0.02, (
        f"gain {gain:+.3f} (aim +0.05), smallest over seeds {r['syn2real.transfer_gain.selftrain.min']:+.3f} "
        "(aim +0.02)")


def test_tent_with_tiny_batches_falls_below_adabn(quick_results):
    r = quick_results[CHAPTER]
    assert r["tent.failure.target_acc"] < r["tent.failure.baseline.adabn"], (
        f"TENT on batches of two {r['tent.failure.target_acc']:.3f} vs AdaBN {r['tent.failure.baseline.adabn']:.3f}")
