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
* ``with_new_head``: a copy of a pretrained model's backbone with a fresh head, the start of every strategy;
  ``tile`` and ``fit_one_cycle``: small labelled sets repeated into epochs of several steps, trained one-cycle;
  ``StrategyRecipe``: the sizes and rates of the strategies of chapters 01-03 (chapter 07 reuses them).

The label-budget experiment that compares the strategies (chapters 01-03) is ``tlutils.budget``.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tlutils.models import Classifier, make_head
from tlutils.schedules import LRSchedule, one_cycle
from tlutils.train import History, as_tensors, fit

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


def with_new_head(source_model: nn.Module, num_classes: int, *, hidden: int | None = None, dropout: float = 0.5,
                  seed: int | None = None) -> Classifier:
    """A new ``Classifier``: a deep copy of ``source_model``'s backbone and a fresh head (see ``replace_head``).

    ``source_model`` is not modified. ``seed``: when given, ``torch.manual_seed(seed)`` first, so the head's
    initialisation is reproducible (this reseeds torch's global generator, as the line written by hand would).
    """
    if seed is not None:
        torch.manual_seed(seed)
    return replace_head(Classifier(copy.deepcopy(source_model.backbone), nn.Identity()), num_classes, hidden=hidden,
                        dropout=dropout)


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
    ``lr / factor**k`` for the k-th below it. ``factor=1`` gives every part the same rate.
    Introduced in chapter 03, section 1."""
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
    Introduced in chapter 03, section 2.
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
    Introduced in chapter 03, section 2 (the visible staged run).
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


# ----------------------------------------------------------------------------- the strategies' recipe


@dataclass(frozen=True)
class StrategyRecipe:
    """Sizes and rates of the strategies of chapters 01-03 (``tlutils.budget``).

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
    x, y = as_tensors(data)
    reps = max(1, math.ceil(min_size / max(1, len(x))))
    return (x.repeat(reps, *([1] * (x.dim() - 1))), y.repeat(reps)) if reps > 1 else (x, y)


def fit_one_cycle(model: nn.Module, train, groups: list[dict], *, epochs: int, weight_decay: float = 1e-4,
                  **fit_kwargs) -> History:
    """``fit`` with AdamW over the parameter ``groups`` (each with its own ``lr``) on a ``one_cycle`` schedule.
    ``fit_kwargs`` go to ``fit`` (``batch_size``, ``device``, ``seed``, ``augment``...).
    Introduced in chapter 02, section 1 (one fine-tuning run, visibly)."""
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    return fit(model, train, epochs=epochs, optimizer=opt, callbacks=[LRSchedule(one_cycle)], **fit_kwargs)
