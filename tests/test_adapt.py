"""Unit tests of tlutils.adapt: target batches, per-domain forwards, AdaBN, the recipe, the entropy term and sums of
transfer losses."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tlutils.adapt import (
    AdaptationBatch,
    AdaptationRecipe,
    AdaptationWeight,
    DomainAdaptation,
    TargetEntropy,
    TransferSum,
    adabn,
    domain_features,
    dynamic_weight,
    infinite_batches,
    mean_entropy,
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


def test_adabn_re_estimates_batch_norms_a_linear_probe_froze():
    """A probe's backbone is frozen (``finetune.freeze``: its batch norms force eval mode before each forward);
    AdaBN must still move their statistics, or a probe's "AdaBN" score is silently its source-statistics score."""
    from tlutils.finetune import freeze

    torch.manual_seed(0)
    probe = ganin_cnn(10, batch_norm=True).eval()
    freeze(probe)
    target = torch.rand(64, 3, 32, 32) * 0.5 + 0.5
    first_bn = next(m for m in probe.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    before = first_bn.running_mean.clone()
    adapted = adabn(probe, target, batch_size=32)
    bn = next(m for m in adapted.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.allclose(bn.running_mean, before), "the frozen batch norm was re-estimated on the target"
    assert torch.equal(first_bn.running_mean, before), "the original keeps its statistics"
    probe.train()
    probe(target[:8])
    assert torch.equal(first_bn.running_mean, before), "and stays frozen"


def test_dynamic_weight_is_a_sigmoid_of_the_mean_gap():
    fs, ft = torch.zeros(5, 2), torch.zeros(5, 2)
    assert dynamic_weight(fs, ft) == 0.5  # never below 0.5: sigmoid of a norm
    ft[:, 0] = 10.0
    assert dynamic_weight(fs, ft) == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_recipe_length_and_profiles():
    r = AdaptationRecipe(steps=1000, batch_size=32)
    assert r.epochs_for(4000) == 8 and r.epochs_for(10) == 1000
    cfg = SimpleNamespace(pick=lambda quick, full, **_: quick)
    assert recipe_for(cfg).steps == 1000 and recipe_for(cfg, lr=0.1).lr == 0.1
    assert recipe_for(cfg).batch_norm and recipe_for(cfg).per_domain


# ----------------------------------------------------------------------------- TargetEntropy and TransferSum


class _Scaled(nn.Module):
    """A transfer loss for the sum's tests: ``scale * mean(target features)``, logging ``value`` and ``lambda``."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, batch):
        value = batch.target_features.mean()
        return self.scale * value, {"value": value.detach(), "lambda": 0.5}


def _batch(seed: int = 0) -> AdaptationBatch:
    torch.manual_seed(seed)
    net = ganin_cnn(4, batch_norm=False)
    xs, xt = torch.rand(6, 3, 28, 28), torch.rand(5, 3, 28, 28)
    fs, ft = domain_features(net, xs, xt)
    logits = net.head(fs)
    return AdaptationBatch(net, xs, xt, fs, ft, logits, [logits], progress=1.0)


def test_target_entropy_is_the_mean_entropy_of_the_target_softmax():
    batch = _batch()
    p = torch.softmax(batch.target_logits, 1)
    by_hand = -(p * p.log()).sum(1).mean()
    torch.testing.assert_close(mean_entropy(batch.target_logits), by_hand)
    assert batch.target_logits.shape == (5, 4)  # the head on the target features
    loss, logs = TargetEntropy(AdaptationWeight(maximum=0.3))(batch)  # progress 1: ramp(1) * 0.3
    torch.testing.assert_close(loss, 0.3 * math.tanh(5.0) * by_hand)  # ramp(p) = 2 / (1 + e^-10p) - 1 = tanh(5p)
    assert logs["entropy"] == pytest.approx(float(by_hand.detach()))
    assert logs["lambda"] == pytest.approx(0.3 * math.tanh(5.0))
    assert mean_entropy(torch.zeros(3, 4)) == pytest.approx(math.log(4))  # uniform: log C
    assert mean_entropy(torch.tensor([[50.0, 0.0]])) < 1e-6  # certain: 0


def test_transfer_sum_is_the_weighted_sum_of_its_parts_with_prefixed_logs():
    batch = _batch()
    a, b = _Scaled(2.0), TargetEntropy(AdaptationWeight(maximum=1.0))
    total, logs = TransferSum({"shift": a, "entropy": b}, weights={"entropy": 0.25})(batch)
    loss_a, logs_a = a(batch)
    loss_b, logs_b = b(batch)
    torch.testing.assert_close(total, loss_a + 0.25 * loss_b)
    assert set(logs) == {"shift.loss", "shift.value", "shift.lambda", "entropy.loss", "entropy.entropy",
                         "entropy.lambda"}
    torch.testing.assert_close(logs["shift.loss"], loss_a.detach())
    torch.testing.assert_close(logs["entropy.loss"], 0.25 * loss_b.detach())
    assert logs["shift.value"] == logs_a["value"] and logs["entropy.entropy"] == logs_b["entropy"]
    # the gradient flows to every part's parameters (a domain head, here a scale)
    total.backward()
    assert a.scale.grad is not None and a.scale.grad != 0


def test_transfer_sum_registers_its_parts_for_the_optimiser_and_ddp():
    part = _Scaled(1.0)
    model = DomainAdaptation(ganin_cnn(3), TransferSum({"shift": part, "entropy": TargetEntropy()}))
    assert any(p is part.scale for p in model.parameters())
    assert "transfer.parts.shift.scale" in dict(model.named_parameters())


def test_transfer_sum_rejects_bad_parts_and_weights():
    with pytest.raises(ValueError, match="non-empty dict"):
        TransferSum({})
    with pytest.raises(ValueError, match="non-empty dict"):
        TransferSum([TargetEntropy()])
    with pytest.raises(TypeError, match="part 'entropy' must be an nn.Module.*got function"):
        TransferSum({"entropy": mean_entropy})
    with pytest.raises(ValueError, match="identifiers"):
        TransferSum({"dann.loss": TargetEntropy()})
    with pytest.raises(ValueError, match=r"weights name \['entropi'\], which are not parts; the parts are"):
        TransferSum({"entropy": TargetEntropy()}, weights={"entropi": 0.1})
    with pytest.raises(ValueError, match="finite number >= 0"):
        TransferSum({"entropy": TargetEntropy()}, weights={"entropy": -1.0})
