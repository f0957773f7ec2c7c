"""Unit tests of tlutils.adapt: target batches, per-domain forwards, AdaBN, the recipe."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tlutils.adapt import (
    Recipe,
    adabn,
    domain_features,
    dynamic_weight,
    infinite_batches,
    recipe_for,
    target_images,
)
from tlutils.models import ganin_cnn


def test_infinite_batches_cover_every_index_each_pass():
    it = infinite_batches(10, 4, seed=0)
    seen = torch.cat([next(it) for _ in range(5)])  # 20 indices = two full passes
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    again = infinite_batches(10, 4, seed=0)
    assert torch.equal(torch.cat([next(again) for _ in range(5)]), seen)


def test_target_images_reject_bad_input():
    assert target_images(torch.zeros(4, 1)).shape == (4, 1)
    with pytest.raises(TypeError, match="target"):
        target_images(torch.empty(0, 3))


def test_domain_features_per_domain_equals_joint_without_batch_norm():
    torch.manual_seed(0)
    net = ganin_cnn(3).train()
    xs, xt = torch.rand(4, 3, 32, 32), torch.rand(5, 3, 32, 32)
    a, b = domain_features(net, xs, xt, per_domain=True)
    c, d = domain_features(net, xs, xt, per_domain=False)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(b, d)
    assert a.shape == (4, 768) and b.shape == (5, 768)


def test_adabn_sets_target_statistics_and_keeps_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    target = torch.randn(1024, 3) * 2 + 5
    adapted = adabn(net, target, batch_size=256)  # four equal batches: the average of their means is the mean
    h = net[0](target).detach()
    torch.testing.assert_close(adapted[1].running_mean, h.mean(0))
    torch.testing.assert_close(adapted[1].running_var, h.var(0), rtol=0.05, atol=1e-3)  # mean of batch variances
    assert not adapted.training and adapted[1].momentum == net[1].momentum
    for (k, v), (_, w) in zip(net.state_dict().items(), adapted.state_dict().items(), strict=True):
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, w), k  # weights unchanged
    assert torch.equal(net[1].running_mean, torch.zeros(4))  # the original is untouched
    plain = nn.Linear(3, 2)
    torch.testing.assert_close(adabn(plain, target)(target), plain(target))


def test_dynamic_weight_is_a_sigmoid_of_the_mean_gap():
    fs, ft = torch.zeros(5, 2), torch.zeros(5, 2)
    assert dynamic_weight(fs, ft) == 0.5  # never below 0.5: sigmoid of a norm
    ft[:, 0] = 10.0
    assert dynamic_weight(fs, ft) == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_recipe_length_and_profiles():
    r = Recipe(steps=1000, batch_size=32)
    assert r.epochs_for(4000) == 8 and r.epochs_for(10) == 1000
    cfg = SimpleNamespace(pick=lambda quick, full, **_: quick)
    assert recipe_for(cfg).steps == 1000 and recipe_for(cfg, lr=0.1).lr == 0.1
    assert recipe_for(cfg).batch_norm and recipe_for(cfg).per_domain
