"""Unit tests for tlutils.finetune: freezing, batch norm in frozen parts, discriminative rates, schedules."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tlutils.finetune import (
    STRATEGIES,
    GradualUnfreezing,
    Recipe,
    discriminative_groups,
    discriminative_lrs,
    fine_tune,
    freeze,
    label_budget_curve,
    part_names,
    replace_head,
    select_lr,
    staged_unfreezing,
    tile,
    train_strategy,
    trainable_parts,
    unfreeze,
)
from tlutils.models import build_model
from tlutils.train import fit

PARTS = ["stem", "stage1", "stage2", "stage3", "stage4", "head"]


def tiny_model(seed: int = 0, num_classes: int = 3):
    torch.manual_seed(seed)
    return build_model("resnet_small", num_classes, widths=(4, 4, 8, 8))


def toy_data(n: int = 48, num_classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.25
    return x, y


def all_equal(xs, ys) -> bool:
    return all(torch.equal(a, b) for a, b in zip(xs, ys, strict=True))


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


def toy_domain(n_per_class: int = 6, num_classes: int = 3):
    from tlutils.data.domain import Domain

    x, y = toy_data(n_per_class * num_classes, num_classes)
    return Domain(x, y, [str(c) for c in range(num_classes)], "toy", "train")


def test_strategies_are_deterministic_and_leave_the_source_alone(tmp_data):
    source = tiny_model()
    before = [p.clone() for p in source.parameters()]
    recipe = Recipe(epochs=2, batch_size=8, min_epoch=16, head_epochs=5)
    train = toy_domain()
    for strategy in STRATEGIES:
        a = train_strategy(strategy, source, train, num_classes=3, recipe=recipe, seed=1)
        b = train_strategy(strategy, source, train, num_classes=3, recipe=recipe, seed=1)
        assert all_equal(a.parameters(), b.parameters()), strategy
    assert all_equal(before, source.parameters())


def test_label_budget_curve_shape(tmp_data):
    recipe = Recipe(epochs=1, batch_size=8, min_epoch=8, head_epochs=3)
    curve = label_budget_curve(tiny_model(), toy_domain(), toy_domain(), budgets=(1, 2), seeds=(0, 1),
                               recipe=recipe, progress=False)
    assert set(curve) == set(STRATEGIES)
    files = sorted((tmp_data / "budget_runs").glob("*.json"))
    assert len(files) == 4 * 2 * 2
    assert label_budget_curve(tiny_model(), toy_domain(), toy_domain(), budgets=(1, 2), seeds=(0, 1),
                              recipe=recipe, progress=False) == curve, "a cached run returns the same number"
    assert sorted((tmp_data / "budget_runs").glob("*.json")) == files
    for per_k in curve.values():
        assert list(per_k) == [1, 2] and all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in per_k.values())
    with pytest.raises(ValueError, match="unknown strategies"):
        label_budget_curve(tiny_model(), toy_domain(), toy_domain(), strategies=["magic"])


def test_changing_one_strategys_rate_keeps_the_other_runs_cached(tmp_data):
    base = Recipe(epochs=1, batch_size=8, min_epoch=8, head_epochs=3)
    label_budget_curve(tiny_model(), toy_domain(), toy_domain(), budgets=(1,), seeds=(0,), recipe=base,
                       progress=False)
    first = {p.name for p in (tmp_data / "budget_runs").glob("*.json")}
    label_budget_curve(tiny_model(), toy_domain(), toy_domain(), budgets=(1,), seeds=(0,),
                       recipe=replace(base, lr_staged=base.lr_staged * 3), progress=False)
    new = {p.name for p in (tmp_data / "budget_runs").glob("*.json")} - first
    assert len(new) == 1 and next(iter(new)).startswith("staged-"), new
    label_budget_curve(tiny_model(), toy_domain(), toy_domain(), strategies=("finetune", "linear_probe"),
                       budgets=(1,), seeds=(0,), recipe=replace(base, augment="digits"), progress=False)
    new = {p.name for p in (tmp_data / "budget_runs").glob("*.json")} - first
    assert sorted(n.split("-")[0] for n in new) == ["finetune", "staged"], "augment keys trained runs, not the probe"


def test_augmented_strategy_differs_and_select_lr_picks_the_best(tmp_data):
    recipe = Recipe(epochs=1, batch_size=8, min_epoch=16)
    plain = train_strategy("finetune", tiny_model(), toy_domain(), num_classes=3, recipe=recipe, seed=1)
    jittered = train_strategy("finetune", tiny_model(), toy_domain(), num_classes=3,
                              recipe=replace(recipe, augment="digits"), seed=1)
    assert not all_equal(plain.parameters(), jittered.parameters()), "augmentation changes the training batches"
    best, scores = select_lr(tiny_model(), toy_domain(), toy_domain(3), strategy="finetune", lrs=[1e-4, 1e-2],
                             k=2, recipe=recipe)
    assert set(scores) == {1e-4, 1e-2} and scores[best] == max(scores.values())
    with pytest.raises(ValueError, match="trained strategy"):
        select_lr(tiny_model(), toy_domain(), toy_domain(), strategy="linear_probe", lrs=[1e-3], k=1)
