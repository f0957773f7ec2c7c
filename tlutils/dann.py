"""Domain-adversarial training (DANN, Ganin et al., JMLR 2016): chapter 04's method.

A feature extractor ``G_f`` feeds a label predictor ``G_y`` (trained on labelled source images) and a
domain classifier ``G_d`` (source vs target). Between ``G_f`` and ``G_d`` sits a gradient reversal
layer: identity going forward, ``-lambda * grad`` going back. Minimising ``L_y + L_d`` then trains
``G_d`` to separate the domains while pushing ``G_f`` to make them inseparable (the saddle point
``min_{f,y} max_d  L_y - lambda L_d`` of the paper). No target label is ever used.

The pieces: :func:`grad_reverse` / :class:`GradientReversal`, :func:`domain_classifier`,
:class:`DomainAdversarialLoss` (domain head + GRL + lambda schedule, a transfer loss module), :class:`DANN` (any
``Classifier`` + that loss, one ``tlutils.adapt.DomainAdaptation``) and :func:`train_dann`. The recipe,
schedules and the adaptation step shared with DAN are in ``tlutils.adapt``; the network (``ganin_cnn``) in
``tlutils.models``; the experiments of chapters 04-05 in ``tlutils.adapt_runs``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.adapt import WEIGHTINGS, AdaptationBatch, AdaptationWeight, DomainAdaptation, Recipe, fit_adaptation
from tlutils.models import Classifier, mlp
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


class DomainAdversarialLoss(nn.Module):
    """DANN's transfer loss: ``BCE(G_d(GRL_lambda([f_s; f_t])), [0; 1])`` with ``lambda = weight(batch)``.

    The GRL supplies the minus sign for the features, so the loss has none (never negate twice) and is added to
    the cross-entropy with weight 1: ``lambda`` scales only the reversed gradient. Logs ``domain_loss``,
    ``domain_acc`` (0.5 is chance: the features fool the domain head) and ``lambda``.
    Chapter 04, section 4 ("One DANN run") shows this source next to the run that uses it.
    """

    def __init__(self, domain_head: nn.Module, weight: AdaptationWeight = AdaptationWeight()):
        super().__init__()
        self.domain_head = domain_head
        self.grl = GradientReversal(0.0)
        self.weight = weight

    def domain_logits(self, features: torch.Tensor, lambda_: float | None = None) -> torch.Tensor:
        """Domain logits (target = 1) of ``features`` through the GRL (``lambda_`` updates ``self.grl``)."""
        if lambda_ is not None:
            self.grl.lambda_ = float(lambda_)
        return self.domain_head(self.grl(features)).squeeze(1)

    def forward(self, batch: AdaptationBatch) -> tuple[torch.Tensor, dict]:
        lam = self.weight(batch)
        fs, ft = batch.source_features, batch.target_features
        dom_logits = self.domain_logits(torch.cat([fs, ft]), lam).float()
        dom_y = torch.cat([torch.zeros(len(fs)), torch.ones(len(ft))]).to(dom_logits.device)
        domain_loss = F.binary_cross_entropy_with_logits(dom_logits, dom_y)
        with torch.no_grad():
            domain_acc = ((dom_logits > 0).float() == dom_y).float().mean()
        return domain_loss, {"domain_loss": domain_loss.detach(), "domain_acc": domain_acc, "lambda": lam}


class DANN(DomainAdaptation):
    """A ``Classifier`` (``G_f`` = its backbone, ``G_y`` = its head) plus a :class:`DomainAdversarialLoss`
    (domain head ``G_d`` behind a GRL): a :class:`tlutils.adapt.DomainAdaptation`.

    ``forward(x)`` returns class logits, so ``evaluate``/``predict`` work unchanged; ``forward(xs, xt, p)`` is
    one adaptation step's forward. Works with any backbone from ``tlutils.models`` (it needs ``out_features``).
    """

    def __init__(
        self,
        classifier: Classifier,
        domain_head: nn.Module | None = None,
        hidden: tuple[int, ...] = (100,),
        *,
        weight: AdaptationWeight = AdaptationWeight(),
        per_domain: bool = True,
    ):
        if domain_head is None:
            width = getattr(classifier.backbone, "out_features", None)
            if width is None:
                raise ValueError(
                    "the classifier's backbone has no `out_features`; pass domain_head= explicitly"
                )
            domain_head = domain_classifier(int(width), hidden)
        super().__init__(classifier, DomainAdversarialLoss(domain_head, weight), per_domain)

    @property
    def domain_head(self) -> nn.Module:
        return self.transfer.domain_head

    @property
    def grl(self) -> GradientReversal:
        return self.transfer.grl

    def domain_logits(self, features: torch.Tensor, lambda_: float | None = None) -> torch.Tensor:
        """Domain logits (target = 1) of ``features`` through the GRL (``lambda_`` updates the GRL)."""
        return self.transfer.domain_logits(features, lambda_)


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

    The recipe sets the model's schedule (``lambda = lambda_max * ramp(p, gamma, delay)``, or
    ``lambda_max * dynamic_weight(f_s, f_t)`` for ``weighting="dynamic"``) and ``per_domain``.
    Chapter 04, section 4 ("One DANN run") calls it once; section 5 over seeds.
    """
    if not isinstance(model, DANN):
        raise TypeError(f"train_dann trains a tlutils.dann.DANN model (classifier + domain head), "
                        f"got {type(model).__name__}; wrap it: DANN(classifier)")
    model.transfer.weight = AdaptationWeight(recipe.lambda_max, recipe.gamma, recipe.delay, weighting)
    model.per_domain = recipe.per_domain
    return fit_adaptation(model, source, target, recipe, seed=seed, device=device, amp=amp, progress=progress,
                          val=val, desc="DANN")


__all__ = ["DANN", "WEIGHTINGS", "DomainAdversarialLoss", "GradientReversal", "domain_classifier", "grad_reverse",
           "train_dann"]
