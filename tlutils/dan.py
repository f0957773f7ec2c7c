"""DAN (Long et al., ICML 2015): adaptation by penalising the multi-kernel MMD between source and target
activations of the task-specific layers. Chapter 05's method; the MMD itself lives in ``tlutils.mmd``.

Trained under chapters 04-05's shared recipe (``tlutils.adapt``), so DAN, DANN and source-only differ
only in the adaptation term of the step.
"""

from __future__ import annotations

from torch import Tensor, nn

from tlutils.adapt import (
    AdaptationBatch,
    AdaptationWeight,
    DomainAdaptation,
    Recipe,
    fit_adaptation,
    head_activations,
)
from tlutils.mmd import MMDLoss
from tlutils.train import History

DAN_LAYERS = ("features", "head", "all")
"""Where DAN puts its penalty: the backbone output, the head's hidden activations and logits (DAN's
fc6-fc8, the task-specific layers), or both."""


class MMDTransfer(nn.Module):
    """DAN's transfer loss: ``lambda * sum_l MMD^2_k(h_l(x_s), h_l(x_t))`` over the ``layers`` chosen (see
    ``DAN_LAYERS``), ``lambda = weight(batch)`` (an :class:`tlutils.adapt.AdaptationWeight`). Logs ``mmd`` (the
    summed multi-kernel estimate) and ``lambda``. Has no parameters.
    Chapter 05, section 4 (``notebooks/05_mmd.ipynb``, "One DAN run") shows this source.
    """

    def __init__(self, layers: str = "all", weight: AdaptationWeight = AdaptationWeight(),
                 loss: MMDLoss | None = None):
        super().__init__()
        if layers not in DAN_LAYERS:
            raise ValueError(f"unknown layers {layers!r}; choose one of {', '.join(DAN_LAYERS)}")
        if not weight.maximum >= 0:
            raise ValueError(f"weight must be >= 0 (0 gives the source-only objective), got {weight.maximum}")
        self.layers, self.weight = layers, weight
        self.loss = loss if loss is not None else MMDLoss()

    def forward(self, batch: AdaptationBatch) -> tuple[Tensor, dict]:
        fs, ft = batch.source_features, batch.target_features
        acts = list(zip(batch.source_activations, batch.target_activations, strict=True)) if self.layers != "features" \
            else []
        pairs = {"features": [(fs, ft)], "head": acts, "all": [(fs, ft), *acts]}[self.layers]
        mmd = sum(self.loss(a, b) for a, b in pairs)
        lam = self.weight(batch)
        return lam * mmd, {"mmd": mmd.detach(), "lambda": lam}


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
    adaptation term: ``DomainAdaptation(model, MMDTransfer(...))`` trained by ``tlutils.adapt.fit_adaptation``
    (the classifier's weights are trained in place).
    Chapter 05, section 4 ("One DAN run") calls it once before the comparison over seeds.
    """
    transfer = MMDTransfer(layers, AdaptationWeight(weight, recipe.gamma, recipe.delay, weighting), loss)
    return fit_adaptation(DomainAdaptation(model, transfer, recipe.per_domain), source, target, recipe, seed=seed,
                          device=device, amp=amp, progress=progress, val=val, desc="DAN")


__all__ = ["DAN_LAYERS", "MMDTransfer", "head_activations", "train_dan"]
