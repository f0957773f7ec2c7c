"""What to freeze and which learning rate each part gets: the fine-tuning strategies of chapters 01-03.

A ``Classifier`` is seen as an ordered list of parts, bottom-up: the backbone's stages
(``stem, stage1, ..., stage4``) and then ``head``. On top of that:

* ``freeze`` / ``unfreeze`` by part name. Frozen parameters get no gradient, and batch-norm layers
  inside frozen parts stay in eval mode (their running statistics do not move) even while the rest
  of the model trains.
* ``discriminative_groups``: one optimizer parameter group per part with geometric learning rates,
  ``lr_k = lr / factor**k`` for the k-th part below the head (ULMFiT: factor 2.6).
* ``GradualUnfreezing``: a ``fit`` callback that trains the head first and unfreezes one stage per
  epoch top-down (ULMFiT), keeping the optimizer in step with the newly trainable parameters.
* ``fine_tune``: fastai's recipe (frozen epochs for the head, then everything with discriminative rates).
* ``train_strategy`` / ``label_budget_curve``: the four strategies of the chapters (scratch,
  linear probe, full fine-tuning, staged unfreezing) on the same target and label budgets.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tlutils.atomic import atomic_write_text
from tlutils.models import make_head
from tlutils.schedules import LRSchedule, one_cycle
from tlutils.train import History, fit

HEAD = "head"
ULMFIT_FACTOR = 2.6
"""Howard & Ruder (2018): each layer group gets the learning rate of the group above divided by 2.6."""


# ----------------------------------------------------------------------------- parts and freezing


def parts(model: nn.Module) -> OrderedDict[str, nn.Module]:
    """The model's parts bottom-up: backbone stages, then ``head``."""
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if backbone is None or head is None or not hasattr(backbone, "stages"):
        raise TypeError("expected a tlutils Classifier (backbone with named stages + head), "
                        f"got {type(model).__name__}")
    out = OrderedDict(backbone.stages.items())
    out[HEAD] = head
    return out


def part_names(model: nn.Module) -> list[str]:
    """Part names bottom-up, e.g. ``['stem', 'stage1', 'stage2', 'stage3', 'stage4', 'head']``."""
    return list(parts(model))


def _select(model: nn.Module, names: str | Iterable[str] | None, default: Sequence[str]) -> list[str]:
    valid = part_names(model)
    names = list(default) if names is None else [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; the model's parts are {valid}")
    return names


def _keep_eval_if_frozen(module: nn.Module, args) -> None:
    """Forward pre-hook on batch norms: a frozen one runs in eval mode, whatever ``model.train()`` said."""
    if module.__dict__.get("_tl_frozen", False):
        module.training = False


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_trainable(model: nn.Module, names: str | Iterable[str] | None, trainable: bool) -> list[str]:
    """Make the named parts trainable or frozen (None: every part); returns the names changed.

    Freezing turns off ``requires_grad`` and puts the part's batch norms in eval mode for good (a
    forward pre-hook re-applies it after every ``model.train()``). Unfreezing undoes both and puts
    the batch norms back in the model's current mode.
    """
    names = _select(model, names, part_names(model))
    table = parts(model)
    for name in names:
        for p in table[name].parameters():
            p.requires_grad_(trainable)
        for bn in _batch_norms(table[name]):
            if not bn.__dict__.get("_tl_hooked", False):
                bn.register_forward_pre_hook(_keep_eval_if_frozen)
                bn._tl_hooked = True
            bn._tl_frozen = not trainable
            bn.train(model.training and trainable)
    return names


def freeze(model: nn.Module, names: str | Iterable[str] | None = None) -> list[str]:
    """Freeze the named parts (default: the whole backbone, leaving the head trainable)."""
    default = [n for n in part_names(model) if n != HEAD]
    return set_trainable(model, _select(model, names, default), False)


def unfreeze(model: nn.Module, names: str | Iterable[str] | None = None) -> list[str]:
    """Unfreeze the named parts (default: all of them)."""
    return set_trainable(model, names, True)


def trainable_parts(model: nn.Module) -> list[str]:
    """Parts with at least one trainable parameter, bottom-up."""
    return [n for n, m in parts(model).items() if any(p.requires_grad for p in m.parameters())]


def replace_head(model: nn.Module, num_classes: int, hidden: int | None = None, dropout: float = 0.5) -> nn.Module:
    """Give ``model`` a new head for ``num_classes``: linear, or Linear-ReLU-Dropout-Linear with ``hidden`` units.

    The two-layer head is the one many tutorials use in a common ResNet-50 recipe; the old head is discarded.
    """

    head = make_head(model.backbone.out_features, num_classes, hidden=hidden, dropout=dropout)
    model.head = head.to(next(model.backbone.parameters()).device)
    return model


def reinitialise(module: nn.Module) -> nn.Module:
    """Reset every layer that has ``reset_parameters`` (in place): the same architecture, random weights."""
    for m in module.modules():
        if hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return module


# ----------------------------------------------------------------------------- learning rates


def discriminative_lrs(model: nn.Module, lr: float, factor: float = ULMFIT_FACTOR,
                       order: Sequence[str] | None = None) -> dict[str, float]:
    """Learning rate per part: ``lr`` for the first of ``order`` (default top-down: head, stage4, ..., stem),
    ``lr / factor**k`` for the k-th below it. ``factor=1`` gives every part the same rate."""
    if lr <= 0 or factor <= 0:
        raise ValueError(f"lr and factor must be positive, got lr={lr}, factor={factor}")
    order = _select(model, order, part_names(model)[::-1])
    return {name: lr / factor**k for k, name in enumerate(order)}


def discriminative_groups(model: nn.Module, lr: float, factor: float = ULMFIT_FACTOR,
                          order: Sequence[str] | None = None, trainable_only: bool = False,
                          weight_decay: float | None = None) -> list[dict]:
    """Optimizer parameter groups, one per part, named (``group["name"]``) and with geometric rates.

    All parameters are included by default, frozen ones too: an optimizer skips parameters without a
    gradient, so later unfreezing needs no change to the optimizer and LR schedulers see every group
    from the start.
    """
    lrs = discriminative_lrs(model, lr, factor, order)
    table = parts(model)
    groups = []
    for name, group_lr in lrs.items():
        params = [p for p in table[name].parameters() if p.requires_grad or not trainable_only]
        if params:
            group = {"params": params, "lr": group_lr, "name": name}
            if weight_decay is not None:
                group["weight_decay"] = weight_decay
            groups.append(group)
    return groups


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate of each named parameter group."""
    return {g.get("name", f"group{i}"): g["lr"] for i, g in enumerate(optimizer.param_groups)}


# ----------------------------------------------------------------------------- gradual unfreezing


class GradualUnfreezing:
    """``fit`` callback: head first, then one more part every ``every`` epochs top-down (ULMFiT).

    At the start of ``fit`` everything but the first of ``order`` is frozen; at the start of epoch
    ``e`` the top ``1 + e // every`` parts are trainable. Parts missing from the optimizer are added
    as new groups with their discriminative rate (``lr / factor**k``); an optimizer built with
    ``discriminative_groups`` already holds them all. ``records`` (one row per epoch: which parts
    train and each group's rate) and ``lr_trace`` (per step, 0 for frozen parts) feed the plots.
    """

    def __init__(self, order: Sequence[str] | None = None, every: int = 1, lr: float | None = None,
                 factor: float = ULMFIT_FACTOR):
        if every < 1:
            raise ValueError(f"every must be >= 1 epoch, got {every}")
        self.order = list(order) if order is not None else None
        self.every = every
        self.lr = lr
        self.factor = factor
        self.records: list[dict] = []
        self.lr_trace: list[dict] = []

    def trainable_at(self, epoch: int) -> list[str]:
        """Parts trainable during ``epoch`` (top-down order)."""
        return self.order[: min(len(self.order), 1 + epoch // self.every)]

    def on_fit_start(self, state) -> None:
        model = state.model
        self.order = _select(model, self.order, part_names(model)[::-1])
        freeze(model, [n for n in part_names(model) if n not in self.order[:1]])
        unfreeze(model, self.order[:1])
        self._sync_optimizer(state)

    def on_epoch_start(self, state) -> None:
        unfreeze(state.model, self.trainable_at(state.epoch))
        self._sync_optimizer(state)
        self.records.append({"epoch": state.epoch, "step": state.step, "trainable": trainable_parts(state.model),
                             "lr": self._effective_lrs(state)})

    def on_batch_end(self, state) -> None:
        self.lr_trace.append({"step": state.step, **self._effective_lrs(state)})

    def _effective_lrs(self, state) -> dict[str, float]:
        names, train = set(part_names(state.model)), set(trainable_parts(state.model))
        return {name: (lr if name in train or name not in names else 0.0)
                for name, lr in group_lrs(state.optimizer).items()}

    def _sync_optimizer(self, state) -> None:
        """Add trainable parameters the optimizer does not know yet, as one named group per part."""
        known = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
        table = parts(state.model)
        base = self.lr if self.lr is not None else max(g["lr"] for g in state.optimizer.param_groups)
        lrs = discriminative_lrs(state.model, base, self.factor, self.order)
        for name in self.order:
            new = [p for p in table[name].parameters() if p.requires_grad and id(p) not in known]
            if new:
                state.optimizer.add_param_group({"params": new, "lr": lrs[name], "name": name})


def staged_unfreezing(model: nn.Module, train, *, epochs: int, lr: float = 1e-3, factor: float = ULMFIT_FACTOR,
                      every: int = 1, order: Sequence[str] | None = None, weight_decay: float = 1e-4,
                      schedule: bool = True, **fit_kwargs):
    """ULMFiT: discriminative rates + gradual unfreezing (+ one-cycle rates); returns ``(History, GradualUnfreezing)``.

    ``fit_kwargs`` go to ``fit`` (``val``, ``batch_size``, ``device``, ``seed``, ``callbacks``...).
    """
    schedule_cb = GradualUnfreezing(order=order, every=every, lr=lr, factor=factor)
    opt = torch.optim.AdamW(discriminative_groups(model, lr, factor, order), lr=lr, weight_decay=weight_decay)
    callbacks = [schedule_cb, *([LRSchedule(one_cycle)] if schedule else []), *fit_kwargs.pop("callbacks", ())]
    history = fit(model, train, epochs=epochs, optimizer=opt, callbacks=callbacks, **fit_kwargs)
    return history, schedule_cb


def fine_tune(model: nn.Module, train, *, epochs: int, lr: float = 1e-3, freeze_epochs: int = 1,
              unfrozen_lr: float | None = None, factor: float = ULMFIT_FACTOR, weight_decay: float = 1e-4,
              **fit_kwargs):
    """fastai's ``fine_tune``: ``freeze_epochs`` with the backbone frozen (head at ``lr``), then ``epochs`` with
    everything trainable at discriminative rates peaking at ``unfrozen_lr`` (default ``lr / 2``, as fastai).

    Each phase has its own one-cycle schedule. Returns one ``History`` whose rows carry ``phase``.
    """
    history = History()
    phases = [("frozen", freeze_epochs, lr, True), ("unfrozen", epochs, unfrozen_lr or lr / 2, False)]
    for phase, n_epochs, peak, frozen in phases:
        if n_epochs <= 0:
            continue
        unfreeze(model)
        if frozen:
            freeze(model)
        opt = torch.optim.AdamW(discriminative_groups(model, peak, factor, trainable_only=True), lr=peak,
                                weight_decay=weight_decay)
        callbacks = [LRSchedule(one_cycle), *fit_kwargs.get("callbacks", ())]
        h = fit(model, train, epochs=n_epochs, optimizer=opt, **{**fit_kwargs, "callbacks": callbacks})
        offset = len(history.epochs)
        history.epochs.extend({**r, "epoch": r["epoch"] + offset, "phase": phase} for r in h.epochs)
        history.steps.extend(h.steps)
    unfreeze(model)
    return history


# ----------------------------------------------------------------------------- strategies and label budgets

STRATEGIES = ("scratch", "linear_probe", "finetune", "staged")
STRATEGY_VERSION = 1
"""Bump when a strategy's training changes, so cached label-budget results are not reused."""


@dataclass(frozen=True)
class Recipe:
    """Sizes and rates of the strategies.

    Every trained strategy runs ``epochs`` epochs with a one-cycle schedule at its own peak rate.
    ``min_epoch`` tiles tiny labelled sets so an epoch has at least that many examples (1 label per
    class is 10 images; a schedule that unfreezes one stage per epoch needs epochs of several steps).
    ``staged`` unfreezes one part per epoch top-down (6 parts: all train from epoch 5 on). Fine-tuning and
    staged default to the same peak rate (1e-3); chapters 02 and 03 choose each strategy's rate on a
    validation split with ``select_lr`` (the same grid and procedure for both).
    ``augment`` names a ``tlutils.augment`` preset (``"digits"``) applied to training batches of the
    trained strategies (not the linear probe, which trains on cached features).
    """

    epochs: int = 9
    batch_size: int = 32
    min_epoch: int = 500
    lr_scratch: float = 3e-3
    lr_finetune: float = 1e-3
    lr_staged: float = 1e-3
    factor: float = ULMFIT_FACTOR
    head_epochs: int = 100
    lr_head: float = 1e-2
    weight_decay: float = 1e-4
    augment: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def tile(data, min_size: int):
    """Repeat a small labelled set until it has at least ``min_size`` examples (an epoch of several steps)."""
    from tlutils.train import as_tensors

    x, y = as_tensors(data)
    reps = max(1, math.ceil(min_size / max(1, len(x))))
    return (x.repeat(reps, *([1] * (x.dim() - 1))), y.repeat(reps)) if reps > 1 else (x, y)


def _fit_one_cycle(model: nn.Module, data, groups: list[dict], recipe: Recipe, **fit_kwargs):
    from tlutils.train import fit

    opt = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    return fit(model, data, epochs=recipe.epochs, optimizer=opt, callbacks=[LRSchedule(one_cycle)], **fit_kwargs)


def train_strategy(strategy: str, source: nn.Module, train, *, num_classes: int, recipe: Recipe = Recipe(),
                   seed: int = 0, device: str | torch.device | None = None, head_hidden: int | None = None,
                   train_features=None) -> nn.Module:
    """Train one strategy on labelled ``train`` and return the resulting ``Classifier`` (in eval mode).

    * ``scratch``: the source's architecture with random weights, every layer at ``lr_scratch``.
    * ``linear_probe``: the frozen source backbone + a new head trained on cached features
      (``train_features``: the ``Features`` of ``train``; extracted here when not given).
    * ``finetune``: the source backbone + new head, every layer at ``lr_finetune``.
    * ``staged``: ULMFiT: discriminative rates (``lr_staged / factor**k``) + gradual unfreezing.
    The source model is never modified; ``seed`` fixes the new head, the random init and the batch order.
    """
    from tlutils.augment import get as get_augment
    from tlutils.features import cached_features, train_linear_head
    from tlutils.models import Classifier

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(source.backbone), nn.Identity())
    replace_head(model, num_classes, hidden=head_hidden)
    unfreeze(model)
    common = dict(batch_size=recipe.batch_size, device=device, seed=seed, progress=False, desc=strategy,
                  augment=get_augment(recipe.augment))
    if strategy == "linear_probe":
        feats = train_features if train_features is not None else cached_features(model, train, device=device)
        model.head, _ = train_linear_head(feats, num_classes=num_classes, epochs=recipe.head_epochs,
                                          lr=recipe.lr_head, weight_decay=recipe.weight_decay, hidden=head_hidden,
                                          device=device, seed=seed)
        freeze(model)
        return model.eval()
    data = tile(train, recipe.min_epoch)
    if strategy == "scratch":
        reinitialise(model.backbone)
        _fit_one_cycle(model, data, [{"params": list(model.parameters()), "lr": recipe.lr_scratch}], recipe, **common)
    elif strategy == "finetune":
        _fit_one_cycle(model, data, [{"params": list(model.parameters()), "lr": recipe.lr_finetune}], recipe,
                       **common)
    else:
        staged_unfreezing(model, data, epochs=recipe.epochs, lr=recipe.lr_staged, factor=recipe.factor,
                          weight_decay=recipe.weight_decay, **common)
        unfreeze(model)
    return model.eval()


def _code_fingerprint() -> str:
    """Hash of the source of the modules a run goes through, so edited code never reuses cached numbers."""
    import hashlib
    import importlib
    from pathlib import Path

    h = hashlib.blake2b(digest_size=8)
    for name in ("tlutils.finetune", "tlutils.features", "tlutils.models", "tlutils.train", "tlutils.augment"):
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()


def _run_identity(recipe: Recipe, source: nn.Module, train, test, head_hidden: int | None,
                  device: torch.device) -> dict:
    """Everything besides (strategy, k, seed) that determines a label-budget run's accuracy."""
    from tlutils.features import data_fingerprint, weights_fingerprint

    return {"version": STRATEGY_VERSION, "code": _code_fingerprint(), "recipe": recipe.as_dict(),
            "head_hidden": head_hidden,
            "source": weights_fingerprint(source.backbone), "train": data_fingerprint(train),
            "test": data_fingerprint(test), "torch": torch.__version__, "device": device.type,
            "threads": torch.get_num_threads() if device.type == "cpu" else None}


RECIPE_FIELDS = {
    "scratch": ("epochs", "batch_size", "min_epoch", "weight_decay", "augment", "lr_scratch"),
    "finetune": ("epochs", "batch_size", "min_epoch", "weight_decay", "augment", "lr_finetune"),
    "staged": ("epochs", "batch_size", "min_epoch", "weight_decay", "augment", "lr_staged", "factor"),
    "linear_probe": ("head_epochs", "lr_head", "weight_decay"),
}
"""The recipe fields each strategy's training reads: a run's cache key holds only these, so changing one
strategy's rate (chapter 03 tunes staged's) leaves the other strategies' cached runs valid."""


def _run_key(identity: dict, strategy: str, k: int, seed: int) -> str:
    import hashlib
    import json

    recipe = identity.get("recipe", {})
    fields = {**identity, "recipe": {f: recipe[f] for f in RECIPE_FIELDS[strategy] if f in recipe},
              "strategy": strategy, "k": int(k), "seed": int(seed)}
    return f"{strategy}-k{k}-s{seed}-" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def label_budget_curve(source: nn.Module, train, test, *, strategies: Sequence[str] = STRATEGIES,
                       budgets: Sequence[int] = (1, 5, 10, 50), seeds: Sequence[int] = (0, 1, 2),
                       recipe: Recipe = Recipe(), device: str | torch.device | None = None,
                       head_hidden: int | None = None, cache: bool = True,
                       progress: bool | None = None) -> dict[str, dict[int, list[float]]]:
    """Test accuracy of each strategy at each label budget (``k`` labels per class) and seed.

    Seed ``s`` draws the labelled subset ``train.per_class(k, s)`` and initialises the new head, so
    every strategy sees the same examples. Returns ``{strategy: {k: [acc per seed]}}`` (fractions).

    With ``cache`` each run's accuracy is kept in ``<data dir>/budget_runs``, keyed by everything
    that determines it (strategy, k, seed, recipe, source weights, data, the source code of the
    modules involved, torch version, device type, CPU threads), so chapters that share runs (01-03) compute each
    one once; on the same machine a cached run is the number a fresh run gives.
    """
    import json

    from tlutils.config import data_dir, get_device
    from tlutils.features import cached_features
    from tlutils.train import accuracy, make_progress, progress_enabled

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {STRATEGIES}")
    device = get_device(device) if not isinstance(device, torch.device) else device
    cache_dir = data_dir() / "budget_runs"
    identity = _run_identity(recipe, source, train, test, head_hidden, device) if cache else {}
    out: dict[str, dict[int, list[float]]] = {s: {int(k): [] for k in budgets} for s in strategies}
    feats = test_feats = None
    bar = make_progress(len(strategies) * len(budgets) * len(seeds), "label budgets", progress_enabled(progress))
    for k in budgets:
        for seed in seeds:
            index = train.per_class_index(k, seed)
            labelled = train.subset(index)
            for strategy in strategies:
                path = cache_dir / f"{_run_key(identity, strategy, k, seed)}.json"
                acc = json.loads(path.read_text())["acc"] if cache and path.exists() else None
                if acc is None and strategy == "linear_probe":
                    if feats is None:
                        feats = cached_features(source, train, device=device)
                        test_feats = cached_features(source, test, device=device)
                    model = train_strategy(strategy, source, labelled, num_classes=train.num_classes, recipe=recipe,
                                           seed=seed, device=device, head_hidden=head_hidden,
                                           train_features=feats.subset(index))
                    acc = accuracy(model.head, test_feats, device=device)
                elif acc is None:
                    model = train_strategy(strategy, source, labelled, num_classes=train.num_classes,
                                           recipe=recipe, seed=seed, device=device, head_hidden=head_hidden)
                    acc = accuracy(model, test, device=device)
                if cache and not path.exists():
                    atomic_write_text(path, json.dumps({"acc": acc, "strategy": strategy, "k": int(k),
                                                        "seed": int(seed)}))
                out[strategy][int(k)].append(acc)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return out


def select_lr(source: nn.Module, train, val, *, strategy: str, lrs: Sequence[float], k: int, seed: int = 0,
              recipe: Recipe = Recipe(), device: str | torch.device | None = None) -> tuple[float, dict[float, float]]:
    """Choose ``strategy``'s peak learning rate on a validation split: train once per rate on
    ``train.per_class(k, seed)`` and score on ``val``. Returns ``(best rate, {rate: val accuracy})``
    (ties go to the first rate listed). Runs are cached like ``label_budget_curve``'s (keyed by ``val``)."""
    from dataclasses import replace

    field = {"scratch": "lr_scratch", "finetune": "lr_finetune", "staged": "lr_staged"}.get(strategy)
    if field is None:
        raise ValueError(f"select_lr tunes a trained strategy (scratch, finetune, staged), not {strategy!r}")
    scores = {}
    for lr in lrs:
        run = label_budget_curve(source, train, val, strategies=(strategy,), budgets=[k], seeds=[seed],
                                 recipe=replace(recipe, **{field: lr}), device=device, progress=False)
        scores[lr] = run[strategy][int(k)][0]
    best = max(scores, key=lambda lr: (scores[lr], -list(lrs).index(lr)))
    return best, scores


def summarise(curve: dict[str, dict[int, list[float]]]) -> list[dict]:
    """Rows ``{strategy, k, mean, std, n}`` of a ``label_budget_curve`` result (std over seeds, ddof=1)."""
    import statistics

    return [{"strategy": s, "k": k, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
             "n": len(v)} for s, per_k in curve.items() for k, v in per_k.items()]
