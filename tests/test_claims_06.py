"""Claims of notebook 06 (quick profile): MAML adapts from few examples, as in Finn et al. (ICML 2017)."""

import pytest

pytestmark = pytest.mark.notebooks

STEPS = (1, 5, 10)


def test_sinusoid_records_both_models_at_every_step_count(quick_results):
    r = quick_results["06_maml"]
    for model in ("maml", "pretrained"):
        for s in STEPS:
            value = r[f"sinusoid.mse.{model}.k5.step{s}"]
            assert 0 < value < 50, f"sinusoid.mse.{model}.k5.step{s} = {value} is not a plausible MSE"


def test_sinusoid_maml_adapts_in_one_step(quick_results):
    r = quick_results["06_maml"]
    maml1, pre1 = r["sinusoid.mse.maml.k5.step1"], r["sinusoid.mse.pretrained.k5.step1"]
    assert maml1 <= 0.9, f"MAML 1-step MSE {maml1:.3f} at K=5 (paper 0.67); it should be <= 0.9"
    assert maml1 <= 0.5 * pre1, f"MAML 1-step MSE {maml1:.3f} should be <= half the pretrained's {pre1:.3f}"


def test_sinusoid_maml_keeps_improving_with_more_steps(quick_results):
    r = quick_results["06_maml"]
    mse = [r[f"sinusoid.mse.maml.k5.step{s}"] for s in STEPS]
    assert mse[2] < mse[0], f"MAML should improve from 1 to 10 steps without over-fitting K=5 points: {mse}"
    for s in STEPS:
        assert r[f"sinusoid.mse.maml.k5.step{s}"] < r[f"sinusoid.mse.pretrained.k5.step{s}"], f"step {s}"


@pytest.mark.parametrize("setting", ["5w1s", "5w5s"])
def test_fewshot_records_accuracy_with_confidence_intervals(quick_results, setting):
    r = quick_results["06_maml"]
    for method in ("maml", "fomaml", "finetune", "protonet"):
        acc, half = r[f"fewshot.acc.{method}.{setting}"], r[f"fewshot.ci95.{method}.{setting}"]
        assert 0.2 < acc <= 1.0, f"{method} {setting} accuracy {acc:.3f} (chance is 0.2)"
        assert 0 < half < 0.1, f"{method} {setting} 95% CI half-width {half:.3f}: too few episodes?"


def test_fewshot_maml_one_shot(quick_results):
    r = quick_results["06_maml"]
    acc = r["fewshot.acc.maml.5w1s"]
    assert acc >= 0.75, f"MAML 5-way 1-shot accuracy on the meta-test alphabets is {acc:.3f}; needs >= 0.75"


def test_fewshot_more_shots_help(quick_results):
    r = quick_results["06_maml"]
    for method in ("maml", "fomaml", "finetune", "protonet"):
        one, five = r[f"fewshot.acc.{method}.5w1s"], r[f"fewshot.acc.{method}.5w5s"]
        assert five > one, f"{method}: 5-shot accuracy {five:.3f} should beat 1-shot {one:.3f}"


def test_sinusoid_baseline_step_size_is_bracketed_by_its_grid(quick_results):
    r = quick_results["06_maml"]
    lo, step, hi = (r[f"sinusoid.pretrained.{k}"] for k in ("step_grid_min", "step_size", "step_grid_max"))
    assert lo < step < hi, f"the pretrained baseline's step {step} sits at an edge of its grid [{lo}, {hi}]: widen it"


def test_protonet_is_a_real_baseline(quick_results):
    """Prototypical Networks, trained on MAML's episodes, beat chance by far at both shot counts."""
    r = quick_results["06_maml"]
    assert r["fewshot.acc.protonet.5w1s"] >= 0.6 and r["fewshot.acc.protonet.5w5s"] >= 0.75


@pytest.mark.parametrize("setting", ["5w1s", "5w5s"])
def test_maml_is_under_trained_not_broken(quick_results, setting):
    """Accuracy rises with meta-training length; the last snapshot is the trained model on the same episodes."""
    r = quick_results["06_maml"]
    curve = {int(k.split(".")[3][1:]): v for k, v in r.items()
             if k.startswith("fewshot.acc_vs_meta_steps.maml.") and k.endswith(setting)}
    steps = sorted(curve)
    assert len(steps) >= 3 and steps[0] == 0, f"snapshots at {steps}"
    assert curve[steps[-1]] == pytest.approx(r[f"fewshot.acc.maml.{setting}"], abs=1e-9), "same model, same episodes"
    assert curve[steps[-1]] > curve[0] + 0.03, f"{setting}: meta-training should add accuracy: {curve}"
