"""benchmarks/dann_flops.py counts one DANN training step's FLOPs right (the numerator of
``train_step_flops_fraction``)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.dann_flops import _domain, _model, matmul_rate, step_flops
from tlutils.adapt import Recipe


def test_step_flops_equal_one_hand_written_forward_and_backward_of_the_dann_step():
    recipe = replace(Recipe(), batch_size=8)
    source, target = _domain(0, 32), _domain(1, 32)
    counted = step_flops(recipe, source, target, k=4)
    model = _model(recipe).train()
    xs, xt, ys = source.x[:8], target.x[:8], source.y[:8]
    counter = FlopCounterMode(display=False)
    with counter:
        fs, ft = model.features(xs), model.features(xt)
        loss = F.cross_entropy(model.classifier.head(fs), ys) + F.binary_cross_entropy_with_logits(
            model.domain_logits(torch.cat([fs, ft]), 0.5), torch.cat([torch.zeros(8), torch.ones(8)]))
        loss.backward()
    assert counted == counter.get_total_flops() > 0


def test_matmul_rate_is_a_positive_flop_rate():
    assert matmul_rate(n=64, repeats=2) > 1e6
