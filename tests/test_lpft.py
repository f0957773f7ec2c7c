"""Unit tests for tlutils.lpft: each PEFT method trains what it names at equal steps, LP-FT's second stage starts
from the probe's head, and feature change reads 1 / 0 for unchanged features."""

import pytest
import torch

from tests.helpers import tiny_model, toy_data
from tlutils.lpft import PEFT_METHODS, PeftRecipe, feature_change, lp_ft, train_peft
from tlutils.peft import count_parameters

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
