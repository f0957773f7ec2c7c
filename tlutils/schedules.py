"""Schedules as plain functions of training progress ``p`` in [0, 1], and the one callback that applies them.

Every schedule of the course is a function you can plot over ``p``: the one-cycle learning rate of
pretraining and fine-tuning, DANN's learning-rate annealing and its adaptation ramp ``lambda_p``.
:class:`LRSchedule` is the only learning-rate mechanism ``fit`` needs (the idea of fastai's
``ParamScheduler``): before each batch it sets every parameter group's rate to
``initial_lr * factor(p)``, so discriminative rates keep their ratios throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def check_progress(p: float) -> float:
    """``p`` as a float, or an error if it is not a training progress in [0, 1]."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"training progress p must lie in [0, 1], got {p}; pass step / total_steps")
    return p


def one_cycle(p: float, pct_start: float = 0.25, div_factor: float = 10.0, final_div_factor: float = 100.0) -> float:
    """One-cycle factor: linear warm-up from ``1 / div_factor`` to 1 over the first ``pct_start`` of training,
    then cosine decay to ``1 / final_div_factor``.

    Its warm-up plays the part of ULMFiT's slanted triangular rates; it reaches a good accuracy in few
    epochs, which is what the quick profile needs.
    """
    p = check_progress(p)
    if p < pct_start:
        return 1 / div_factor + (1 - 1 / div_factor) * p / pct_start
    t = (p - pct_start) / (1 - pct_start) if pct_start < 1 else 1.0
    low = 1 / final_div_factor
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * t))


def annealing(p: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """DANN's learning-rate annealing factor ``1 / (1 + alpha p)^beta`` (the rate is ``mu_p = mu0 * factor``)."""
    p = check_progress(p)
    return 1.0 / (1.0 + alpha * p) ** beta


def ramp(p: float, gamma: float = 10.0, delay: float = 0.0) -> float:
    """DANN's adaptation factor ``2 / (1 + exp(-gamma q)) - 1`` with ``q = (p - delay) / (1 - delay)``, 0 before
    ``delay``: 0 at the start, close to 1 from ``q`` ~ 0.5 on.

    Starting at 0 keeps an untrained critic's noisy gradients out of the features; ``delay`` holds the
    adaptation off for a fraction of training while the label predictor finds the classes.
    """
    p = check_progress(p)
    if not 0.0 <= delay < 1.0:
        raise ValueError(f"delay must lie in [0, 1), got {delay}")
    q = max(0.0, (p - delay) / (1.0 - delay))
    return 2.0 / (1.0 + math.exp(-gamma * q)) - 1.0


class LRSchedule:
    """``fit`` callback: before each batch set every group's lr to ``initial_lr * factor(progress)``.

    ``initial_lr`` is each group's rate when the schedule first sees it (groups added during training,
    e.g. by gradual unfreezing, are scheduled from then on); the rates are restored when ``fit`` ends, so
    an optimiser can be reused. ``factor`` is any function of progress, e.g. ``one_cycle`` or
    ``functools.partial(annealing, alpha=10)``.
    """

    def __init__(self, factor: Callable[[float], float]):
        self.factor = factor

    def on_batch_start(self, state) -> None:
        scale = self.factor(state.progress)
        for group in state.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * scale

    def on_fit_end(self, state) -> None:
        for group in state.optimizer.param_groups:
            group["lr"] = group.pop("initial_lr", group["lr"])
