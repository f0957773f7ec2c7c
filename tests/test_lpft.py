"""Unit tests for tlutils.lpft: each PEFT method trains what it names at equal steps, LP-FT's second stage starts
from the probe's head, and feature change reads 1 / 0 for unchanged features."""

import pytest
import torch

from tests.helpers import tiny_model, toy_data
from tlutils.adapt import adabn
from tlutils.data import Domain
from tlutils.lpft import PEFT_METHODS, PeftRecipe, domain_accuracy, feature_change, lp_ft, select_lr, train_peft
from tlutils.peft import count_parameters
from tlutils.train import accuracy

RECIPE = PeftRecipe(epochs=1, min_epoch=48, batch_size=16)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_each_method_trains_the_same_steps_and_full_trains_most(method):
    source = tiny_model()
    model, history = train_peft(method, source, toy_data(), num_classes=3, recipe=RECIPE, seed=0)
    assert len(history.epochs) == 1
    n = count_parameters(model)
    if method == "full":
        assert n == count_parameters(model, trainable=False)
    else:
        assert n < count_parameters(model, trainable=False)


def test_source_model_unchanged_and_unknown_method_named():
    source = tiny_model()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    train_peft("full", source, toy_data(), num_classes=3, recipe=RECIPE)
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())
    with pytest.raises(ValueError, match="choose one of"):
        train_peft("prefix", source, toy_data(), num_classes=3, recipe=RECIPE)


def test_lp_ft_runs_both_stages_and_moves_features_less_than_nothing_changed():
    source = tiny_model().eval()
    x, y = toy_data()
    model, (h_lp, h_ft) = lp_ft(source, (x, y), num_classes=3, recipe=RECIPE, seed=0)
    assert len(h_lp.epochs) == len(h_ft.epochs) == 1
    assert count_parameters(model) == count_parameters(model, trainable=False)
    same = feature_change(source, source, (x, y))
    assert same["cka"] == pytest.approx(1.0) and same["relative"] == 0.0
    moved = feature_change(source, model, (x, y))
    assert moved["relative"] > 0 and moved["cka"] <= 1.0 + 1e-9


def test_lp_ft_from_a_given_probe_equals_training_the_probe_itself_and_leaves_it_unchanged():
    source = tiny_model().eval()
    data = toy_data()
    probe, _ = train_peft("head", source, data, num_classes=3, recipe=RECIPE, seed=0)
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    from_probe, (h_lp, _) = lp_ft(source, data, num_classes=3, recipe=RECIPE, seed=0, probe=probe)
    itself, _ = lp_ft(source, data, num_classes=3, recipe=RECIPE, seed=0)
    assert h_lp is None
    assert all(torch.equal(before[k], v) for k, v in probe.state_dict().items())
    assert all(torch.equal(v, itself.state_dict()[k]) for k, v in from_probe.state_dict().items())


def test_select_lr_keeps_the_best_validation_rate_and_returns_its_run():
    source = tiny_model().eval()
    data = toy_data()
    best, scores, models = select_lr("lora", source, data, data, lrs=[1e-1, 1e-5], num_classes=3, recipe=RECIPE)
    assert set(scores) == set(models) == {1e-1, 1e-5}
    assert scores[best] == max(scores.values())
    assert accuracy(models[best], data) == scores[best]
    with pytest.raises(ValueError, match="at least one"):
        select_lr("lora", source, data, data, lrs=[], num_classes=3, recipe=RECIPE)


def test_domain_accuracy_adapts_batch_norm_per_domain_without_changing_the_model():
    source = tiny_model().eval()
    x, y = toy_data()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    same = Domain(x, y, ["a", "b", "c"], "toy", "test")
    shifted = Domain((0.5 * x + 0.5).clamp(0, 1), y, ["a", "b", "c"], "toy-shifted", "test")
    plain = domain_accuracy(source, {"id": same, "shifted": shifted}, adapt_bn=False)
    adapted = domain_accuracy(source, {"id": same, "shifted": shifted})
    assert set(plain) == set(adapted) == {"id", "shifted"}
    assert plain["shifted"] == accuracy(source, shifted)
    assert adapted["shifted"] == accuracy(adabn(source, shifted), shifted)
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())
