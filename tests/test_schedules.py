"""Schedules are functions of progress; LRSchedule is the one learning-rate mechanism of fit."""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tlutils.finetune import GradualUnfreezing
from tlutils.models import build_model
from tlutils.schedules import LRSchedule, annealing, one_cycle, ramp
from tlutils.train import fit


def test_ramp_at_0_half_1_and_with_delay():
    assert ramp(0.0) == 0.0
    assert ramp(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1) == pytest.approx(math.tanh(2.5))
    assert ramp(1.0) == pytest.approx(0.9999092, abs=1e-7)
    assert ramp(0.5, gamma=0.0) == 0.0
    assert ramp(0.2, delay=0.2) == 0.0 and ramp(0.1, delay=0.2) == 0.0
    assert ramp(0.6, delay=0.2) == pytest.approx(ramp(0.5))  # q = (0.6 - 0.2) / 0.8 = 0.5
    with pytest.raises(ValueError, match="delay"):
        ramp(0.5, delay=1.0)


def test_annealing_at_0_half_1():
    assert annealing(0.0) == 1.0
    assert annealing(0.5) == pytest.approx(6**-0.75)
    assert annealing(1.0) == pytest.approx(11**-0.75)
    assert annealing(0.5, alpha=2.0, beta=1.0) == pytest.approx(0.5)


def test_one_cycle_warms_up_peaks_and_decays():
    assert one_cycle(0.0) == pytest.approx(0.1)
    assert one_cycle(0.125) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the 25 % warm-up
    assert one_cycle(0.25) == pytest.approx(1.0)
    assert one_cycle(1.0) == pytest.approx(0.01)
    ps = [i / 100 for i in range(25, 101)]
    values = [one_cycle(p) for p in ps]
    assert values == sorted(values, reverse=True)  # cosine decay is monotone
    assert one_cycle(0.0, pct_start=0.2, div_factor=25.0) == pytest.approx(0.04)


@pytest.mark.parametrize("fn", [ramp, annealing, one_cycle])
def test_schedules_reject_progress_outside_unit_interval(fn):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(1.5)


def test_lr_schedule_scales_every_group_and_restores_them():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    cb, state = LRSchedule(partial(annealing, alpha=10)), SimpleNamespace(optimizer=opt, progress=0.0)
    for p in (0.0, 0.5, 1.0):
        state.progress = p
        cb.on_batch_start(state)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * annealing(p), 0.01 * annealing(p)])
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0})  # e.g. gradual unfreezing
    cb.on_batch_start(state)
    assert opt.param_groups[2]["lr"] == pytest.approx(annealing(1.0))
    cb.on_fit_end(state)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01, 1.0]


def test_fit_logs_the_scheduled_rate_of_each_epochs_last_batch():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    hist = fit(model, (x, y), epochs=2, batch_size=16, optimizer=opt, callbacks=[LRSchedule(one_cycle)],
               device="cpu", progress=False)
    # 4 batches per epoch, 8 in all: the last batch of epoch 1 ran at progress 3/8, of epoch 2 at 7/8
    assert hist.column("lr") == pytest.approx([one_cycle(3 / 8), one_cycle(7 / 8)])
    assert opt.param_groups[0]["lr"] == 1.0


def test_gradual_unfreezing_groups_are_scheduled_too():
    torch.manual_seed(0)
    model = build_model("resnet_small", 3, widths=(4, 8, 8, 8))
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 3, (32,))
    opt = torch.optim.SGD([p for p in model.head.parameters()], lr=0.1)
    unfreezing = GradualUnfreezing(lr=0.1)
    fit(model, (x, y), epochs=2, batch_size=16, optimizer=opt, device="cpu", progress=False,
        callbacks=[unfreezing, LRSchedule(one_cycle)])
    added = [r for r in unfreezing.lr_trace if len(r) > 2]
    assert added, "the second epoch trains a part added to the optimizer"
    row = added[-1]  # after the last batch (step 4 of 4, run at progress 3/4)
    scale = one_cycle(3 / 4)
    head, new = [v for k, v in row.items() if k != "step"][:2]
    assert head == pytest.approx(0.1 * scale)
    assert new == pytest.approx(0.1 / unfreezing.factor * scale)  # its discriminative rate, scheduled
