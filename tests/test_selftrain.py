"""tlutils.selftrain: confident class-balanced pseudo-labels, the self-training step in plain torch, TENT."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlutils.models import ganin_cnn
from tlutils.selftrain import (
    MeanTeacher,
    SelfTrainRecipe,
    colour_jitter,
    pseudo_label,
    pseudo_label_step,
    select_confident,
    self_train,
    tent,
    tent_parameters,
)


def _probs() -> torch.Tensor:
    # 6 rows, 3 classes: rows 0-2 predict class 0 (conf .9, .6, .8), rows 3-4 class 1 (.7, .95), row 5 class 2 (.5)
    return torch.tensor([[.9, .05, .05], [.6, .3, .1], [.8, .1, .1], [.2, .7, .1], [.0, .95, .05], [.3, .2, .5]])


def test_threshold_keeps_rows_at_or_above_the_cut():
    probs = _probs()
    assert select_confident(probs, threshold=0.8).tolist() == [0, 2, 4]
    assert select_confident(probs, threshold=0.0).tolist() == list(range(6))
    assert select_confident(probs, threshold=1.0).tolist() == []


def test_share_is_class_balanced_most_confident_first():
    probs = _probs()
    # share 2/3 of 6 rows over 3 classes: 1 per class, the most confident of each predicted class
    assert select_confident(probs, share=2 / 3).tolist() == [0, 4, 5]
    # share 1: up to 2 per class (class 0 has 3 candidates: its least confident is dropped)
    assert select_confident(probs, share=1.0).tolist() == [0, 2, 3, 4, 5]


@pytest.mark.parametrize("kw", [{}, {"share": 0.5, "threshold": 0.5}, {"share": 0.0}, {"threshold": 1.5}])
def test_selection_arguments_are_checked(kw):
    with pytest.raises(ValueError):
        select_confident(_probs(), **kw)


def test_recipe_needs_one_kind_of_schedule():
    with pytest.raises(ValueError, match="shares"):
        SelfTrainRecipe(shares=(0.5,), thresholds=(0.9,))
    assert SelfTrainRecipe(shares=(), thresholds=(0.9, 0.8)).selection(1) == {"threshold": 0.8}
    with pytest.raises(ValueError, match="augment"):
        SelfTrainRecipe(augment="colour")


def test_pseudo_label_uses_target_statistics_and_leaves_model_unchanged():
    torch.manual_seed(0)
    net = ganin_cnn(10, batch_norm=True).eval()
    x = torch.rand(40, 3, 32, 32)
    before = copy.deepcopy(net.state_dict())
    labels = pseudo_label(net, x, share=0.5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert labels.probs.shape == (40, 10) and len(labels.index) == len(labels.labels) <= 20
    assert torch.equal(labels.labels, labels.probs.argmax(1)[labels.index])
    raw = pseudo_label(net, x, threshold=0.0, target_statistics=False)
    with torch.no_grad():
        assert torch.allclose(raw.probs, net(x).softmax(1), atol=1e-5)


def test_pseudo_label_step_equals_plain_torch():
    torch.manual_seed(0)
    net = ganin_cnn(10, batch_norm=True)
    twin = copy.deepcopy(net)
    xs, ys = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    xt, yt = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    out = pseudo_label_step(net.train(), {"target": (xt, yt), "source": (xs, ys)}, None, source_weight=0.5,
                            augment=None, source_augment=None)
    twin.train()
    plain = F.cross_entropy(twin(xt), yt) + 0.5 * F.cross_entropy(twin(xs), ys)  # separate forwards: per-domain BN
    assert torch.allclose(out["loss"], plain)
    out["loss"].backward()
    plain.backward()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_colour_jitter_keeps_shape_and_range():
    x = torch.rand(5, 3, 8, 8)
    y = colour_jitter(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError, match="RGB"):
        colour_jitter(torch.rand(5, 1, 8, 8))


def test_self_train_runs_rounds_and_logs():
    torch.manual_seed(0)
    net = ganin_cnn(10, batch_norm=True)
    xs, ys = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    xt, yt = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    recipe = SelfTrainRecipe(shares=(), thresholds=(0.0, 0.0), steps=2, batch_size=16)
    out = self_train(net, (xs, ys), xt, recipe, target_labels=yt, test=(xt, yt))
    assert [r.round for r in out.rounds] == [0, 1] and all(r.kept == 64 for r in out.rounds)
    assert all(0 <= r.pseudo_label_acc <= 1 and 0 <= r.target_acc <= 1 for r in out.rounds)
    with pytest.raises(ValueError, match="fewer than one batch"):
        self_train(net, (xs, ys), xt, SelfTrainRecipe(shares=(), thresholds=(1.0,), steps=2, batch_size=16))


def test_tent_changes_only_batchnorm_affine_parameters():
    torch.manual_seed(0)
    net = ganin_cnn(10, batch_norm=True).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))

    class Stream:
        pass

    stream = Stream()
    stream.x, stream.y = x, y
    out = tent(net, stream, batch_size=8, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the original is untouched
    norms = [n for n, m in out.model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    affine = {f"{n}.{p}" for n in norms for p in ("weight", "bias")}
    after = dict(out.model.named_parameters())
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed and changed <= affine
    assert len(out.entropies) == 4 and out.predictions.shape == (32,) and 0 <= out.online_acc <= 1


def test_tent_needs_batchnorm_and_batches():
    with pytest.raises(ValueError, match="BatchNorm"):
        tent_parameters(ganin_cnn(10, batch_norm=False))
    with pytest.raises(ValueError, match="batch_size"):
        tent(ganin_cnn(10, batch_norm=True), torch.rand(4, 3, 32, 32), batch_size=1)


def test_mean_teacher_is_an_exponential_average_of_the_student():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    mt = MeanTeacher(student, ema=0.9)
    before = {k: v.clone() for k, v in mt.teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(4, 3))  # moves the BatchNorm buffers too
    mt.on_batch_end(None)
    for k, t in mt.teacher.state_dict().items():
        s = student.state_dict()[k]
        expected = 0.9 * before[k] + 0.1 * s if t.dtype.is_floating_point else s
        assert torch.allclose(t, expected), k
    with pytest.raises(ValueError, match="ema"):
        SelfTrainRecipe(ema=1.0)


def test_scoring_each_round_does_not_change_what_self_training_learns():
    # the network scored after a round (target statistics) labels the next round: the same labels as without a test
    torch.manual_seed(0)
    net = ganin_cnn(10, batch_norm=True)
    xs, ys = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    xt, yt = torch.rand(96, 3, 32, 32), torch.randint(0, 10, (96,))
    recipe = SelfTrainRecipe(shares=(0.5, 0.8, 1.0), steps=3, batch_size=16)
    scored = self_train(copy.deepcopy(net), (xs, ys), xt, recipe, seed=1, target_labels=yt, test=(xt, yt))
    plain = self_train(copy.deepcopy(net), (xs, ys), xt, recipe, seed=1, target_labels=yt)
    assert [(r.kept, r.pseudo_label_acc) for r in scored.rounds] == [(r.kept, r.pseudo_label_acc) for r in plain.rounds]
    for v, w in zip(scored.model.state_dict().values(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(v, w)
