"""Unit tests for tlutils.finetune: freezing, batch norm in frozen parts, discriminative rates, schedules."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import all_equal, tiny_model, toy_data

from tlutils.finetune import (
    GradualUnfreezing,
    discriminative_groups,
    discriminative_lrs,
    fine_tune,
    fit_one_cycle,
    freeze,
    part_names,
    replace_head,
    staged_unfreezing,
    tile,
    trainable_parts,
    unfreeze,
    with_new_head,
)
from tlutils.models import Classifier
from tlutils.train import fit

PARTS = ["stem", "stage1", "stage2", "stage3", "stage4", "head"]


def params_of(model, part):
    table = dict(model.backbone.stages.items(), head=model.head)
    return [p.detach().clone() for p in table[part].parameters()]


def bn_stats(model, part):
    table = dict(model.backbone.stages.items(), head=model.head)
    return [b.detach().clone() for n, b in table[part].named_buffers() if "running" in n]


def test_part_names_bottom_up():
    assert part_names(tiny_model()) == PARTS


def test_no_gradient_reaches_frozen_parameters():
    model = tiny_model()
    assert freeze(model, ["stem", "stage1", "stage2"]) == ["stem", "stage1", "stage2"]
    x, y = toy_data(8)
    F.cross_entropy(model(x), y).backward()
    table = dict(model.backbone.stages.items(), head=model.head)
    for name in ["stem", "stage1", "stage2"]:
        assert all(p.grad is None and not p.requires_grad for p in table[name].parameters()), name
    for name in ["stage3", "stage4", "head"]:
        assert all(p.grad is not None for p in table[name].parameters()), name
    assert trainable_parts(model) == ["stage3", "stage4", "head"]


def test_default_freeze_is_the_backbone():
    model = tiny_model()
    freeze(model)
    assert trainable_parts(model) == ["head"]
    unfreeze(model)
    assert trainable_parts(model) == PARTS


def test_frozen_batchnorm_statistics_do_not_move_during_fit():
    model = tiny_model()
    freeze(model, ["stem", "stage1"])
    frozen_before = bn_stats(model, "stem") + bn_stats(model, "stage1")
    frozen_weights = params_of(model, "stem") + params_of(model, "stage1")
    trained_before = bn_stats(model, "stage3")
    fit(model, toy_data(), epochs=2, batch_size=16, progress=False, seed=0)
    after = bn_stats(model, "stem") + bn_stats(model, "stage1") + params_of(model, "stem") + params_of(model, "stage1")
    assert all_equal(frozen_before + frozen_weights, after), "a frozen part changed during training"
    assert not all_equal(trained_before, bn_stats(model, "stage3")), "trainable batch norm statistics must move"


def test_frozen_batchnorm_stays_in_eval_mode_after_model_train():
    model = tiny_model()
    freeze(model, "stem")
    model.train()
    model(toy_data(4)[0])
    bns = [m for m in model.backbone.stages["stem"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    unfreeze(model, "stem")
    assert all(bn.training for bn in bns), "unfreezing puts batch norm back into the model's mode"
    before = bn_stats(model, "stem")
    model(toy_data(4)[0])
    assert not all_equal(before, bn_stats(model, "stem"))


def test_unknown_part_is_a_clear_error():
    with pytest.raises(ValueError, match="stage9.*parts are"):
        freeze(tiny_model(), ["stage9"])


def test_discriminative_lrs_are_geometric_top_down():
    lrs = discriminative_lrs(tiny_model(), 1e-2, factor=2.6)
    assert list(lrs) == PARTS[::-1]
    for k, name in enumerate(PARTS[::-1]):
        assert lrs[name] == pytest.approx(1e-2 / 2.6**k)
    assert set(discriminative_lrs(tiny_model(), 1e-3, factor=1.0).values()) == {1e-3}


def test_discriminative_groups_cover_every_parameter_once():
    model = tiny_model()
    freeze(model)
    groups = discriminative_groups(model, 1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert [g["name"] for g in groups] == PARTS[::-1]
    only = discriminative_groups(model, 1e-3, trainable_only=True)
    assert [g["name"] for g in only] == ["head"]
    opt = torch.optim.AdamW(groups)
    assert opt.param_groups[-1]["lr"] == pytest.approx(1e-3 / 2.6**5)


def test_gradual_unfreezing_schedule_and_frozen_parts_unchanged_until_their_epoch():
    model = tiny_model()
    cb = GradualUnfreezing()
    stage3_before = params_of(model, "stage3")
    snapshots = {}

    class Snapshot:
        def on_epoch_end(self, state):
            snapshots[state.epoch] = params_of(state.model, "stage3")

    opt = torch.optim.AdamW(discriminative_groups(model, 1e-2))
    fit(model, toy_data(), epochs=6, optimizer=opt, batch_size=16, callbacks=[cb, Snapshot()], progress=False, seed=0)
    expected = [PARTS[::-1][: e + 1][::-1] for e in range(6)]
    assert [r["trainable"] for r in cb.records] == expected
    assert all_equal(stage3_before, snapshots[1]), "stage3 trained before epoch 2"
    assert not all_equal(snapshots[1], snapshots[2]), "stage3 did not train at epoch 2"
    first = cb.records[0]["lr"]
    assert first["head"] > 0 and first["stage4"] == 0.0 and first["stem"] == 0.0
    assert cb.records[-1]["lr"]["stem"] == pytest.approx(1e-2 / 2.6**5)
    assert len(cb.lr_trace) == 6 * 3


def test_gradual_unfreezing_adds_new_parts_to_an_optimizer_that_lacks_them():
    model = tiny_model()
    freeze(model)
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    cb = GradualUnfreezing(order=["head", "stage4", "stage3"], every=2, factor=2.0)
    fit(model, toy_data(), epochs=4, optimizer=opt, batch_size=16, callbacks=[cb], progress=False, seed=0)
    names = [g.get("name") for g in opt.param_groups]
    assert names[1:] == ["stage4"], names
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 / 2.0)
    assert [r["trainable"] for r in cb.records] == [["head"]] * 2 + [["stage4", "head"]] * 2


def test_staged_unfreezing_runs_with_a_schedule():
    model = tiny_model()
    history, cb = staged_unfreezing(model, toy_data(), epochs=3, lr=1e-2, batch_size=16, progress=False, seed=0)
    assert len(history.epochs) == 3
    steps = [r["head"] for r in cb.lr_trace]
    assert max(steps) == pytest.approx(1e-2, rel=0.05) and steps[-1] < steps[0], "one-cycle peaks then decays"


def test_fine_tune_has_a_frozen_then_an_unfrozen_phase():
    model = tiny_model()
    stem = params_of(model, "stem")
    seen = []

    class Watch:
        def on_epoch_start(self, state):
            seen.append(trainable_parts(state.model))

    history = fit_hist = fine_tune(model, toy_data(), epochs=2, freeze_epochs=1, lr=1e-2, batch_size=16,
                                   progress=False, seed=0, callbacks=[Watch()])
    assert [r["phase"] for r in history.epochs] == ["frozen", "unfrozen", "unfrozen"]
    assert [r["epoch"] for r in fit_hist.epochs] == [1, 2, 3]
    assert seen == [["head"], PARTS, PARTS]
    assert not all_equal(stem, params_of(model, "stem"))


def test_replace_head_two_layer():
    model = replace_head(tiny_model(), 5, hidden=16, dropout=0.2)
    layers = [type(m).__name__ for m in model.head]
    assert layers == ["Linear", "ReLU", "Dropout", "Linear"]
    assert model(toy_data(2)[0]).shape == (2, 5)


def test_tile_repeats_small_sets():
    x, y = tile(toy_data(10), 64)
    assert len(x) == 70 and torch.equal(y[:10], y[10:20])


def test_with_new_head_copies_the_backbone_and_seeds_the_head():
    source = tiny_model(num_classes=7)
    before = [p.clone() for p in source.parameters()]
    a = with_new_head(source, 5, seed=3)
    b = with_new_head(source, 5, seed=3)
    assert all_equal(a.head.parameters(), b.head.parameters()), "same seed, same head"
    assert all_equal(a.backbone.parameters(), source.backbone.parameters()), "the backbone's weights are copied"
    assert a.backbone is not source.backbone and a(toy_data(2)[0]).shape == (2, 5)
    torch.manual_seed(3)
    by_hand = replace_head(Classifier(copy.deepcopy(source.backbone), torch.nn.Identity()), 5)
    assert all_equal(a.parameters(), by_hand.parameters()), "the same as the line written by hand"
    with torch.no_grad():
        next(a.backbone.parameters()).add_(1.0)
    assert all_equal(before, source.parameters()), "the source model is never modified"
    two_layer = with_new_head(source, 4, hidden=8).head
    assert [type(m).__name__ for m in two_layer] == ["Linear", "ReLU", "Dropout", "Linear"]


def test_fit_one_cycle_peaks_at_each_groups_rate_and_ends_low():
    model = tiny_model()
    groups = [{"params": list(model.head.parameters()), "lr": 1e-2},
              {"params": list(model.backbone.parameters()), "lr": 1e-3}]
    history = fit_one_cycle(model, toy_data(64), groups, epochs=2, batch_size=16, progress=False, seed=0)
    assert len(history.steps) == 2 * 4
    assert history.epochs[-1]["lr"] < 1e-2 / 10, "one-cycle ends far below its peak"
