"""Unit tests of tlutils.dann: gradient reversal, schedules, the DANN step, and DANN on a toy shift."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tlutils.dann import (
    DANN,
    AnnealLR,
    DANNStep,
    GaninCNN,
    GradientReversal,
    Recipe,
    annealed_lr,
    domain_classifier,
    ganin_cnn,
    grad_reverse,
    grl_lambda,
    infinite_batches,
    lr_factor,
    pair_paths,
    pretrained_pair,
    save_pair,
    train_dann,
    train_supervised,
)
from tlutils.models import Classifier
from tlutils.train import evaluate

# ----------------------------------------------------------------------------- gradient reversal


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_grl_forward_is_identity_and_backward_is_minus_lambda(lam):
    x = torch.randn(4, 5, requires_grad=True)
    upstream = torch.randn(4, 5)
    y = grad_reverse(x, lam)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.equal(x.grad, -lam * upstream)


def test_grl_hand_computed_case():
    # loss = sum(w * GRL(x)) with w = (1, 2, 3): d loss / d x would be w; reversal with lambda 0.5 gives -w/2.
    x = torch.tensor([1.0, -2.0, 4.0], requires_grad=True)
    loss = (torch.tensor([1.0, 2.0, 3.0]) * grad_reverse(x, 0.5)).sum()
    assert loss.item() == pytest.approx(1.0 - 4.0 + 12.0)
    loss.backward()
    assert x.grad.tolist() == [-0.5, -1.0, -1.5]


def test_grl_gradcheck():
    x = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    # lambda = -1 turns the layer into the identity both ways, so its backward must match finite differences.
    assert torch.autograd.gradcheck(lambda t: grad_reverse(t, -1.0), (x,))
    # For any lambda, GRL(x) + (1 + lambda) * (x - x.detach()) has value x and, if GRL's backward is exactly
    # -lambda, gradient -lambda + (1 + lambda) = 1: finite differences agree only if the reversal is exact.
    for lam in (0.25, 1.0, 3.0):

        def straight_through(t, lam=lam):
            return grad_reverse(t, lam) + (1 + lam) * (t - t.detach())

        assert torch.autograd.gradcheck(straight_through, (x,))
    # And the bare layer must fail gradcheck: its backward is deliberately not the derivative of its forward.
    assert not torch.autograd.gradcheck(lambda t: grad_reverse(t, 0.5), (x,), raise_exception=False)


def test_grl_lambda_gets_no_gradient():
    x = torch.randn(3, requires_grad=True)
    lam = torch.tensor(0.7, requires_grad=True)
    grad_reverse(x, lam).sum().backward()
    assert lam.grad is None
    assert torch.allclose(x.grad, torch.full((3,), -0.7))


def test_grl_module_and_bad_lambda():
    layer = GradientReversal(2.0)
    x = torch.ones(2, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.tolist() == [-2.0, -2.0]
    assert "lambda_=2" in repr(layer)
    with pytest.raises(ValueError, match="finite"):
        grad_reverse(x, float("nan"))
    with pytest.raises(ValueError, match="scalar"):
        grad_reverse(x, torch.ones(2))


# ----------------------------------------------------------------------------- schedules


def test_lambda_schedule_at_0_half_1():
    assert grl_lambda(0.0) == 0.0
    assert grl_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1) == pytest.approx(math.tanh(2.5))
    assert grl_lambda(1.0) == pytest.approx(0.9999092, abs=1e-7)
    assert grl_lambda(0.5, gamma=0.0) == 0.0


def test_lr_schedule_at_0_half_1():
    assert lr_factor(0.0) == 1.0
    assert lr_factor(0.5) == pytest.approx(6**-0.75)
    assert lr_factor(1.0) == pytest.approx(11**-0.75)
    assert annealed_lr(1.0, mu0=0.01) == pytest.approx(0.01 / 11**0.75)
    assert annealed_lr(0.5, mu0=1.0, alpha=2.0, beta=1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [grl_lambda, lr_factor])
def test_schedules_reject_progress_outside_unit_interval(fn):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(1.5)


def test_anneal_lr_callback_follows_progress():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    cb, state = AnnealLR(), SimpleNamespace(optimizer=opt, progress=0.0)
    cb.on_fit_start(state)
    for p in (0.0, 0.5, 1.0):
        state.progress = p
        cb.on_batch_start(state)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(p))


# ----------------------------------------------------------------------------- networks and step


def test_ganin_cnn_shapes_and_stages():
    model = ganin_cnn(10)
    x = torch.rand(2, 3, 32, 32)
    assert isinstance(model.backbone, GaninCNN)
    assert model.backbone.out_features == 48 * 4 * 4
    assert model.features(x).shape == (2, 768)
    assert model(x).shape == (2, 10)
    maps = model.backbone.forward_stages(x)
    assert list(maps) == ["stem", "stage1"] and maps["stage1"].shape == (2, 48, 4, 4)
    assert domain_classifier(768)(model.features(x)).shape == (2, 1)


def test_infinite_batches_cover_every_index_each_pass():
    it = infinite_batches(10, 4, seed=0)
    seen = torch.cat([next(it) for _ in range(5)])  # 20 indices = two full passes
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    again = infinite_batches(10, 4, seed=0)
    assert torch.equal(torch.cat([next(again) for _ in range(5)]), seen)


def test_dann_step_losses_and_gradients():
    torch.manual_seed(0)
    model = DANN(ganin_cnn(3), hidden=(8,))
    step = DANNStep(torch.rand(7, 3, 32, 32), seed=0)
    xs, ys = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    logs = step(model, (xs, ys), SimpleNamespace(progress=1.0))
    assert set(logs) >= {"loss", "label_loss", "domain_loss", "domain_acc", "acc", "lambda"}
    assert logs["lambda"] == pytest.approx(grl_lambda(1.0))
    assert torch.allclose(logs["loss"], logs["label_loss"] + logs["domain_loss"])
    logs["loss"].backward()
    # The domain head descends the domain loss; the features get the reversed gradient.
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(TypeError, match="DANN"):
        step(model.classifier, (xs, ys), SimpleNamespace(progress=0.0))


def test_dann_step_reverses_exactly_the_domain_gradient():
    """Features' gradient from the domain loss equals -lambda times what it would be without the GRL."""
    torch.manual_seed(0)
    model = DANN(ganin_cnn(2), hidden=(8,))
    x = torch.rand(6, 3, 32, 32)
    feats = model.features(x).detach().requires_grad_(True)
    target = torch.tensor([0.0, 0, 0, 1, 1, 1])
    bce = nn.functional.binary_cross_entropy_with_logits
    bce(model.domain_logits(feats, 0.4), target).backward()
    reversed_grad = feats.grad.clone()
    feats.grad = None
    bce(model.domain_head(feats).squeeze(1), target).backward()
    assert torch.allclose(reversed_grad, -0.4 * feats.grad)


def test_pair_paths_key_on_recipe(tmp_path):
    cfg = SimpleNamespace(data_dir=tmp_path, pick=lambda quick, full: quick)
    a = pair_paths(cfg, seed=0)
    assert a["dann"].parent == tmp_path / "checkpoints" and a["dann"] != a["source_only"]
    assert pair_paths(cfg, seed=1)["dann"] != a["dann"]
    assert pair_paths(cfg, seed=0, recipe=Recipe(steps=7))["dann"] != a["dann"]
    nets = {"source_only": ganin_cnn(10), "dann": ganin_cnn(10)}
    saved = save_pair(cfg, nets, seed=0)
    assert saved == a and all(p.exists() for p in a.values())
    loaded = dict(zip(("source_only", "dann"), pretrained_pair(cfg, seed=0), strict=True))  # cached: loads
    for method, net in nets.items():
        for key, value in net.state_dict().items():
            assert torch.equal(loaded[method].state_dict()[key], value), (method, key)


# ----------------------------------------------------------------------------- DANN on a toy shift


class _Linear(nn.Module):
    """Feature extractor of the toy: one ReLU layer (``out_features`` as a Backbone has)."""

    def __init__(self, d_in: int, width: int):
        super().__init__()
        self.layer = nn.Linear(d_in, width)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.layer(x))


def _toy_domains(seed: int, n: int = 512):
    """Label s = +-1. Feature 1 carries s in both domains (noise 0.7). Feature 0 encodes the domain: in
    the source it also tracks s (a spurious shortcut, noise 1); in the target it sits at 2 whatever s is."""
    g = torch.Generator().manual_seed(seed)

    def make(target: bool):
        y = torch.randint(0, 2, (n,), generator=g)
        s = 2.0 * y - 1
        x0 = (torch.full((n,), 2.0) if target else s) + torch.randn(n, generator=g)
        x1 = s + 0.7 * torch.randn(n, generator=g)
        return torch.stack([x0, x1], 1), y

    return make(False), make(True)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (thread start-up and spinning dominate otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_dann_suppresses_the_domain_feature_and_lowers_target_error(one_thread):
    """Source-only leans on the shortcut feature 0 and fails on the target, where it only says "target";
    DANN's domain classifier sees feature 0 too, so the reversed gradient strips it from the features."""
    recipe = Recipe(steps=600, batch_size=64, lr=0.01, optimizer="adam", momentum=0.5, domain_hidden=(16,))
    errors, rel = {"source_only": [], "dann": []}, {"source_only": [], "dann": []}
    for seed in (0, 1):
        (xs, ys), (xt, yt) = _toy_domains(seed)
        for method in ("source_only", "dann"):
            torch.manual_seed(seed)
            net = Classifier(_Linear(2, 16), nn.Linear(16, 2))
            if method == "dann":
                history = train_dann(
                    DANN(net, hidden=recipe.domain_hidden), (xs, ys), xt, recipe, seed=seed, progress=False
                )
                assert history.last("train_domain_acc") < 0.8, (
                    "the domain head should be partly fooled by the end"
                )
            else:
                train_supervised(net, (xs, ys), recipe, seed=seed, progress=False)
            errors[method].append(1 - evaluate(net, (xt, yt))["acc"])
            w = net.backbone.layer.weight.detach()  # weight of feature 0 relative to feature 1, first layer
            rel[method].append((w[:, 0].norm() / w[:, 1].norm()).item())
    for seed in range(2):
        assert errors["dann"][seed] < errors["source_only"][seed], errors
        assert rel["dann"][seed] < 0.7 * rel["source_only"][seed], rel
    gain = sum(errors["source_only"]) / 2 - sum(errors["dann"]) / 2
    assert gain > 0.04, f"DANN should lower the mean target error by > 4 points: {errors}"
