"""Unit tests of tlutils.dann: gradient reversal, the DANN step, and DANN on a toy shift."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tlutils.adapt import AdaptationWeight, Recipe, adaptation_step, fit_recipe
from tlutils.dann import DANN, GradientReversal, grad_reverse, train_dann
from tlutils.models import Classifier, ganin_cnn
from tlutils.schedules import ramp
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


# ----------------------------------------------------------------------------- networks and step


def _step(model, xs, ys, xt, progress):
    return adaptation_step(model, {"source": (xs, ys), "target": xt}, SimpleNamespace(progress=progress))


def dann_step(model, xs, ys, xt, progress):
    return adaptation_step(model, {"source": (xs, ys), "target": xt}, SimpleNamespace(progress=progress))


def test_dann_step_losses_and_gradients():
    torch.manual_seed(0)
    model = DANN(ganin_cnn(3), hidden=(8,))
    xs, ys = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    logs = dann_step(model, xs, ys, torch.rand(4, 3, 32, 32), 1.0)
    assert set(logs) >= {"loss", "label_loss", "domain_loss", "domain_acc", "acc", "lambda"}
    assert logs["lambda"] == pytest.approx(ramp(1.0))
    assert torch.allclose(logs["loss"], logs["label_loss"] + logs["domain_loss"])
    logs["loss"].backward()
    # The domain head descends the domain loss; the features get the reversed gradient.
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(TypeError, match="DANN"):
        train_dann(model.classifier, (xs, ys), xs, Recipe(steps=1), progress=False)
    with pytest.raises(ValueError, match="weighting"):
        AdaptationWeight(weighting="sometimes")


def test_dann_step_forwards_each_domain_alone_with_batch_norm():
    """per_domain: the source batch's features do not depend on the target batch (own BatchNorm statistics);
    a joint forward mixes the statistics, so the source features change with the target batch."""
    torch.manual_seed(0)
    model = DANN(ganin_cnn(3, batch_norm=True), hidden=(8,)).train()
    xs = torch.rand(4, 3, 32, 32)
    xt = torch.rand(4, 3, 32, 32)
    seen = {}
    for per_domain in (True, False):
        model.per_domain = per_domain
        outs = []
        for shift in (0.0, 0.5):
            feats = []
            grab = lambda m, i, o, feats=feats: feats.append(i[0].detach())
            hook = model.classifier.head[0].register_forward_hook(grab)
            dann_step(model, xs, torch.tensor([0, 1, 2, 0]), xt + shift, 0.5)
            hook.remove()
            outs.append(feats[0])
        seen[per_domain] = torch.allclose(outs[0], outs[1])
    assert seen == {True: True, False: False}


def test_dynamic_weighting_is_at_least_one_half():
    torch.manual_seed(0)
    model = DANN(ganin_cnn(3), hidden=(8,), weight=AdaptationWeight(weighting="dynamic"))
    logs = dann_step(model, torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.rand(4, 3, 32, 32), 0.0)
    assert 0.5 <= logs["lambda"] < 1.0  # the paper's ramp would give 0 at p = 0


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
                fit_recipe(net, (xs, ys), recipe, seed=seed, progress=False)
            errors[method].append(1 - evaluate(net, (xt, yt))["acc"])
            w = net.backbone.layer.weight.detach()  # weight of feature 0 relative to feature 1, first layer
            rel[method].append((w[:, 0].norm() / w[:, 1].norm()).item())
    for seed in range(2):
        assert errors["dann"][seed] < errors["source_only"][seed], errors
        assert rel["dann"][seed] < 0.7 * rel["source_only"][seed], rel
    gain = sum(errors["source_only"]) / 2 - sum(errors["dann"]) / 2
    assert gain > 0.04, f"DANN should lower the mean target error by > 4 points: {errors}"
