"""Linear probe, fine-tuning and LP-FT (chapter 08; Kumar et al. 2022), and how far features move.

* ``train_peft``: one method of ``PEFT_METHODS`` (head only, BitFit, LoRA, adapters, full fine-tuning) trained
  from the source model with a new head, all at the same number of steps on a one-cycle schedule.
* ``lp_ft``: linear probe first (head only), then every parameter from that head at a smaller rate. Kumar et
  al. argue a random head's large gradients distort the pretrained features during fine-tuning; a trained head
  keeps them closer, which is what ``feature_change`` measures.
* ``select_lr``: a method's peak rate chosen on a validation split (chapter 02's procedure: one run per rate at
  one seed, best validation accuracy, ties to the first rate listed); the runs come back for reuse.
* ``domain_accuracy``: accuracy on several test domains, each normalised with its own BatchNorm statistics
  (AdaBN, ``tlutils.adapt.adabn``), so that a shift in image statistics alone does not decide the score.
* ``feature_change``: similarity (``tlutils.features.linear_cka``, chapter 02) and relative change between the
  pretrained and the fine-tuned backbone's features on the same inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from tlutils.adapt import adabn
from tlutils.features import linear_cka
from tlutils.finetune import fit_one_cycle, freeze, tile, unfreeze, with_new_head
from tlutils.peft import add_adapters, apply_lora, bitfit, trainable_parameters
from tlutils.recipe import Recipe
from tlutils.train import accuracy, predict_features

PEFT_METHODS = ("head", "bitfit", "lora", "adapter", "full")
"""The methods ``train_peft`` knows; ``select_lr`` also takes ``"lpft"`` (LP-FT's second-stage rate)."""


@dataclass(frozen=True)
class PeftRecipe(Recipe):
    """Sizes and rates of chapter 08's runs (a ``tlutils.recipe.Recipe``): every method trains ``epochs`` epochs of
    ``min_epoch`` examples.

    ``lr`` holds each method's peak rate (a frozen backbone tolerates larger rates than full fine-tuning);
    ``lr_ft_after_lp`` is LP-FT's second stage, ``rank`` LoRA's r, ``reduction`` the adapters' bottleneck.
    """

    epochs: int = 6
    batch_size: int = 32
    min_epoch: int = 500
    lr_head: float = 1e-2
    lr_bitfit: float = 3e-3
    lr_lora: float = 3e-3
    lr_adapter: float = 3e-3
    lr_full: float = 1e-3
    lr_ft_after_lp: float = 3e-4
    rank: int = 4
    reduction: int = 8
    weight_decay: float = 1e-4


def prepare(method: str, model: nn.Module, recipe: PeftRecipe = PeftRecipe(), rank: int | None = None) -> nn.Module:
    """Make ``method``'s parameters of ``model`` (a ``Classifier`` with a new head) trainable, in place."""
    if method == "head":
        freeze(model)
    elif method == "bitfit":
        bitfit(model)
    elif method == "lora":
        apply_lora(model, r=rank or recipe.rank)
    elif method == "adapter":
        add_adapters(model, reduction=recipe.reduction)
    elif method == "full":
        unfreeze(model)
    else:
        raise ValueError(f"unknown method {method!r}: choose one of {PEFT_METHODS}")
    return model


def train_peft(method: str, source_model: nn.Module, train, *, num_classes: int,
               recipe: PeftRecipe = PeftRecipe(), seed: int = 0, rank: int | None = None, lr: float | None = None,
               val=None, device: str | torch.device | None = None, progress: bool | None = False):
    """Train ``method`` from ``source_model`` with a new head on ``train``; returns ``(model, history)``.

    Every method runs the same steps (``recipe.epochs`` epochs of ``recipe.min_epoch`` tiled examples) with
    AdamW on a one-cycle schedule at its peak rate ``lr`` (default ``recipe.lr_<method>``); ``val``, when given,
    is scored after each epoch (the history's ``val_acc``). Introduced in chapter 08, section 1.
    """
    model = prepare(method, with_new_head(source_model, num_classes, seed=seed), recipe, rank)
    if device is not None:
        model = model.to(device)
    rate = lr if lr is not None else getattr(recipe, f"lr_{method}")
    history = fit_one_cycle(model, tile(train, recipe.min_epoch), [{"params": trainable_parameters(model), "lr": rate}],
                            epochs=recipe.epochs, weight_decay=recipe.weight_decay, batch_size=recipe.batch_size,
                            val=val, seed=seed, device=device, progress=progress)
    return model.eval(), history


def lp_ft(source_model: nn.Module, train, *, num_classes: int, recipe: PeftRecipe = PeftRecipe(), seed: int = 0,
          lr: float | None = None, probe: nn.Module | None = None, device: str | torch.device | None = None,
          progress: bool | None = False):
    """LP-FT (Kumar et al. 2022): a linear probe, then every parameter from the trained head at rate ``lr``
    (default ``recipe.lr_ft_after_lp``), each stage ``recipe.epochs`` epochs. Returns ``(model, [h_lp, h_ft])``.

    ``probe``: an already trained linear probe (``train_peft("head", ...)`` on the same data) to start from; it
    is copied, not changed, and ``h_lp`` is then ``None``. Introduced in chapter 08, section 2."""
    if probe is None:
        model, h_lp = train_peft("head", source_model, train, num_classes=num_classes, recipe=recipe, seed=seed,
                                 device=device, progress=progress)
    else:
        model, h_lp = copy.deepcopy(probe), None
    unfreeze(model)
    rate = lr if lr is not None else recipe.lr_ft_after_lp
    h_ft = fit_one_cycle(model, tile(train, recipe.min_epoch), [{"params": trainable_parameters(model), "lr": rate}],
                         epochs=recipe.epochs, weight_decay=recipe.weight_decay, batch_size=recipe.batch_size,
                         seed=seed + 1, device=device, progress=progress)
    return model.eval(), [h_lp, h_ft]


def select_lr(method: str, source_model: nn.Module, train, val, *, lrs, num_classes: int,
              recipe: PeftRecipe = PeftRecipe(), seed: int = 0, probe: nn.Module | None = None,
              device: str | torch.device | None = None) -> tuple[float, dict[float, float], dict[float, nn.Module]]:
    """Choose ``method``'s peak rate on ``val`` (chapter 02's ``tlutils.budget.select_lr`` procedure): one run per
    rate on ``train`` at ``seed``, scored on ``val``. Returns ``(best rate, {rate: val accuracy}, {rate: model})``
    (ties go to the first rate listed); the models let the chosen run be reused. ``method`` is one of
    ``PEFT_METHODS`` or ``"lpft"`` (its second stage's rate, from ``probe`` when given)."""
    if not lrs:
        raise ValueError("select_lr needs at least one candidate rate in lrs")
    models, scores = {}, {}
    for lr in lrs:
        if method == "lpft":
            models[lr], _ = lp_ft(source_model, train, num_classes=num_classes, recipe=recipe, seed=seed, lr=lr,
                                  probe=probe, device=device)
        else:
            models[lr], _ = train_peft(method, source_model, train, num_classes=num_classes, recipe=recipe, seed=seed,
                                       lr=lr, device=device)
        scores[lr] = accuracy(models[lr], val, device=device)
    best = max(scores, key=lambda lr: (scores[lr], -list(lrs).index(lr)))
    return best, scores, models


def domain_accuracy(model: nn.Module, domains: dict, *, adapt_bn: bool = True, device=None) -> dict[str, float]:
    """``{name: accuracy}`` of ``model`` on each test domain. With ``adapt_bn`` each domain is scored by a copy of
    ``model`` whose BatchNorm statistics were re-estimated on that domain's images (AdaBN, no labels used);
    otherwise with the statistics the model holds."""
    return {name: accuracy(adabn(model, d, device=device) if adapt_bn else model, d, device=device)
            for name, d in domains.items()}


def feature_change(before: nn.Module, after: nn.Module, data, **kwargs) -> dict[str, float]:
    """How far ``after``'s backbone features moved from ``before``'s on ``data``: ``{"cka", "relative"}``,
    where relative = ||f_after - f_before||_F / ||f_before||_F (0 = unchanged)."""
    f0 = predict_features(before, data, **kwargs)
    f1 = predict_features(after, data, **kwargs)
    return {"cka": linear_cka(f0, f1), "relative": float((f1 - f0).norm() / f0.norm())}
