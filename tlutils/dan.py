"""DAN (Long et al., ICML 2015): adaptation by penalising the multi-kernel MMD between source and target
activations of the task-specific layers. Chapter 05's method; the MMD itself lives in ``tlutils.mmd``.

Trained under chapters 04-05's shared recipe (``tlutils.adapt``), so DAN, DANN and source-only differ
only in the adaptation term of the step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlutils.adapt import Recipe, TargetBatches, domain_features, dynamic_weight, fit_recipe
from tlutils.mmd import MMDLoss
from tlutils.schedules import ramp
from tlutils.train import History

DAN_LAYERS = ("features", "head", "all")
"""Where DAN puts its penalty: the backbone output, the head's hidden activations and logits (DAN's
fc6-fc8, the task-specific layers), or both."""


def head_activations(head: nn.Module, feats: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits of ``head``, and the activations DAN adapts: each ReLU output of a Sequential head + logits."""
    acts = []
    h = feats
    for layer in head if isinstance(head, nn.Sequential) else [head]:
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            acts.append(h)
    return h, [*acts, h]


class DANStep:
    """``step_fn`` for ``tlutils.train.fit``: DAN (Long et al. 2015) on a ``Classifier``.

    loss = CE(logits_s, y_s) + lambda * sum_l MMD^2_k(h_l(x_s), h_l(x_t)) over the ``layers`` chosen (see
    ``DAN_LAYERS``). Source and target are forwarded separately when ``per_domain`` (each normalised by its
    own BatchNorm statistics, as in ``DANNStep``). ``weighting="progress"``: ``lambda = weight * ramp(p,
    gamma, delay)`` (DANN's ramp keeps the penalty off while the features are still random); ``"dynamic"``:
    ``lambda = weight * dynamic_weight(f_s, f_t)``. Target batches are drawn here, seeded, as large as the
    source batch; target labels are never used. Logs ``label_loss``, ``mmd`` (the summed multi-kernel
    estimate), source ``acc`` and ``lambda``.
    Chapter 05, section 4 (``notebooks/05_mmd.ipynb``, "One DAN run") shows this source.
    """

    def __init__(
        self,
        target,
        *,
        weight: float = 1.0,
        layers: str = "all",
        gamma: float = 10.0,
        delay: float = 0.0,
        per_domain: bool = True,
        weighting: str = "progress",
        loss: MMDLoss | None = None,
        seed: int = 0,
    ) -> None:
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0 (0 gives the source-only objective), got {weight}")
        if layers not in DAN_LAYERS:
            raise ValueError(f"unknown layers {layers!r}; choose one of {', '.join(DAN_LAYERS)}")
        if weighting not in ("progress", "dynamic"):
            raise ValueError(f"unknown weighting {weighting!r}; choose 'progress' or 'dynamic'")
        self.target = TargetBatches(target, seed)
        self.weight, self.gamma, self.delay, self.layers = float(weight), float(gamma), float(delay), layers
        self.per_domain, self.weighting = per_domain, weighting
        self.loss = loss if loss is not None else MMDLoss()

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor], state) -> dict:
        if not (hasattr(model, "features") and hasattr(model, "head")):
            raise TypeError(
                f"DANStep trains a tlutils.models.Classifier (features + head), got {type(model).__name__}"
            )
        xs, ys = batch
        xt = self.target.next_like(xs)
        fs, ft = domain_features(model, xs, xt, self.per_domain)
        logits, acts_s = head_activations(model.head, fs)
        _, acts_t = head_activations(model.head, ft)
        pairs = {"features": [(fs, ft)], "head": list(zip(acts_s, acts_t, strict=True)),
                 "all": [(fs, ft), *zip(acts_s, acts_t, strict=True)]}[self.layers]
        mmd = sum(self.loss(a, b) for a, b in pairs)
        label_loss = F.cross_entropy(logits, ys)
        if self.weighting == "progress":
            lam = self.weight * ramp(state.progress, self.gamma, self.delay)
        else:
            lam = self.weight * dynamic_weight(fs, ft)
        with torch.no_grad():
            acc = (logits.argmax(1) == ys).float().mean()
        return {
            "loss": label_loss + lam * mmd,
            "label_loss": label_loss.detach(),
            "mmd": mmd.detach(),
            "acc": acc,
            "lambda": lam,
        }


def train_dan(
    model: nn.Module,
    source,
    target,
    recipe: Recipe = Recipe(),
    *,
    weight: float = 1.0,
    layers: str = "all",
    weighting: str = "progress",
    loss: MMDLoss | None = None,
    seed: int = 0,
    device=None,
    amp: bool | None = None,
    progress: bool | None = None,
    val=None,
) -> History:
    """Train a ``Classifier`` with DAN's MMD penalty under chapters 04-05's recipe (optimiser, lr annealing,
    batch, length, ramp, per-domain forwards), so that DAN, DANN and source-only differ only in the
    adaptation term.
    Chapter 05, section 4 ("One DAN run") calls it once before the comparison over seeds.
    """
    step = DANStep(target, weight=weight, layers=layers, gamma=recipe.gamma, delay=recipe.delay,
                   per_domain=recipe.per_domain, weighting=weighting, loss=loss, seed=seed + 1)
    return fit_recipe(model, source, recipe, step_fn=step, seed=seed, device=device, amp=amp, progress=progress,
                      val=val, desc="DAN")


__all__ = ["DANStep", "DAN_LAYERS", "head_activations", "train_dan"]
