"""What the unsupervised domain-adaptation methods of chapters 04-05 share: one recipe, one training call.

Source-only, DANN (``tlutils.dann``), DAN (``tlutils.mmd``) and the oracle are trained by :func:`fit_recipe`
with the same network, optimiser, annealed learning rate, batch size and number of steps; only the
adaptation term of the step differs. The pieces both adaptation steps need live here:

- the schedules of training progress ``p`` come from ``tlutils.schedules``: the adaptation ramp ``ramp``
  (DANN's lambda_p, also DAN's MMD weight) and the learning-rate ``annealing`` (applied by ``LRSchedule``);
- :class:`DomainAdaptation`: a classifier plus a transfer-loss module in one module (one forward per step, so
  DDP syncs every gradient); :func:`adaptation_step` adds the source cross-entropy; :func:`fit_adaptation` trains
  it on the named streams ``{"source": ..., "target": ...}`` of ``fit``. A transfer loss maps an
  :class:`AdaptationBatch` to ``(loss, logs)``; :class:`AdaptationWeight` is the shared weight schedule;
  :class:`TargetEntropy` is the smallest such loss (the target's conditional entropy) and :class:`TransferSum`
  adds several of them (DANN + entropy, say) into one;
- :class:`AdaptationRecipe` (a ``tlutils.recipe.Recipe``), :func:`recipe_for` and :func:`fit_recipe`: the network,
  optimiser, annealed rate, batches and length every method of chapters 04-05 shares;
- :func:`domain_features`: source and target features from *separate* forward passes, so that a network
  with BatchNorm normalises each domain by its own batch statistics;
- :func:`adabn` (Li et al. 2016): re-estimate BatchNorm statistics on target images, the simplest adaptation;
- :func:`dynamic_weight`: a mean-distance adaptation weight found in popular tutorials (kept for comparison).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import cached_property, partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.models import Classifier, build_model, ganin_cnn
from tlutils.recipe import Recipe
from tlutils.schedules import LRSchedule, annealing, ramp
from tlutils.train import History, fit, infinite_batches


def dynamic_weight(source_features: torch.Tensor, target_features: torch.Tensor, scale: float = 0.1) -> float:
    """``sigmoid(scale * ||mean(f_s) - mean(f_t)||_2)``, an adaptation weight popular in PyTorch tutorials.

    A sigmoid of a non-negative number is never below 0.5, so this weight starts at 0.5 or more from the
    first step (unlike DANN's ramp, which starts at 0) and only grows with the distance.
    """
    gap = (source_features.detach().float().mean(0) - target_features.detach().float().mean(0)).norm()
    return float(torch.sigmoid(scale * gap))


# ----------------------------------------------------------------------------- target batches and forwards


def target_images(target) -> torch.Tensor:
    """The input tensor of a Domain (or a tensor of target inputs); its labels are never used."""
    x = target.x if hasattr(target, "x") else target
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) == 0:
        raise TypeError(
            "target must be a Domain or a non-empty tensor of target inputs (its labels are never used)"
        )
    return x


def domain_features(
    model: nn.Module, xs: torch.Tensor, xt: torch.Tensor, per_domain: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a source and a target batch: two forward passes (``per_domain``) or one of ``[xs; xt]``.

    With BatchNorm in the network, separate passes normalise each domain by its own batch statistics (the
    shift in colour and contrast is taken out before the features are compared); a joint pass mixes the two
    domains' statistics and leaves the shift for the adaptation loss to remove. Without BatchNorm both give
    the same features.
    """
    if per_domain:
        return model.features(xs), model.features(xt)
    feats = model.features(torch.cat([xs, xt]))
    return feats[: len(xs)], feats[len(xs) :]


def head_activations(head: nn.Module, feats: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits of ``head``, and the activations DAN adapts: each ReLU output of a Sequential head + logits."""
    acts = []
    h = feats
    for layer in head if isinstance(head, nn.Sequential) else [head]:
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            acts.append(h)
    return h, [*acts, h]


# ----------------------------------------------------------------------------- adaptation as a loss module

WEIGHTINGS = ("progress", "dynamic")


@dataclass(eq=False)
class AdaptationBatch:
    """What a transfer loss sees in one step: both domains' inputs and features, the source logits and head
    activations, the progress ``p`` and the ``classifier`` itself (to forward another view of ``target``, say).

    ``target_logits`` / ``target_activations`` are computed on first use (a loss that needs none costs nothing).
    """

    classifier: nn.Module
    source: torch.Tensor
    target: torch.Tensor
    source_features: torch.Tensor
    target_features: torch.Tensor
    source_logits: torch.Tensor
    source_activations: list[torch.Tensor]
    progress: float

    @cached_property
    def _target_head(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return head_activations(self.classifier.head, self.target_features)

    @property
    def target_logits(self) -> torch.Tensor:
        return self._target_head[0]

    @property
    def target_activations(self) -> list[torch.Tensor]:
        return self._target_head[1]


@dataclass(frozen=True)
class AdaptationWeight:
    """The weight of a transfer loss at a step: ``maximum * ramp(p, gamma, delay)`` (``"progress"``, the
    paper's schedule: off while the features are random) or ``maximum * dynamic_weight(f_s, f_t)``
    (``"dynamic"``, a tutorial recipe, >= 0.5 from the first step)."""

    maximum: float = 1.0
    gamma: float = 10.0
    delay: float = 0.0
    weighting: str = "progress"

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")

    def __call__(self, batch: AdaptationBatch) -> float:
        if self.weighting == "progress":
            return self.maximum * ramp(batch.progress, self.gamma, self.delay)
        return self.maximum * dynamic_weight(batch.source_features, batch.target_features)


class TargetEntropy(nn.Module):
    """Conditional-entropy minimisation on the target (Grandvalet & Bengio 2005; the ``L_t`` term of Long et al.'s
    RTN, 2016): ``lambda * mean_i H(softmax(z_t,i))`` over the target logits ``z_t = batch.target_logits``.

    Low entropy pushes the decision boundaries away from dense regions of target features: each unlabelled target
    image is pulled towards one class, whichever the classifier already leans to (so, alone, it can also lock in
    early mistakes; paired with an alignment loss through :class:`TransferSum`). ``lambda = weight(batch)``, an
    :class:`AdaptationWeight` (the ramp by default: off while the features are random). Logs ``entropy`` (nats;
    ``log C`` is a uniform prediction over C classes) and ``lambda``. Has no parameters.
    """

    def __init__(self, weight: AdaptationWeight = AdaptationWeight()):
        super().__init__()
        self.weight = weight

    def forward(self, batch: AdaptationBatch) -> tuple[torch.Tensor, dict]:
        entropy = mean_entropy(batch.target_logits)
        lam = self.weight(batch)
        return lam * entropy, {"entropy": entropy.detach(), "lambda": lam}


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of ``softmax(logits)`` over the rows, in float32."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


class TransferSum(nn.Module):
    """Several transfer losses as one: ``sum_k weights[k] * loss_k(batch)``, e.g.
    ``TransferSum({"dann": DomainAdversarialLoss(head), "entropy": TargetEntropy()}, weights={"entropy": 0.1})``.

    Each part is a transfer-loss module (``forward(AdaptationBatch) -> (loss, logs)``, its own schedule applied);
    ``weights`` (default 1 for each) scale the parts once more, constant over training. The parts are submodules
    (a domain head's parameters train, DDP sees them). Logs each part's logs under ``<name>.`` and its weighted
    loss as ``<name>.loss``: ``dann.domain_acc``, ``entropy.entropy``, ``entropy.loss``...
    """

    def __init__(self, parts: dict[str, nn.Module], weights: dict[str, float] | None = None):
        super().__init__()
        if not isinstance(parts, dict) or not parts:
            raise ValueError("TransferSum needs a non-empty dict {name: transfer-loss module}, e.g. "
                             "{'dann': DomainAdversarialLoss(head), 'entropy': TargetEntropy()}")
        for name, part in parts.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"TransferSum part names must be identifiers (they prefix the logs), got {name!r}")
            if not isinstance(part, nn.Module):
                raise TypeError(f"TransferSum part {name!r} must be an nn.Module mapping an AdaptationBatch to "
                                f"(loss, logs), got {type(part).__name__}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(parts))
        if unknown:
            raise ValueError(f"weights name {unknown}, which are not parts; the parts are {list(parts)}")
        for name, w in weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {w!r}")
        self.parts = nn.ModuleDict(parts)
        self.weights = {name: float(weights.get(name, 1.0)) for name in parts}

    def forward(self, batch: AdaptationBatch) -> tuple[torch.Tensor, dict]:
        total, logs = 0.0, {}
        for name, part in self.parts.items():
            loss, part_logs = part(batch)
            weighted = self.weights[name] * loss
            total = total + weighted
            logs[f"{name}.loss"] = weighted.detach()
            logs.update({f"{name}.{key}": value for key, value in part_logs.items()})
        return total, logs

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


class DomainAdaptation(nn.Module):
    """A ``Classifier`` and a transfer loss module, trained as one module so that DDP sees every parameter.

    ``forward(x)`` is the classifier's logits (``evaluate``/``predict`` work unchanged). ``forward(xs, xt, p)``
    forwards the source and the target batch (separately when ``per_domain``: each normalised by its own
    BatchNorm statistics, see :func:`domain_features`), builds an :class:`AdaptationBatch` and returns
    ``(source logits, transfer loss, logs)``; the ``transfer`` module maps an ``AdaptationBatch`` to
    ``(loss, logs)`` with its weight already applied (``tlutils.dann.DomainAdversarialLoss``,
    ``tlutils.dan.MMDTransfer``, :class:`TargetEntropy`, several of them in a :class:`TransferSum`, or a new one).
    :func:`adaptation_step` adds the source cross-entropy.
    """

    def __init__(self, classifier: nn.Module, transfer: nn.Module, per_domain: bool = True):
        super().__init__()
        if not (hasattr(classifier, "features") and hasattr(classifier, "head")):
            raise TypeError(f"DomainAdaptation adapts a tlutils.models.Classifier (features + head), "
                            f"got {type(classifier).__name__}")
        self.classifier = classifier
        self.transfer = transfer
        self.per_domain = per_domain

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)

    def forward(self, xs: torch.Tensor, xt: torch.Tensor | None = None, progress: float = 0.0):
        if xt is None:
            return self.classifier(xs)
        fs, ft = domain_features(self.classifier, xs, xt, self.per_domain)
        logits, acts = head_activations(self.classifier.head, fs)
        batch = AdaptationBatch(self.classifier, xs, xt, fs, ft, logits, acts, float(progress))
        loss, logs = self.transfer(batch)
        return logits, loss, logs


def adaptation_step(model: nn.Module, batch: dict, state) -> dict:
    """``step_fn`` of an adaptation run: ``CE(source logits, y_s) + transfer loss`` in one forward of ``model``
    (a :class:`DomainAdaptation`, maybe DDP-wrapped) on the ``"source"`` ``(x, y)`` and ``"target"`` x streams.
    Logs ``label_loss``, source ``acc`` and the transfer loss's own logs.
    Chapters 04 and 05 show this source (section 4 of each, after their visible run).
    """
    xs, ys = batch["source"]
    logits, transfer, logs = model(xs, batch["target"], state.progress)
    label_loss = F.cross_entropy(logits, ys)
    with torch.no_grad():
        acc = (logits.argmax(1) == ys).float().mean()
    return {"loss": label_loss + transfer, "label_loss": label_loss.detach(), **logs, "acc": acc}


# ----------------------------------------------------------------------------- AdaBN


@torch.no_grad()
def adabn(model: nn.Module, target, batch_size: int = 1000, device=None) -> nn.Module:
    """AdaBN (Li et al. 2016): a copy of ``model`` whose BatchNorm statistics are re-estimated on ``target``.

    Every weight stays as trained; each BatchNorm layer's running mean and variance become the average of
    its batch statistics over the target inputs (``momentum=None``: a plain average, not a moving one), so
    at test time target images are normalised with target statistics. No target label is used. A model
    without BatchNorm is returned unchanged (as a copy); batch norms frozen by ``tlutils.finetune.freeze`` (a
    linear probe's backbone) are re-estimated too.
    """
    x = target_images(target)
    adapted = copy.deepcopy(model)
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return adapted.eval()
    device = device if device is not None else next(adapted.parameters()).device
    adapted.to(device).eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        # a batch norm frozen by ``tlutils.finetune.freeze`` forces itself into eval mode before each forward
        # (its statistics would silently stay the source's): this copy only infers, so it is unfrozen
        m.__dict__["_tl_frozen"] = False
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    with torch.no_grad():  # train-mode BatchNorm still updates its statistics; no graph is kept
        for xb in x.split(batch_size):
            adapted(xb.to(device))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return adapted.eval()


# ----------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class AdaptationRecipe(Recipe):
    """Everything that defines one adaptation run besides data and seed (and keys the checkpoint cache).

    ``batch_size`` is per domain: an adaptation step sees ``batch_size`` source and ``batch_size`` target images.
    SGD with momentum by default; lr ``lr * annealing(p, alpha, beta)`` (the paper's ``mu0`` is 0.01; with
    BatchNorm 0.02 trained faster in our calibration, for every method alike); adaptation weight
    ``lambda_max * ramp(p, gamma, delay)``. ``batch_norm``: BatchNorm after each convolution of ``ganin_cnn``;
    ``per_domain``: source and target batches are forwarded separately (see :func:`domain_features`).
    Per profile (:meth:`tlutils.recipe.Recipe.for_profile`, :func:`recipe_for`): quick 1,000 steps of 32 + 32;
    full 10,000 of 64 + 64; a handful at smoke scale.
    """

    PROFILES: ClassVar[dict] = {"steps": {"quick": 1000, "full": 10000, "smoke": 4},
                                "batch_size": {"quick": 32, "full": 64}}

    steps: int = 1000
    batch_size: int = 32
    lr: float = 0.02
    momentum: float = 0.9
    optimizer: str = "sgd"
    gamma: float = 10.0
    alpha: float = 10.0
    beta: float = 0.75
    lambda_max: float = 1.0
    delay: float = 0.0
    domain_hidden: tuple[int, ...] = (100,)
    arch: str = "ganin_cnn"
    batch_norm: bool = True
    per_domain: bool = True

    def epochs_for(self, n: int) -> int:
        """Epochs of ``fit`` over ``n`` examples that make about ``steps`` optimiser steps."""
        per_epoch = n // self.batch_size if n > self.batch_size else 1
        return max(1, round(self.steps / per_epoch))


def recipe_for(cfg, **overrides) -> AdaptationRecipe:
    """Chapters 04-05's recipe for ``cfg``'s profile: ``AdaptationRecipe.for_profile(cfg, **overrides)``."""
    return AdaptationRecipe.for_profile(cfg, **overrides)


def build_network(recipe: AdaptationRecipe, num_classes: int) -> Classifier:
    """The classifier a recipe names (``ganin_cnn``, or an arch from ``tlutils.models`` with a 100-unit head)."""
    if recipe.arch == "ganin_cnn":
        return ganin_cnn(num_classes, batch_norm=recipe.batch_norm)
    return build_model(recipe.arch, num_classes, head_hidden=100)


def make_optimizer(model: nn.Module, recipe: AdaptationRecipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over all of ``model``'s parameters (SGD with momentum, as in the paper)."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=(recipe.momentum, 0.999))
    raise ValueError(f"unknown optimizer {recipe.optimizer!r} in the recipe; use 'sgd' or 'adam'")


def _size(data) -> int:
    if isinstance(data, dict):  # named streams: the first defines the epoch
        return _size(next(iter(data.values())))
    if hasattr(data, "x"):
        return len(data.x)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return len(data[0])
    raise TypeError(f"expected a Domain or an (x, y) tuple of tensors, got {type(data).__name__}")


def fit_recipe(
    model: nn.Module,
    train,
    recipe: AdaptationRecipe = AdaptationRecipe(),
    *,
    step_fn=None,
    seed: int = 0,
    device=None,
    amp: bool | None = None,
    progress: bool | None = None,
    val=None,
    desc: str | None = None,
    channels_last: bool = True,
) -> History:
    """One run under a recipe: its optimiser, annealed learning rate, batch size and length.

    ``step_fn`` adds the adaptation term (:func:`adaptation_step`, used by :func:`fit_adaptation`; ``train`` is
    then a dict of streams); without it this is plain supervised training (source-only on the source, the oracle
    on labelled target images).
    """
    return fit(
        model,
        train,
        epochs=recipe.epochs_for(_size(train)),
        optimizer=make_optimizer(model, recipe),
        batch_size=recipe.batch_size,
        callbacks=[LRSchedule(partial(annealing, alpha=recipe.alpha, beta=recipe.beta))],
        step_fn=step_fn,
        device=device,
        amp=amp,
        progress=progress,
        seed=seed,
        val=val,
        desc=desc,
        channels_last=channels_last,
    )


def fit_adaptation(
    model: DomainAdaptation,
    source,
    target,
    recipe: AdaptationRecipe = AdaptationRecipe(),
    *,
    seed: int = 0,
    device=None,
    amp: bool | None = None,
    progress: bool | None = None,
    val=None,
    desc: str | None = None,
) -> History:
    """Train a :class:`DomainAdaptation` on labelled ``source`` and unlabelled ``target`` (a Domain, whose labels
    are never used, or a tensor) under ``recipe``: streams ``{"source", "target"}`` and :func:`adaptation_step`.
    """
    return fit_recipe(model, {"source": source, "target": target_images(target)}, recipe, step_fn=adaptation_step,
                      seed=seed, device=device, amp=amp, progress=progress, val=val, desc=desc)


__all__ = [
    "AdaptationBatch",
    "AdaptationRecipe",
    "AdaptationWeight",
    "DomainAdaptation",
    "TargetEntropy",
    "TransferSum",
    "WEIGHTINGS",
    "adaptation_step",
    "fit_adaptation",
    "head_activations",
    "adabn",
    "build_network",
    "domain_features",
    "dynamic_weight",
    "fit_recipe",
    "infinite_batches",
    "make_optimizer",
    "mean_entropy",
    "recipe_for",
    "target_images",
]
