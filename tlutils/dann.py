"""Domain-adversarial training (DANN, Ganin et al., JMLR 2016): chapter 04's method.

A feature extractor ``G_f`` feeds a label predictor ``G_y`` (trained on labelled source images) and a
domain classifier ``G_d`` (source vs target). Between ``G_f`` and ``G_d`` sits a gradient reversal
layer: identity going forward, ``-lambda * grad`` going back. Minimising ``L_y + L_d`` then trains
``G_d`` to separate the domains while pushing ``G_f`` to make them inseparable (the saddle point
``min_{f,y} max_d  L_y - lambda L_d`` of the paper). No target label is ever used.

The pieces: :func:`grad_reverse` / :class:`GradientReversal`, :func:`domain_classifier`, :class:`DANN`
(any ``Classifier`` + a domain head), :class:`DANNStep` (a ``step_fn`` for ``tlutils.train.fit``) and
:func:`train_dann`. The recipe, schedules and target batches shared with DAN are in ``tlutils.adapt``; the
network (``ganin_cnn``) in ``tlutils.models``; the experiments of chapters 04-05 in ``tlutils.adapt_runs``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.adapt import Recipe, TargetBatches, domain_features, dynamic_weight, fit_recipe
from tlutils.models import Classifier, mlp
from tlutils.schedules import ramp
from tlutils.train import History

# ----------------------------------------------------------------------------- gradient reversal


class _GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the upstream gradient by ``-lambda`` (none for lambda)."""

    @staticmethod
    def forward(x: torch.Tensor, lambda_: float) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.lambda_ = float(inputs[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambda_ * grad, None


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """Gradient reversal: returns ``x`` unchanged; on the way back the gradient becomes ``-lambda_ * grad``.

    ``lambda_`` is a number (a 0-d tensor is read as its value); it never receives a gradient.
    Taught in chapter 04, section 1 (``notebooks/04_dann.ipynb``), which writes it out by hand.
    """
    if isinstance(lambda_, torch.Tensor):
        if lambda_.numel() != 1:
            raise ValueError(f"lambda_ must be a scalar, got a tensor of shape {tuple(lambda_.shape)}")
        lambda_ = float(lambda_.detach())
    if not math.isfinite(lambda_):
        raise ValueError(f"lambda_ must be finite, got {lambda_}")
    return _GradReverse.apply(x, lambda_)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`; set ``.lambda_`` as training progresses."""

    def __init__(self, lambda_: float = 1.0):
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_:g}"


# ----------------------------------------------------------------------------- networks


def domain_classifier(in_features: int, hidden: tuple[int, ...] = (100,)) -> nn.Sequential:
    """Domain head ``G_d``: Linear-ReLU per hidden width, then one logit (target = 1, source = 0).

    The paper uses ``(100,)`` for MNIST -> MNIST-M and ``(1024, 1024)`` for the SVHN experiments.
    """
    return mlp(in_features, 1, hidden)


class DANN(nn.Module):
    """A ``Classifier`` (``G_f`` = its backbone, ``G_y`` = its head) plus a domain head ``G_d`` behind a GRL.

    ``forward`` returns class logits, so ``evaluate``/``predict`` work unchanged; ``features`` is the
    backbone's output. Works with any backbone from ``tlutils.models`` (it needs ``out_features``).
    """

    def __init__(
        self, classifier: Classifier, domain_head: nn.Module | None = None, hidden: tuple[int, ...] = (100,)
    ):
        super().__init__()
        if domain_head is None:
            width = getattr(classifier.backbone, "out_features", None)
            if width is None:
                raise ValueError(
                    "the classifier's backbone has no `out_features`; pass domain_head= explicitly"
                )
            domain_head = domain_classifier(int(width), hidden)
        self.classifier = classifier
        self.domain_head = domain_head
        self.grl = GradientReversal(0.0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def domain_logits(self, features: torch.Tensor, lambda_: float | None = None) -> torch.Tensor:
        """Domain logits (target = 1) of ``features`` through the GRL (``lambda_`` updates ``self.grl``)."""
        if lambda_ is not None:
            self.grl.lambda_ = float(lambda_)
        return self.domain_head(self.grl(features)).squeeze(1)


# ----------------------------------------------------------------------------- the training step

WEIGHTINGS = ("progress", "dynamic")


class DANNStep:
    """``step_fn`` for ``tlutils.train.fit``: the batch ``fit`` gives is the labelled source half; this
    step draws an equal-sized unlabelled target half itself (seeded, endless shuffling).

    loss = CE(G_y(G_f(x_s)), y_s) + BCE(G_d(GRL_lambda([G_f(x_s); G_f(x_t)])), [0; 1]). The GRL supplies the
    minus sign for the features, so the loss has none (never negate twice). ``weighting="progress"`` (the
    paper): ``lambda = lambda_max * ramp(p, gamma, delay)``; ``"dynamic"``: ``lambda = lambda_max *
    dynamic_weight(f_s, f_t)`` (a tutorial recipe, >= 0.5 from the first step). ``per_domain``: source and
    target are forwarded separately (each normalised by its own BatchNorm statistics). Logs ``label_loss``,
    ``domain_loss``, ``domain_acc`` (0.5 is chance: the features fool the domain head), source ``acc`` and
    ``lambda``.
    Chapter 04, section 4 ("One DANN run") shows this source next to the run that uses it.
    """

    def __init__(
        self,
        target,
        *,
        gamma: float = 10.0,
        lambda_max: float = 1.0,
        delay: float = 0.0,
        per_domain: bool = True,
        weighting: str = "progress",
        seed: int = 0,
    ):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        self.target = TargetBatches(target, seed)
        self.gamma, self.lambda_max, self.delay = gamma, lambda_max, delay
        self.per_domain, self.weighting = per_domain, weighting

    def __call__(self, model: DANN, batch, state) -> dict:
        if not isinstance(model, DANN):
            raise TypeError(
                f"DANNStep trains a tlutils.dann.DANN model (classifier + domain head), "
                f"got {type(model).__name__}; wrap it: DANN(classifier)"
            )
        xs, ys = batch
        xt = self.target.next_like(xs)
        fs, ft = domain_features(model, xs, xt, self.per_domain)
        logits = model.classifier.head(fs)
        label_loss = F.cross_entropy(logits, ys)
        if self.weighting == "progress":
            lam = self.lambda_max * ramp(state.progress, self.gamma, self.delay)
        else:
            lam = self.lambda_max * dynamic_weight(fs, ft)
        dom_logits = model.domain_logits(torch.cat([fs, ft]), lam).float()
        dom_y = torch.cat([torch.zeros(len(xs)), torch.ones(len(xt))]).to(dom_logits.device)
        domain_loss = F.binary_cross_entropy_with_logits(dom_logits, dom_y)
        with torch.no_grad():
            acc = (logits.argmax(1) == ys).float().mean()
            domain_acc = ((dom_logits > 0).float() == dom_y).float().mean()
        return {
            "loss": label_loss + domain_loss,
            "label_loss": label_loss.detach(),
            "domain_loss": domain_loss.detach(),
            "domain_acc": domain_acc,
            "acc": acc,
            "lambda": lam,
        }


def train_dann(
    model: DANN,
    source,
    target,
    recipe: Recipe = Recipe(),
    *,
    weighting: str = "progress",
    seed: int = 0,
    device=None,
    amp: bool | None = None,
    progress: bool | None = None,
    val=None,
) -> History:
    """Train a :class:`DANN` on labelled ``source`` and unlabelled ``target`` under ``recipe``.

    Chapter 04, section 4 ("One DANN run") calls it once; section 5 over seeds.
    """
    step = DANNStep(target, gamma=recipe.gamma, lambda_max=recipe.lambda_max, delay=recipe.delay,
                    per_domain=recipe.per_domain, weighting=weighting, seed=seed + 1)
    return fit_recipe(model, source, recipe, step_fn=step, seed=seed, device=device, amp=amp, progress=progress,
                      val=val, desc="DANN")


__all__ = ["DANN", "DANNStep", "GradientReversal", "WEIGHTINGS", "domain_classifier", "grad_reverse", "train_dann"]
