"""Model-agnostic meta-learning (Finn et al., ICML 2017) as pure functions over parameter dicts.

MAML learns an initialisation ``theta`` from which a few gradient steps on a task's support set
solve the task, measured on the task's query set:

    theta_i' = theta - alpha * grad L_support_i(theta)                 (inner loop, per task)
    theta   <- theta - beta * grad_theta sum_i L_query_i(theta_i')     (outer loop, over a meta-batch)

The outer gradient flows through the inner update (second order, the Hessian-vector products come
from nesting ``torch.func.grad``); ``first_order=True`` stops it there (FOMAML). The tasks of a
meta-batch go through ``torch.func.vmap``. Batch norm runs in batch-statistics mode (no running
statistics, ``BatchStatNorm``), as in the original: every forward pass normalises with its own
batch, so nothing learnt on one task leaks into another through running statistics.

Mixed precision follows ``tlutils.train``: bf16 autocast on CUDA (and on the CPU at smoke scale).
Where a GPU lacks bf16, ``fit`` falls back to fp16 with a loss scaler; MAML runs in fp32 there
instead, because its inner-loop gradients are taken inside ``torch.func.grad`` on the unscaled
support loss, where a ``GradScaler`` (which scales only the outer loss) cannot keep them from
underflowing in fp16.

The tasks (``TaskBatch``, sinusoids, glyph episodes) live in ``tlutils.data.episodes``; the
baselines chapter 06 compares against (joint pretraining, a fine-tuned head, Prototypical Networks)
in ``tlutils.fewshot_baselines``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from tlutils.config import smoke_cap
from tlutils.data.episodes import TaskBatch
from tlutils.distributed import dist_info
from tlutils.models import mlp
from tlutils.train import History, LoopProgress, autocast_for, default_amp

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def sinusoid_mlp(hidden: Sequence[int] = (40, 40)) -> nn.Sequential:
    """The paper's regressor: 1 -> 40 -> 40 -> 1 with ReLU (``tlutils.models.mlp``)."""
    return mlp(1, 1, tuple(hidden))


class BatchStatNorm(nn.BatchNorm2d):
    """Batch norm that always normalises with the current batch's statistics (no running statistics).

    The same function as ``nn.BatchNorm2d(track_running_stats=False)`` (and for any input with
    channels in dim 1), written with primitive ops: under ``vmap`` the fused kernel's backward
    batching rule gives wrong second-order gradients (pytorch/functorch#534), which MAML needs.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def conv4(
    num_classes: int,
    in_channels: int = 1,
    hidden: int = 64,
    *,
    strided: bool = True,
    running_stats: bool = False,
) -> nn.Sequential:
    """The paper's 4-conv backbone and a linear head: 4 x [3x3 conv, batch norm, ReLU], then mean pooling.

    ``strided=True`` downsamples with stride-2 convolutions (the paper's Omniglot network);
    ``False`` uses 2x2 max-pooling (its MiniImagenet network). Batch norm uses batch statistics
    (``running_stats=False``, MAML); ``running_stats=True`` gives ordinary batch norm for
    supervised pretraining. ``features = model[:-1]``, head ``model[-1]``.
    Mean pooling at the end, as in the paper's code, so the head sees ``hidden`` features.
    """
    blocks: list[nn.Module] = []
    width = in_channels
    for _ in range(4):
        # no conv bias: batch norm's shift replaces it
        conv = nn.Conv2d(width, hidden, 3, stride=2 if strided else 1, padding=1, bias=False)
        bn = nn.BatchNorm2d(hidden) if running_stats else BatchStatNorm(hidden)
        blocks += [conv, bn, nn.ReLU()] + ([] if strided else [nn.MaxPool2d(2, ceil_mode=True)])
        width = hidden
    blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*blocks)


def check_batch_stats(model: nn.Module, second_order_vmap: bool = False) -> None:
    """Raise if batch norm keeps running statistics (they would leak across tasks and break vmap).

    With ``second_order_vmap`` also raise for PyTorch's fused batch norm, whose second-order
    gradients under ``vmap`` are wrong; ``BatchStatNorm`` computes the same function correctly.
    """
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        if m.track_running_stats:
            raise ValueError(
                f"batch norm {name!r} tracks running statistics; MAML runs batch norm in "
                "batch-statistics mode: use tlutils.maml.BatchStatNorm (or conv4(..., running_stats=False))"
            )
        if second_order_vmap and not isinstance(m, BatchStatNorm):
            raise ValueError(
                f"batch norm {name!r} is PyTorch's fused kernel, whose second-order gradients under vmap "
                "are wrong (pytorch/functorch#534); replace it with tlutils.maml.BatchStatNorm, or pass "
                "first_order=True or vectorize=False"
            )


def parameters_of(model: nn.Module) -> Params:
    """The model's parameters as a dict of detached tensors (the functional view MAML works on)."""
    return {k: v.detach() for k, v in model.named_parameters()}


# --------------------------------------------------------------------------------------------
# Inner loop and meta-gradient
# --------------------------------------------------------------------------------------------


def adapt(
    model: nn.Module,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    loss_fn: LossFn,
    steps: int = 1,
    inner_lr: float = 0.01,
    first_order: bool = False,
) -> Params:
    """Take ``steps`` gradient steps of size ``inner_lr`` on the support loss; return the adapted params.

    Differentiable: called inside ``torch.func.grad`` the outer gradient flows through every step
    (second order, as with ``create_graph=True``). ``first_order=True`` treats the inner gradients
    as constants (FOMAML). Parameters left out of ``params`` stay fixed at the model's values.
    Introduced in chapter 06, section 2.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")

    def support_loss(p: Params) -> Tensor:
        return loss_fn(functional_call(model, p, (x_support,)), y_support)

    for _ in range(steps):
        grads = grad(support_loss)(params)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        params = {k: p - inner_lr * grads[k] for k, p in params.items()}
    return params


def _query_loss(model, loss_fn, steps, inner_lr, first_order):
    """A per-task function ``(params, xs, ys, xq, yq) -> (query loss, query outputs)`` for vmap or a loop."""

    def task(params, xs, ys, xq, yq):
        adapted = adapt(model, params, xs, ys, loss_fn, steps, inner_lr, first_order)
        out = functional_call(model, adapted, (xq,))
        return loss_fn(out, yq), out

    return task


def meta_gradient(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    loss_fn: LossFn,
    *,
    steps: int = 1,
    inner_lr: float = 0.01,
    first_order: bool = False,
    vectorize: bool = True,
) -> tuple[Params, Tensor, Tensor]:
    """Gradient of the mean query loss after adaptation w.r.t. ``params``.

    Returns ``(grads, task_losses (T,), query_outputs (T, n_query, ...))``. ``vectorize=True``
    maps the tasks with ``vmap``; ``False`` loops over them in Python (same numbers, slower).
    """
    check_batch_stats(model, second_order_vmap=vectorize and not first_order and steps > 0)
    task = _query_loss(model, loss_fn, steps, inner_lr, first_order)
    xs, ys, xq, yq = tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query

    def meta_loss(p: Params):
        if vectorize:
            losses, outs = vmap(task, in_dims=(None, 0, 0, 0, 0))(p, xs, ys, xq, yq)
        else:
            results = [task(p, *tasks.task(i)) for i in range(tasks.num_tasks)]
            losses, outs = torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])
        return losses.mean(), (losses.detach(), outs.detach())

    grads, (losses, outs) = grad(meta_loss, has_aux=True)(params)
    return grads, losses, outs


def _autocast(device: torch.device, amp: bool | None) -> AbstractContextManager:
    """``tlutils.train``'s autocast (``amp=None``: ``default_amp``), but fp32 where that would need fp16 + scaler.

    bf16 needs no loss scaling. fp16 does, and a ``GradScaler`` cannot reach the inner-loop gradients
    (see the module docstring), so without bf16 MAML runs in full precision.
    """
    context, scaler = autocast_for(device, default_amp(device) if amp is None else amp)
    return nullcontext() if scaler is not None else context()


def meta_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tasks: TaskBatch,
    loss_fn: LossFn,
    *,
    steps: int = 1,
    inner_lr: float = 0.01,
    first_order: bool = False,
    vectorize: bool = True,
    amp: bool | None = None,
) -> dict[str, float]:
    """One outer update of ``model`` on a meta-batch; returns ``{"loss": ...}`` (and ``"acc"`` if classes)."""
    device = next(model.parameters()).device
    tasks = tasks.to(device)
    with _autocast(device, amp):
        grads, losses, outs = meta_gradient(
            model, parameters_of(model), tasks, loss_fn,
            steps=steps, inner_lr=inner_lr, first_order=first_order, vectorize=vectorize,
        )
    optimizer.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        p.grad = grads[name].to(p.dtype)
    optimizer.step()
    logs = {"loss": losses.mean().item()}
    if not tasks.y_query.is_floating_point():
        logs["acc"] = accuracy_of_logits(outs, tasks.y_query).item()
    return logs


def meta_train(
    model: nn.Module,
    sample_tasks: Callable[[torch.Generator], TaskBatch],
    loss_fn: LossFn,
    *,
    meta_steps: int,
    meta_lr: float = 1e-3,
    steps: int = 1,
    inner_lr: float = 0.01,
    first_order: bool = False,
    vectorize: bool = True,
    anneal: bool = False,
    seed: int = 0,
    amp: bool | None = None,
    progress: bool | None = None,
    desc: str = "meta-train",
    snapshot_at: Sequence[int] = (),
) -> History:
    """Meta-train ``model`` in place: Adam over ``meta_steps`` meta-batches from ``sample_tasks(generator)``.

    ``anneal=True`` decays the meta learning rate to zero on a cosine (useful when the budget is
    far below the paper's 60-70k meta-steps). Returns a ``tlutils.train.History``: per-step rows in ``steps``
    (``loss``, and ``acc`` for classification: ``history.column("acc", per="step")``) and ``seconds``.
    ``snapshot_at`` lists meta-step counts (0 = the initialisation) at which a copy of the parameters goes into
    ``history.snapshots[count]``, so one run gives accuracy against meta-training length.
    """
    if dist_info()[1] > 1:
        raise RuntimeError("meta_train runs in one process: its inner loop calls the model functionally "
                           "(torch.func) outside DDP's forward, so gradients would not be synchronised; "
                           "run MAML without torchrun")
    check_batch_stats(model)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=meta_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, meta_steps)) if anneal else None
    history = History()
    copy = lambda: {k: v.detach().clone() for k, v in model.named_parameters()}  # noqa: E731
    if 0 in snapshot_at:
        history.snapshots[0] = copy()
    meta_steps = smoke_cap(meta_steps)  # a handful under TLUTILS_SMOKE=1
    with LoopProgress(history, meta_steps, desc, progress) as bar:
        for step in range(1, meta_steps + 1):
            logs = meta_step(
                model, optimizer, sample_tasks(gen), loss_fn,
                steps=steps, inner_lr=inner_lr, first_order=first_order, vectorize=vectorize, amp=amp,
            )
            if scheduler is not None:
                scheduler.step()
            history.steps.append({"step": step, **logs})
            if step in snapshot_at:
                history.snapshots[step] = copy()
            bar.tick(loss=logs["loss"])
    return history


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def mse(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error (the sinusoid loss and metric)."""
    return F.mse_loss(out, y)


def accuracy_of_logits(out: Tensor, y: Tensor) -> Tensor:
    """Fraction of correct argmax predictions of ``out`` (logits, classes last) against labels ``y``.

    A ``metric_fn`` for ``adaptation_curve``; ``tlutils.train.accuracy(model, data)`` scores a model on a dataset.
    """
    return (out.argmax(-1) == y).float().mean()


def adaptation_curve(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    loss_fn: LossFn,
    *,
    steps: int,
    inner_lr: float,
    metric_fn: LossFn | None = None,
    at: Sequence[int] | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``metric_fn`` (default: ``loss_fn``) on each task's query set after 0, 1, ..., ``steps`` inner steps.

    Returns a tensor ``(len(at), T)`` on the CPU, one row per step count in ``at`` (default: all of
    ``0..steps``). Evaluation may use more steps than training; tasks are mapped with ``vmap``, in
    chunks of ``chunk_size`` tasks if given (to bound memory for image tasks).
    """
    metric_fn = metric_fn or loss_fn
    at = list(range(steps + 1)) if at is None else sorted(set(at))
    if not at or at[0] < 0 or at[-1] > steps:
        raise ValueError(f"'at' must list step counts within 0..{steps}, got {at}")
    device = next(iter(params.values())).device
    tasks = tasks.to(device)
    params = {k: v.detach() for k, v in params.items()}

    def task(xs, ys, xq, yq):
        p, values = params, []
        for s in range(steps + 1):
            if s:
                p = adapt(model, p, xs, ys, loss_fn, 1, inner_lr, first_order=True)
            if s in at:
                values.append(metric_fn(functional_call(model, p, (xq,)), yq).detach())
        return torch.stack(values)

    with _autocast(device, None):
        curves = vmap(task, chunk_size=chunk_size)(*tasks.task(slice(None)))
    return curves.float().T.cpu()


def mean_ci(values: Tensor | Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation confidence interval (z * std / sqrt(n))."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {v.numel()}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return v.mean().item(), (z * v.std(unbiased=True) / math.sqrt(v.numel())).item()
