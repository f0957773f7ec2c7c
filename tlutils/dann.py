"""Domain-adversarial training (DANN, Ganin et al., JMLR 2016).

A feature extractor ``G_f`` feeds a label predictor ``G_y`` (trained on labelled source images) and a
domain classifier ``G_d`` (source vs target). Between ``G_f`` and ``G_d`` sits a gradient reversal
layer: identity going forward, ``-lambda * grad`` going back. Minimising ``L_y + L_d`` then trains
``G_d`` to separate the domains while pushing ``G_f`` to make them inseparable (the saddle point
``min_{f,y} max_d  L_y - lambda L_d`` of the paper). No target label is ever used.

The pieces: :func:`grad_reverse` / :class:`GradientReversal`, the paper's schedules
(:func:`grl_lambda`, :func:`lr_factor`), :func:`domain_classifier`, the paper's small MNIST CNN
(:func:`ganin_cnn`, a ``Backbone``), :class:`DANN` (any ``Classifier`` + a domain head),
:class:`DANNStep` (a ``step_fn`` for ``tlutils.train.fit``) and :class:`AnnealLR` (a ``fit``
callback), and the experiment helpers used by notebooks 04 and 05 (:func:`run_method`,
:func:`pretrained_pair`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.models import Backbone, Classifier, load_weights, save_checkpoint
from tlutils.train import History, evaluate, fit

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


# ----------------------------------------------------------------------------- schedules


def _check_progress(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"training progress p must lie in [0, 1], got {p}; pass step / total_steps")
    return p


def grl_lambda(p: float, gamma: float = 10.0) -> float:
    """The paper's adaptation factor ``lambda_p = 2 / (1 + exp(-gamma p)) - 1``: 0 at the start, -> 1.

    Starting at 0 keeps the domain classifier's noisy early gradients out of the features.
    """
    p = _check_progress(p)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def lr_factor(p: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """The paper's annealing ``1 / (1 + alpha p)^beta``: the learning rate is ``mu0 * lr_factor(p)``."""
    p = _check_progress(p)
    return 1.0 / (1.0 + alpha * p) ** beta


def annealed_lr(p: float, mu0: float = 0.01, alpha: float = 10.0, beta: float = 0.75) -> float:
    """The paper's learning rate ``mu_p = mu0 / (1 + alpha p)^beta``."""
    return mu0 * lr_factor(p, alpha, beta)


class AnnealLR:
    """``fit`` callback: before each batch set every group's lr to ``base_lr * lr_factor(progress)``."""

    def __init__(self, alpha: float = 10.0, beta: float = 0.75):
        self.alpha, self.beta = alpha, beta
        self.base: list[float] = []

    def on_fit_start(self, state) -> None:
        self.base = [g["lr"] for g in state.optimizer.param_groups]

    def on_batch_start(self, state) -> None:
        factor = lr_factor(state.progress, self.alpha, self.beta)
        for group, base in zip(state.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * factor

    def on_fit_end(self, state) -> None:
        for group, base in zip(state.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base


# ----------------------------------------------------------------------------- networks


def domain_classifier(in_features: int, hidden: tuple[int, ...] = (100,)) -> nn.Sequential:
    """Domain head ``G_d``: Linear-ReLU per hidden width, then one logit (target = 1, source = 0).

    The paper uses ``(100,)`` for MNIST -> MNIST-M and ``(1024, 1024)`` for the SVHN experiments.
    """
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, 1))
    return nn.Sequential(*layers)


class GaninCNN(Backbone):
    """The paper's MNIST feature extractor: conv5x5(32)-ReLU-pool, conv5x5(48)-ReLU-pool, flattened.

    Like the paper it looks at the central ``crop`` x ``crop`` pixels (28: the 32 x 32 domains are
    28 x 28 digits padded by 2), which also makes it ~1.5x cheaper, and keeps the spatial layout:
    48 x 4 x 4 = 768 features. Stages are named ``stem`` and ``stage1``. Inputs in [0, 1] are
    mapped to [-1, 1].
    """

    def __init__(self, widths: tuple[int, int] = (32, 48), crop: int = 28):
        c1, c2 = widths
        stages = OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, c1, 5), nn.ReLU(), nn.MaxPool2d(2)),
            stage1=nn.Sequential(nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2)),
        )
        super().__init__(stages, {"stem": c1, "stage1": c2}, "ganin_cnn", widths=list(widths), crop=crop)
        side = ((crop - 4) // 2 - 4) // 2
        if not 16 <= crop <= 32:
            raise ValueError(
                f"crop must lie in [16, 32] (two 5x5 conv + pool blocks on 32 x 32 inputs), got {crop}"
            )
        self.crop = crop
        self.out_features = c2 * side * side

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        top = (x.shape[-2] - self.crop) // 2
        left = (x.shape[-1] - self.crop) // 2
        if top < 0 or left < 0:
            raise ValueError(f"inputs of size {tuple(x.shape[-2:])} are smaller than the crop {self.crop}")
        return x[..., top : top + self.crop, left : left + self.crop] * 2.0 - 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare(x)
        for stage in self.stages.values():
            x = stage(x)
        return torch.flatten(x, 1)

    def forward_stages(self, x: torch.Tensor, upto: str | None = None) -> dict[str, torch.Tensor]:
        return super().forward_stages(self._prepare(x), upto)


def label_predictor(
    in_features: int, num_classes: int, hidden: tuple[int, ...] = (100, 100)
) -> nn.Sequential:
    """Label head ``G_y``: the paper's fc100-ReLU-fc100-ReLU-fc(classes)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def ganin_cnn(num_classes: int = 10, widths: tuple[int, int] = (32, 48), crop: int = 28) -> Classifier:
    """The paper's MNIST -> MNIST-M network as a ``Classifier`` (backbone ``GaninCNN`` + label head)."""
    backbone = GaninCNN(widths, crop)
    return Classifier(backbone, label_predictor(backbone.out_features, num_classes))


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


def _target_images(target) -> torch.Tensor:
    x = target.x if hasattr(target, "x") else target
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) == 0:
        raise TypeError(
            "target must be a Domain or a non-empty tensor of target inputs (its labels are never used)"
        )
    return x


def infinite_batches(n: int, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless index batches over ``range(n)``: a new seeded permutation per pass (a batch may span two)."""
    gen = torch.Generator().manual_seed(seed)
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch_size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=gen)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


class DANNStep:
    """``step_fn`` for ``tlutils.train.fit``: the batch ``fit`` gives is the labelled source half; this
    step draws an equal-sized unlabelled target half itself (seeded, endless shuffling).

    loss = CE(G_y(G_f(x_s)), y_s) + BCE(G_d(GRL_lambda(G_f([x_s; x_t]))), [0; 1]),
    with ``lambda = lambda_max * grl_lambda(state.progress, gamma)``. The GRL supplies the minus sign
    for the features, so the loss has none (never negate twice). Logs ``label_loss``, ``domain_loss``,
    ``domain_acc`` (0.5 is chance: the features fool the domain head), source ``acc`` and ``lambda``.
    """

    def __init__(self, target, *, gamma: float = 10.0, lambda_max: float = 1.0, seed: int = 0):
        self.target_x = _target_images(target)
        self.gamma, self.lambda_max, self.seed = gamma, lambda_max, seed
        self._batches: Iterator[torch.Tensor] | None = None
        self._batch_size = 0

    def target_batch(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """The next ``n`` target inputs, on ``like``'s device and memory format."""
        if self.target_x.device != like.device:
            self.target_x = self.target_x.to(like.device)
        if self._batches is None or n != self._batch_size:
            self._batches, self._batch_size = infinite_batches(len(self.target_x), n, self.seed), n
        xt = self.target_x[next(self._batches).to(like.device)]
        if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
            xt = xt.contiguous(memory_format=torch.channels_last)
        return xt

    def __call__(self, model: DANN, batch, state) -> dict:
        if not isinstance(model, DANN):
            raise TypeError(
                f"DANNStep trains a tlutils.dann.DANN model (classifier + domain head), "
                f"got {type(model).__name__}; wrap it: DANN(classifier)"
            )
        xs, ys = batch
        xt = self.target_batch(len(xs), xs)
        lam = self.lambda_max * grl_lambda(state.progress, self.gamma)
        feats = model.features(torch.cat([xs, xt]))
        logits = model.classifier.head(feats[: len(xs)])
        label_loss = F.cross_entropy(logits, ys)
        dom_logits = model.domain_logits(feats, lam).float()
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


# ----------------------------------------------------------------------------- training recipes


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one training run besides data and seed (and keys the checkpoint cache).

    ``batch_size`` is per domain: a DANN batch holds ``batch_size`` source + ``batch_size`` target images.
    SGD with momentum by default; lr ``lr * lr_factor(p, alpha, beta)``; lambda ``grl_lambda(p, gamma)``.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    optimizer: str = "sgd"
    gamma: float = 10.0
    alpha: float = 10.0
    beta: float = 0.75
    lambda_max: float = 1.0
    domain_hidden: tuple[int, ...] = (100,)
    arch: str = "ganin_cnn"

    def epochs_for(self, n: int) -> int:
        """Epochs of ``fit`` over ``n`` examples that make about ``steps`` optimiser steps."""
        per_epoch = n // self.batch_size if n > self.batch_size else 1
        return max(1, round(self.steps / per_epoch))


def recipe_for(cfg, **overrides) -> Recipe:
    """Notebook 04's recipe for ``cfg``'s profile (quick: 1,000 steps of 32 + 32; full: 10,000 of 64 + 64)."""
    base = Recipe(steps=cfg.pick(quick=1000, full=10000), batch_size=cfg.pick(quick=32, full=64))
    return replace(base, **overrides)


def build_network(recipe: Recipe, num_classes: int) -> Classifier:
    """The classifier a recipe names (``ganin_cnn``, or an arch from ``tlutils.models``)."""
    if recipe.arch == "ganin_cnn":
        return ganin_cnn(num_classes)
    from tlutils.models import build_model

    return build_model(recipe.arch, num_classes, head_hidden=100)


def _size(data) -> int:
    if hasattr(data, "x"):
        return len(data.x)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return len(data[0])
    raise TypeError(f"expected a Domain or an (x, y) tuple of tensors, got {type(data).__name__}")


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over all of ``model``'s parameters (SGD with momentum, as in the paper)."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=(recipe.momentum, 0.999))
    raise ValueError(f"unknown optimizer {recipe.optimizer!r} in the recipe; use 'sgd' or 'adam'")


def fit_recipe(
    model: nn.Module,
    train,
    recipe: Recipe = Recipe(),
    *,
    step_fn=None,
    seed: int = 0,
    device=None,
    amp: bool | None = None,
    progress: bool | None = None,
    val=None,
    desc: str | None = None,
    channels_last: bool | None = True,
) -> History:
    """One run under a chapter-04 recipe: its optimiser, annealed learning rate, batch size and length.

    ``step_fn`` adds the adaptation term (``DANNStep``, DAN's ``DANStep``); without it this is plain supervised
    training. Sharing this is what makes source-only, DANN and DAN differ only in that term.
    """
    return fit(
        model,
        train,
        epochs=recipe.epochs_for(_size(train)),
        optimizer=make_optimizer(model, recipe),
        batch_size=recipe.batch_size,
        callbacks=[AnnealLR(recipe.alpha, recipe.beta)],
        step_fn=step_fn,
        device=device,
        amp=amp,
        progress=progress,
        seed=seed,
        val=val,
        desc=desc,
        channels_last=channels_last,
    )


def train_dann(
    model: DANN,
    source,
    target,
    recipe: Recipe = Recipe(),
    *,
    seed: int = 0,
    device=None,
    amp: bool | None = None,
    progress: bool | None = None,
    val=None,
) -> History:
    """Train a :class:`DANN` on labelled ``source`` and unlabelled ``target`` with the paper's schedules."""
    step = DANNStep(target, gamma=recipe.gamma, lambda_max=recipe.lambda_max, seed=seed + 1)
    return fit_recipe(model, source, recipe, step_fn=step, seed=seed, device=device, amp=amp, progress=progress,
                      val=val, desc="DANN")


def train_supervised(
    model: Classifier,
    train,
    recipe: Recipe = Recipe(),
    *,
    seed: int = 0,
    device=None,
    amp: bool | None = None,
    progress: bool | None = None,
    val=None,
    desc: str | None = None,
) -> History:
    """Same optimiser, lr schedule, batch and length as :func:`train_dann`, without the domain loss:
    the source-only baseline (``train`` = source) and the oracle (``train`` = labelled target)."""
    return fit_recipe(model, train, recipe, seed=seed, device=device, amp=amp, progress=progress, val=val, desc=desc)


METHODS = ("source_only", "dann", "oracle")


@dataclass
class RunResult:
    """One trained model of an experiment: its method, seed, target accuracy, history and time."""

    method: str
    seed: int
    target_acc: float
    source_acc: float
    model: Classifier
    history: History
    seconds: float


def run_method(
    method: str,
    source,
    target_train,
    target_test,
    recipe: Recipe,
    *,
    seed: int = 0,
    device=None,
    amp: bool | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Train one method from scratch (``torch.manual_seed(seed)`` first) and score it on ``target_test``.

    ``source_only`` and ``dann`` never see target labels; ``oracle`` trains on ``target_train`` with labels.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    torch.manual_seed(seed)
    net = build_network(recipe, source.num_classes)
    start = time.perf_counter()
    kw = dict(seed=seed, device=device, amp=amp, progress=progress)
    if method == "dann":
        history = train_dann(DANN(net, hidden=recipe.domain_hidden), source, target_train, recipe, **kw)
    else:
        train = source if method == "source_only" else target_train
        history = train_supervised(net, train, recipe, desc=method, **kw)
    seconds = time.perf_counter() - start
    return RunResult(
        method,
        seed,
        evaluate(net, target_test, device=device, amp=amp)["acc"],
        evaluate(net, source, device=device, amp=amp)["acc"],
        net.eval(),
        history,
        seconds,
    )


def compare_methods(
    source,
    target_train,
    target_test,
    recipe: Recipe,
    seeds,
    *,
    methods=METHODS,
    device=None,
    progress: bool | None = None,
) -> list[RunResult]:
    """Every method of ``methods`` for every seed (same recipe): the runs behind a results table."""
    return [
        run_method(m, source, target_train, target_test, recipe, seed=s, device=device, progress=progress)
        for s in seeds
        for m in methods
    ]


def summarize(runs: list[RunResult]) -> dict[str, dict[str, float]]:
    """Target accuracy per method over seeds: ``{method: {"mean", "std", "n"}}`` (sample std, 0 if n = 1)."""
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r.method for r in runs):
        acc = torch.tensor([r.target_acc for r in runs if r.method == method], dtype=torch.float64)
        std = float(acc.std()) if len(acc) > 1 else 0.0
        out[method] = {"mean": float(acc.mean()), "std": std, "n": len(acc)}
    return out


OFFLINE_PAIRS = {
    "mnist5k → mnistm-lite": ("mnist5k", "mnistm-lite"),
    "syndigits → mnist5k": ("syndigits", "mnist5k"),
}
ONLINE_PAIRS = {"mnist → mnistm": ("mnist", "mnistm"), "svhn → mnist": ("svhn", "mnist")}
"""The paper's real pairs, run by the full profile when their files are present (MNIST-M needs BSDS500)."""


def available_pairs(cfg) -> dict[str, tuple[str, str]]:
    """Notebook 04's (source, target) pairs: the offline ones, plus in the full profile the online ones whose
    domains are registered and present on disk (a skipped pair is reported with the reason)."""
    pairs = dict(OFFLINE_PAIRS)
    if cfg.profile != "full":
        return pairs
    from tlutils.data import list_domains, load_domain

    for name, domains in ONLINE_PAIRS.items():
        missing = [d for d in domains if d not in list_domains()]
        if missing:
            print(f"skipping {name}: no domain {', '.join(missing)} in tlutils.data")
            continue
        try:
            for d in domains:
                load_domain(d, "test")
        except FileNotFoundError as exc:
            print(f"skipping {name}: {exc}")
            continue
        pairs[name] = domains
    return pairs


# ----------------------------------------------------------------------------- cached pair for notebook 05

PAIR = ("mnist5k", "mnistm-lite")
CACHE_VERSION = 1


def pair_key(recipe: Recipe, source: str, target: str, seed: int) -> str:
    """A short hash of everything that determines a trained pair (recipe, domains, seed, version)."""
    blob = json.dumps(
        {
            "recipe": asdict(recipe),
            "source": source,
            "target": target,
            "seed": seed,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pair_paths(cfg, seed: int = 0, recipe: Recipe | None = None) -> dict[str, Path]:
    """Checkpoint paths of the (source_only, dann) pair for ``cfg`` in ``cfg.data_dir / "checkpoints"``."""
    recipe = recipe or recipe_for(cfg)
    key = pair_key(recipe, *PAIR, seed)
    folder = Path(cfg.data_dir) / "checkpoints"
    return {
        m: folder / f"dann_{PAIR[0]}_to_{PAIR[1]}_{m}_seed{seed}_{key}.pt" for m in ("source_only", "dann")
    }


def save_pair(
    cfg, models: dict[str, Classifier], seed: int = 0, recipe: Recipe | None = None, **metadata
) -> dict[str, Path]:
    """Write the ``source_only`` and ``dann`` classifiers where :func:`pretrained_pair` looks (atomic)."""
    recipe = recipe or recipe_for(cfg)
    paths = pair_paths(cfg, seed, recipe)
    for method, path in paths.items():
        save_checkpoint(
            models[method],
            path,
            method=method,
            source=PAIR[0],
            target=PAIR[1],
            seed=seed,
            recipe=asdict(recipe),
            **metadata.get(method, {}),
        )
    return paths


def _load_classifier(path: Path, recipe: Recipe, num_classes: int) -> Classifier:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob["state_dict"]
    except Exception as exc:
        raise ValueError(
            f"{path} is not a readable checkpoint ({exc}); delete it and it will be retrained"
        ) from exc
    model = build_network(recipe, num_classes)
    load_weights(model, state)
    return model.eval()


def pretrained_pair(cfg, seed: int = 0, *, progress: bool | None = None) -> tuple[Classifier, Classifier]:
    """The (source_only, dann) classifiers for mnist5k -> mnistm-lite under ``cfg``'s recipe.

    Loaded from ``cfg.data_dir / "checkpoints"`` when notebook 04 (or an earlier call) left them there;
    otherwise trained now (a few minutes on a CPU in the quick profile) and cached. Both are ``Classifier``
    s with ``features(x)``; they share architecture and recipe, so their features are comparable.
    """
    from tlutils.data import load_domain

    recipe = recipe_for(cfg)
    paths = pair_paths(cfg, seed, recipe)
    num_classes = 10
    if all(p.exists() for p in paths.values()):
        return tuple(_load_classifier(paths[m], recipe, num_classes) for m in ("source_only", "dann"))
    device = cfg.device
    source = load_domain(PAIR[0], "train", device=device)
    target_train = load_domain(PAIR[1], "train", device=device)
    target_test = load_domain(PAIR[1], "test", device=device)
    runs = {
        m: run_method(
            m, source, target_train, target_test, recipe, seed=seed, device=device, progress=progress
        )
        for m in ("source_only", "dann")
    }
    save_pair(
        cfg,
        {m: r.model for m, r in runs.items()},
        seed,
        recipe,
        **{m: {"target_acc": r.target_acc} for m, r in runs.items()},
    )
    return runs["source_only"].model.cpu().eval(), runs["dann"].model.cpu().eval()
