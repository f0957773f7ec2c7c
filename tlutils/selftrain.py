"""Chapter 09: the target's own predictions as training signal: self-training and test-time adaptation (TENT).

Self-training for unsupervised domain adaptation, in the iterative whole-set form of iDANN (Gallego et al. 2020)
with the strong augmentation and class balance of the consistency methods (French et al. 2018; FixMatch, Sohn et
al. 2020), built on the engine (``tlutils.train.fit``'s named streams, ``tlutils.adapt``'s recipe pieces):

1. :func:`pseudo_label`: predict every unlabelled target training image with the current network (normalised with
   *target* BatchNorm statistics, :func:`tlutils.adapt.adabn`) and keep the confident ones, class-balanced (the
   ``share`` most confident of each predicted class, :func:`select_confident`) or above a confidence ``threshold``;
2. train on two named streams, the labelled source and the pseudo-labelled target, with :func:`pseudo_label_step`:
   ``w_s * CE(f(x_s), y_s) + CE(f(A(x_t)), y_hat_t)``, each domain forwarded separately (its own BatchNorm
   statistics), the target views strongly augmented (``A``: :func:`strong_augment`, affine + colour: the
   network may not memorise its own labels pixel by pixel);
3. repeat for the rounds of a :class:`SelfTrainRecipe`, raising the kept share (:func:`self_train`).

TENT (Wang et al., ICLR 2021), :func:`tent`: at test time, normalise each test batch with its own statistics and
take one gradient step on the mean prediction entropy of the batch, updating only the BatchNorm affine parameters
(:func:`tent_parameters`); the prediction of a batch is the one made before its own update is applied.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.adapt import adabn, mean_entropy, target_images
from tlutils.augment import random_affine
from tlutils.recipe import Recipe
from tlutils.schedules import LRSchedule, annealing
from tlutils.train import evaluate, fit, predict

# ----------------------------------------------------------------------------- augmentation


def colour_jitter(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image: a random permutation of the colour channels, contrast in [0.5, 1.5], brightness within +-0.2,
    and with probability 1/2 inversion ``1 - x``; values clipped to [0, 1]. For 3-channel images in [0, 1]."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"colour_jitter expects a batch of RGB images (B, 3, H, W), got shape {tuple(x.shape)}")
    b, dev = len(x), x.device
    perm = torch.rand(b, 3, generator=generator).argsort(1).to(dev)
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    contrast = (0.5 + torch.rand(b, 1, 1, 1, generator=generator)).to(dev, x.dtype)
    shift = ((torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.4).to(dev, x.dtype)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + shift
    invert = (torch.rand(b, 1, 1, 1, generator=generator) < 0.5).to(dev)
    return torch.where(invert, 1 - x, x).clamp(0, 1)


def strong_augment(x: torch.Tensor) -> torch.Tensor:
    """The target view of self-training: affine jitter (10 degrees, 10 % shift, scale 0.9-1.1), then
    :func:`colour_jitter`."""
    return colour_jitter(random_affine(x, 10, 0.1, (0.9, 1.1)))


def weak_augment(x: torch.Tensor) -> torch.Tensor:
    """The source view: affine jitter only (10 degrees, 10 % shift, scale 0.9-1.1)."""
    return random_affine(x, 10, 0.1, (0.9, 1.1))


AUGMENTS = {"strong": strong_augment, "affine": weak_augment, "none": None}


# ----------------------------------------------------------------------------- pseudo-labels


def select_confident(probs: torch.Tensor, *, share: float | None = None, threshold: float | None = None
                     ) -> torch.Tensor:
    """Indices (ascending) of the confident rows of ``probs`` (N x C class probabilities).

    ``share``: class-balanced, for each predicted class ``c`` the ``floor(share * N / C)`` most confident of the
    rows predicted ``c`` (all of them if fewer), so that an easy class cannot crowd out the others; ``share=1``
    keeps every row of a class up to ``N / C``. ``threshold``: every row whose top probability is ``>= threshold``
    (FixMatch's rule; ``threshold=0`` keeps all). Give exactly one.
    """
    if (share is None) == (threshold is None):
        raise ValueError("give exactly one of share= (class-balanced top share) or threshold= (confidence cut)")
    if probs.dim() != 2:
        raise ValueError(f"probs must be N x C class probabilities, got shape {tuple(probs.shape)}")
    conf, labels = probs.max(1)
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        return (conf >= threshold).nonzero().squeeze(1)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must lie in (0, 1], got {share}")
    per_class = int(share * len(probs) / probs.shape[1])
    keep = []
    for c in range(probs.shape[1]):
        rows = (labels == c).nonzero().squeeze(1)
        keep.append(rows[conf[rows].argsort(descending=True, stable=True)[:per_class]])
    return torch.cat(keep).sort().values


@dataclass
class PseudoLabels:
    """The pseudo-labelled part of a target set: ``index`` into it, ``labels`` (the predicted classes) and their
    ``confidence``; ``probs`` are the predictions of every target image (N x C)."""

    index: torch.Tensor
    labels: torch.Tensor
    confidence: torch.Tensor
    probs: torch.Tensor

    @property
    def share(self) -> float:
        """Fraction of the target images kept."""
        return len(self.index) / max(1, len(self.probs))

    def accuracy(self, true_labels: torch.Tensor) -> float:
        """Fraction of the kept pseudo-labels that are right (a diagnostic: needs the labels training never sees)."""
        if len(self.index) == 0:
            return float("nan")
        return float((self.labels == true_labels[self.index].cpu()).float().mean())

    def confident_share(self, threshold: float = 0.9) -> float:
        """Fraction of all target images whose top probability is ``>= threshold``."""
        return float((self.probs.max(1).values >= threshold).float().mean())


def pseudo_label(model: nn.Module, target, *, share: float | None = None, threshold: float | None = None,
                 target_statistics: bool = True, device=None) -> PseudoLabels:
    """Predict every image of ``target`` (a Domain or a tensor; labels unused) with ``model`` and keep the confident
    ones (:func:`select_confident`). ``target_statistics``: predict with BatchNorm statistics re-estimated on
    ``target`` (:func:`tlutils.adapt.adabn`), as the adapted network is tested; ``model`` itself is not changed."""
    x = target_images(target)
    labeller = adabn(model, x, device=device) if target_statistics else model
    probs = predict(labeller, (x, torch.zeros(len(x), dtype=torch.long)), device=device).float().softmax(1)
    index = select_confident(probs, share=share, threshold=threshold)
    conf, labels = probs.max(1)
    return PseudoLabels(index, labels[index], conf[index], probs)


def pseudo_label_step(model: nn.Module, batch: dict, state, *, source_weight: float = 1.0,
                      augment=strong_augment, source_augment=weak_augment) -> dict:
    """``step_fn`` of self-training on the streams ``{"target": (x_t, y_hat_t), "source": (x_s, y_s)}``:
    ``source_weight * CE(f(x_s), y_s) + CE(f(augment(x_t)), y_hat_t)``, each domain in its own forward (its own
    BatchNorm statistics). Logs ``pseudo_loss``, ``label_loss``, source ``acc`` and ``pseudo_agreement``
    (the fraction of augmented target views predicted as their pseudo-label)."""
    xt, yt = batch["target"]
    xs, ys = batch["source"]
    if augment is not None:
        xt = augment(xt)
    if source_augment is not None:
        xs = source_augment(xs)
    target_logits = model(xt)
    pseudo_loss = F.cross_entropy(target_logits, yt)
    loss = pseudo_loss
    logs = {}
    if source_weight > 0:
        source_logits = model(xs)
        label_loss = F.cross_entropy(source_logits, ys)
        loss = loss + source_weight * label_loss
        logs = {"label_loss": label_loss.detach(), "acc": (source_logits.argmax(1) == ys).float().mean()}
    agreement = (target_logits.argmax(1) == yt).float().mean()
    return {"loss": loss, "pseudo_loss": pseudo_loss.detach(), **logs, "pseudo_agreement": agreement}


# ----------------------------------------------------------------------------- the recipe and the loop


ANNEALS = ("round", "run")
"""How the learning rate anneals: from ``lr`` down within each round, or once over the whole run (all rounds)."""


def _annealing(p: float, *, r: int, rounds: int, anneal: str, alpha: float, beta: float) -> float:
    """The rate factor at progress ``p`` of round ``r``: within the round, or over all ``rounds``."""
    return annealing(p if anneal == "round" else (r + p) / rounds, alpha=alpha, beta=beta)


@dataclass(frozen=True)
class SelfTrainRecipe(Recipe):
    """Self-training after an adaptation run: ``shares`` (the class-balanced share kept in each round; one round
    per entry, rising as the network improves) or ``thresholds`` (a confidence cut per round instead), ``steps``
    per round of ``batch_size`` target + ``batch_size`` source images, SGD (``lr``, ``momentum``) annealed as in
    chapter 04 within each round or over the whole run (``anneal``, see ``ANNEALS``), ``source_weight`` of the
    source cross-entropy, ``augment`` of the target views (a name of ``AUGMENTS``). Quick: 4 rounds of about 200
    steps of 32 + 32 (whole epochs of the kept images: about 850 steps, 85 % of chapter 04's run), keeping 40, 60,
    80 and 90 % of the target images; the rate is chapter 04's. Measured on ``mnist5k → mnistm-lite`` from chapter
    04's DANN networks (docs/ch09_prototype_notes.md): shares 25/50/75/90 % gave 0.921 on seeds 0-5 and 0.916 on
    seeds 6-8, 40/60/80/90 % 0.928 and 0.926 (higher on all nine seeds); then 200 steps a round instead of 150
    gave 0.932 against 0.924 on seeds 1, 2, 7-9 and 13-15 (13-15 never run before: +0.3, +0.9, +1.2 points).
    ``ema`` > 0: a :class:`MeanTeacher` with that decay labels the target and is the result (0: the trained network
    itself); 0.99 by default (French et al. 2018's mean teacher)."""

    PROFILES: ClassVar[dict] = {"steps": {"quick": 200, "full": 500, "smoke": 2}}

    shares: tuple[float, ...] = (0.4, 0.6, 0.8, 0.9)
    thresholds: tuple[float, ...] = ()
    steps: int = 200
    batch_size: int = 32
    lr: float = 0.02
    momentum: float = 0.9
    alpha: float = 10.0
    beta: float = 0.75
    source_weight: float = 1.0
    augment: str = "strong"
    anneal: str = "round"
    ema: float = 0.99

    def __post_init__(self) -> None:
        if self.anneal not in ANNEALS:
            raise ValueError(f"unknown anneal {self.anneal!r}; choose one of {', '.join(ANNEALS)}")
        if bool(self.shares) == bool(self.thresholds):
            raise ValueError("SelfTrainRecipe needs shares=(...) or thresholds=(...), one value per round, "
                             "not both (pass shares=() with thresholds)")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1) (0: no mean teacher), got {self.ema}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augment {self.augment!r}; choose one of {', '.join(AUGMENTS)}")

    @property
    def rounds(self) -> int:
        return len(self.shares or self.thresholds)

    def selection(self, r: int) -> dict:
        """The keyword of :func:`select_confident` in round ``r``: ``{"share": ...}`` or ``{"threshold": ...}``."""
        return {"share": self.shares[r]} if self.shares else {"threshold": self.thresholds[r]}


class MeanTeacher:
    """``fit`` callback: after every step, ``teacher = ema * teacher + (1 - ema) * student`` over the floating-point
    state (Tarvainen & Valpola 2017; French et al. 2018); integer buffers are copied. ``teacher`` labels the target
    and is the result of :func:`self_train` when the recipe's ``ema`` > 0 (the default)."""

    def __init__(self, student: nn.Module, ema: float):
        self.student, self.ema = student, ema
        self.teacher = copy.deepcopy(student).eval()
        self.teacher.requires_grad_(False)

    @torch.no_grad()
    def on_batch_end(self, state) -> None:
        for t, s in zip(self.teacher.state_dict().values(), self.student.state_dict().values(), strict=True):
            if t.dtype.is_floating_point:
                t.mul_(self.ema).add_(s.detach(), alpha=1 - self.ema)
            else:
                t.copy_(s)


@dataclass
class RoundLog:
    """One round of :func:`self_train`: what was kept, how right it was (when target labels are given) and the
    target accuracy after the round (when a test set is given)."""

    round: int
    kept: int
    share: float
    confident_share: float
    pseudo_label_acc: float
    target_acc: float = float("nan")


@dataclass
class SelfTrainResult:
    """The self-trained network (``model``, BatchNorm statistics as trained; the mean teacher when the recipe has
    ``ema`` > 0) and one :class:`RoundLog` per round."""

    model: nn.Module
    rounds: list[RoundLog] = field(default_factory=list)


def self_train(model: nn.Module, source, target, recipe: SelfTrainRecipe = SelfTrainRecipe(), *, seed: int = 0,
               target_labels: torch.Tensor | None = None, test=None, device=None,
               progress: bool | None = False) -> SelfTrainResult:
    """Rounds of :func:`pseudo_label` and training on ``{"target": pseudo-labelled, "source": source}`` with
    :func:`pseudo_label_step` (``fit``'s named streams); ``model`` (e.g. chapter 04's DANN network) is trained in
    place. ``target_labels`` (never used for training) and ``test`` (scored with target statistics, ``adabn``)
    only fill the diagnostics of each :class:`RoundLog`. Seeds torch's global generator with ``seed`` first (the
    augmentations draw from it), so a run gives the same numbers in a notebook or in a worker of ``map_jobs``."""
    torch.manual_seed(seed)
    x = target_images(target)
    step_fn = partial(pseudo_label_step, source_weight=recipe.source_weight, augment=AUGMENTS[recipe.augment])
    logs = []
    teacher = MeanTeacher(model, recipe.ema) if recipe.ema > 0 else None
    labeller = teacher.teacher if teacher is not None else model
    scored = None  # the labeller with target statistics, as scored after the last round: it labels the next one
    for r in range(recipe.rounds):
        labels = (pseudo_label(labeller, x, device=device, **recipe.selection(r)) if scored is None else
                  pseudo_label(scored, x, target_statistics=False, device=device, **recipe.selection(r)))
        n = len(labels.index)
        if n < recipe.batch_size:
            raise ValueError(f"round {r} kept {n} target images, fewer than one batch ({recipe.batch_size}); "
                             "raise the share or lower the threshold")
        per_epoch = n // recipe.batch_size
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
        fit(model, {"target": (x[labels.index], labels.labels.to(x.device)), "source": source},
            epochs=max(1, round(recipe.steps / per_epoch)), optimizer=optimizer, batch_size=recipe.batch_size,
            callbacks=[LRSchedule(partial(_annealing, r=r, rounds=recipe.rounds, anneal=recipe.anneal,
                                          alpha=recipe.alpha, beta=recipe.beta)),
                       *([teacher] if teacher is not None else [])], step_fn=step_fn,
            seed=seed * 1000 + r, device=device, progress=progress, desc=f"self-training round {r}")
        model.eval()
        scored = adabn(labeller, x, device=device) if test is not None else None
        acc = float(evaluate(scored, test, device=device)["acc"]) if test is not None else float("nan")
        placc = labels.accuracy(target_labels) if target_labels is not None else float("nan")
        logs.append(RoundLog(r, n, labels.share, labels.confident_share(), placc, acc))
    return SelfTrainResult(labeller, logs)


# ----------------------------------------------------------------------------- TENT


def tent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Prepare ``model`` for TENT in place: every BatchNorm layer normalises with the statistics of the batch it
    sees (no running statistics), only the BatchNorm affine parameters (scale, shift) require gradients. Returns
    those parameters. Raises if the network has no BatchNorm (TENT has nothing to adapt then)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or any(m.weight is None for m in norms):
        raise ValueError("TENT adapts BatchNorm affine parameters; this network has no affine BatchNorm layer")
    model.requires_grad_(False)
    params = []
    for m in norms:
        m.track_running_stats, m.running_mean, m.running_var = False, None, None
        m.weight.requires_grad_(True)
        m.bias.requires_grad_(True)
        params += [m.weight, m.bias]
    return params


@dataclass
class TentResult:
    """TENT's adapted copy of the network (batch-statistics BatchNorm), the online predictions of the stream (of
    the last pass) and their accuracy (when the stream has labels), and the mean entropy of each batch."""

    model: nn.Module
    predictions: torch.Tensor
    online_acc: float
    entropies: list[float]


def tent(model: nn.Module, stream, *, batch_size: int = 64, lr: float = 1e-3, epochs: int = 1,
         device=None) -> TentResult:
    """TENT (Wang et al. 2021) on a copy of ``model`` over ``stream`` (a Domain, whose labels only score the
    predictions, or a tensor of inputs), batch by batch in order: forward with the batch's own statistics,
    predict, then one Adam step (``lr``) on the mean entropy of the batch's predictions, BatchNorm affine
    parameters only (:func:`tent_parameters`). ``epochs`` > 1 passes over the stream again (the paper's offline
    variant); the predictions returned are those of the last pass."""
    if batch_size < 2:
        raise ValueError(f"TENT needs batches of at least 2 images for batch statistics, got batch_size={batch_size}")
    x = target_images(stream)
    y = getattr(stream, "y", None)
    adapted = copy.deepcopy(model)
    if device is not None:
        adapted.to(device)
    dev = next(adapted.parameters()).device
    optimizer = torch.optim.Adam(tent_parameters(adapted), lr=lr, betas=(0.9, 0.999))
    adapted.train()
    entropies: list[float] = []
    preds = []
    for _ in range(epochs):
        preds = []
        for xb in x.split(batch_size):
            logits = adapted(xb.to(dev))
            loss = mean_entropy(logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            preds.append(logits.argmax(1).detach().cpu())
            entropies.append(float(loss.detach()))
    predictions = torch.cat(preds)
    online = float((predictions == y.cpu()).float().mean()) if y is not None else float("nan")
    return TentResult(adapted.eval(), predictions, online, entropies)


__all__ = [
    "ANNEALS",
    "AUGMENTS",
    "MeanTeacher",
    "PseudoLabels",
    "RoundLog",
    "SelfTrainRecipe",
    "SelfTrainResult",
    "TentResult",
    "colour_jitter",
    "pseudo_label",
    "pseudo_label_step",
    "select_confident",
    "self_train",
    "strong_augment",
    "tent",
    "tent_parameters",
    "weak_augment",
]
