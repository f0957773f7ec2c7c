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

Task samplers: sinusoid regression with the paper's protocol, and N-way K-shot episodes from the
``glyphs`` domain with alphabet-level meta-train / meta-val / meta-test splits.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from tlutils.config import smoke_cap

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


@dataclass
class TaskBatch:
    """A meta-batch: support and query sets with a leading task dimension ``(T, n, ...)``.

    ``info`` carries task descriptions (e.g. sinusoid amplitude and phase) for plotting.
    """

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor
    info: dict = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return TaskBatch(*(move(t) for t in self.task(slice(None))), self.info)

    def task(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Task ``i`` as ``(x_support, y_support, x_query, y_query)``."""
        return self.x_support[i], self.y_support[i], self.x_query[i], self.y_query[i]


class SinusoidTasks:
    """Sinusoid regression tasks of Finn et al.: ``y = A sin(x - phi)``.

    Amplitude A ~ U[0.1, 5], phase phi ~ U[0, pi], inputs x ~ U[-5, 5] (the paper's protocol).
    """

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ):
        for name, (lo, hi) in {"amplitude": amplitude, "phase": phase, "x_range": x_range}.items():
            if not lo < hi:
                raise ValueError(f"{name} must be an interval (low, high) with low < high, got {(lo, hi)}")
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    @staticmethod
    def curve(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
        """``A sin(x - phi)`` with A, phi of shape ``(T,)`` broadcast over x of shape ``(T, n, 1)``."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))

    def sample(
        self, num_tasks: int, k_support: int, k_query: int, generator: torch.Generator | None = None
    ) -> TaskBatch:
        """``num_tasks`` tasks of ``k_support`` support and ``k_query`` query points; x is ``(T, n, 1)``."""
        if min(num_tasks, k_support, k_query) < 1:
            raise ValueError(
                f"num_tasks, k_support and k_query must be >= 1, got {num_tasks}, {k_support}, {k_query}"
            )

        def uniform(shape, lo, hi):
            return lo + (hi - lo) * torch.rand(shape, generator=generator)

        amp = uniform((num_tasks,), *self.amplitude)
        phase = uniform((num_tasks,), *self.phase)
        x = uniform((num_tasks, k_support + k_query, 1), *self.x_range)
        y = self.curve(amp, phase, x)
        return TaskBatch(
            x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:],
            info={"amplitude": amp, "phase": phase},
        )


def glyph_images(x: Tensor, image_size: int = 28) -> Tensor:
    """Domain images ``(N, 3, 32, 32)`` -> one grayscale channel at ``image_size`` (28, the paper's)."""
    x = x[:, :1]
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    return x


class EpisodeSampler:
    """N-way K-shot classification episodes from a labelled image set.

    Each episode draws ``n_way`` classes, relabels them ``0..n_way-1`` in random order, and takes
    ``k_shot`` support and ``k_query`` query images per class (disjoint). With ``rotations=True``
    every class also appears rotated by 90, 180 and 270 degrees as three further classes (the
    paper's Omniglot augmentation; use it for meta-training only).

    ``balance="alphabet"`` weights each class by one over the number of classes of its alphabet
    (``info["alphabet"]``, one entry per label), so every alphabet is equally likely to supply a
    class however many characters it has; the default draws classes uniformly.
    """

    def __init__(
        self, x: Tensor, y: Tensor, n_way: int, k_shot: int, k_query: int, rotations: bool = False,
        info: dict | None = None, balance: str | None = None,
    ):
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"expected images (N, C, H, W) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        classes, counts = torch.unique(y.cpu(), return_counts=True)
        need = k_shot + k_query
        keep = classes[counts >= need]
        if len(keep) < len(classes):
            dropped = len(classes) - len(keep)
            warnings.warn(f"EpisodeSampler: dropped {dropped} classes with < {need} images", stacklevel=2)
        num_virtual = len(keep) * (4 if rotations else 1)
        if n_way > num_virtual:
            raise ValueError(
                f"{n_way}-way episodes need {n_way} classes with >= {need} images each, "
                f"only {num_virtual} have; "
                "lower n_way / k_shot / k_query or use rotations=True"
            )
        self.x, self.n_way, self.k_shot, self.k_query, self.rotations = x, n_way, k_shot, k_query, rotations
        self.info = dict(info or {})
        y_cpu = y.cpu()
        self.class_ids = keep.tolist()
        self.index = [torch.nonzero(y_cpu == c).flatten() for c in self.class_ids]
        self.weights: Tensor | None = None
        if balance == "alphabet":
            if "alphabet" not in self.info:
                raise ValueError("balance='alphabet' needs info['alphabet'] (the alphabet of each label)")
            alphabets = [self.info["alphabet"][c] for c in self.class_ids]
            counts = {a: alphabets.count(a) for a in set(alphabets)}
            w = torch.tensor([1.0 / counts[a] for a in alphabets], dtype=torch.float64)
            self.weights = w.repeat_interleave(4) if rotations else w
        elif balance is not None:
            raise ValueError(f"balance must be None or 'alphabet', got {balance!r}")

    @property
    def num_classes(self) -> int:
        """Classes an episode can draw from (rotated copies count as classes)."""
        return len(self.class_ids) * (4 if self.rotations else 1)

    def sample(self, num_tasks: int, generator: torch.Generator | None = None) -> TaskBatch:
        """``num_tasks`` episodes: x ``(T, n_way * k, C, H, W)``, y ``(T, n_way * k)``.

        ``info["classes"]`` ``(T, n_way)`` holds the original label of each episode label, and
        ``info["rotation"]`` its rotation in quarter turns.
        """
        n, k, q = self.n_way, self.k_shot, self.k_query
        idx = torch.empty(num_tasks, n, k + q, dtype=torch.long)
        rot = torch.zeros(num_tasks, n, dtype=torch.long)
        cls = torch.zeros(num_tasks, n, dtype=torch.long)
        for t in range(num_tasks):
            if self.weights is None:
                picked = torch.randperm(self.num_classes, generator=generator)[:n]
            else:
                picked = torch.multinomial(self.weights, n, replacement=False, generator=generator)
            for j, v in enumerate(picked.tolist()):
                c, rot[t, j] = divmod(v, 4) if self.rotations else (v, 0)
                cls[t, j] = self.class_ids[c]
                members = self.index[c]
                idx[t, j] = members[torch.randperm(len(members), generator=generator)[: k + q]]
        images = self.x[idx.to(self.x.device)]  # (T, n, k+q, C, H, W)
        if self.rotations:
            for r in (1, 2, 3):
                mask = (rot == r).to(images.device)
                images[mask] = torch.rot90(images[mask], r, dims=(-2, -1))
        labels = torch.arange(n, device=images.device).view(1, n, 1).expand(num_tasks, n, k + q)
        flat = lambda t: t.reshape(num_tasks, n * t.shape[2], *t.shape[3:])  # noqa: E731
        return TaskBatch(
            flat(images[:, :, :k]), flat(labels[:, :, :k]), flat(images[:, :, k:]), flat(labels[:, :, k:]),
            info={"classes": cls, "rotation": rot},
        )


def glyph_episodes(
    role: str,
    n_way: int = 5,
    k_shot: int = 1,
    k_query: int = 5,
    *,
    rotations: bool = False,
    image_size: int = 28,
    split: str = "train",
    seed: int = 0,
    device: torch.device | str | None = None,
    balance: str | None = None,
    **options,
) -> EpisodeSampler:
    """An ``EpisodeSampler`` over the glyph classes whose alphabet belongs to ``role``.

    ``role`` is ``"meta-train"``, ``"meta-val"`` or ``"meta-test"``: disjoint sets of alphabets
    (``tlutils.data.glyphs.glyph_alphabets``), so no episode mixes meta-train and meta-test scripts.
    ``options`` go to ``load_domain("glyphs", split, ...)``, e.g. ``num_classes``, ``per_class``;
    ``balance="alphabet"`` gives every alphabet the same chance per class drawn (see ``EpisodeSampler``).
    """
    x, y, info = glyph_role_data(
        role, image_size=image_size, split=split, seed=seed, device=device, **options
    )
    return EpisodeSampler(x, y, n_way, k_shot, k_query, rotations=rotations, info=info, balance=balance)


def glyph_role_data(
    role: str,
    *,
    image_size: int = 28,
    split: str = "train",
    seed: int = 0,
    device: torch.device | str | None = None,
    **options,
) -> tuple[Tensor, Tensor, dict]:
    """Images ``(N, 1, S, S)``, labels ``0..C-1`` and ``info`` of the glyph classes of ``role``'s alphabets.

    ``info`` has per class ``classes`` (the character) and ``alphabet``, plus the ``role``.

    ``options["alphabets"]`` defaults to ``role``; any class whose ``info["alphabet"]`` lies outside
    the role is dropped, so a wider domain (e.g. one cached by another chapter) can be passed.
    """
    from tlutils.data import load_domain
    from tlutils.data.glyphs import glyph_alphabets

    allowed = set(glyph_alphabets(role))
    dom = load_domain("glyphs", split, seed=seed, **{"alphabets": role, **options})
    keep = [c for c in range(dom.num_classes) if dom.info["alphabet"][c] in allowed]
    if not keep:
        raise ValueError(
            f"no glyph classes belong to role {role!r} (alphabets {sorted(allowed)}); "
            "load more classes (num_classes=None) or include those alphabets"
        )
    remap = torch.full((dom.num_classes,), -1, dtype=torch.long)
    remap[torch.tensor(keep)] = torch.arange(len(keep))
    labels = remap[dom.y.cpu()]
    rows = torch.nonzero(labels >= 0).flatten()
    x = glyph_images(dom.x[rows.to(dom.x.device)], image_size)
    y = labels[rows]
    if device is not None:
        x, y = x.to(device), y.to(device)
    info = {
        "role": role,
        "classes": [dom.classes[c] for c in keep],
        "alphabet": [dom.info["alphabet"][c] for c in keep],
    }
    return x, y, info


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def sinusoid_mlp(hidden: Sequence[int] = (40, 40)) -> nn.Sequential:
    """The paper's regressor: 1 -> 40 -> 40 -> 1 with ReLU."""
    layers: list[nn.Module] = []
    width = 1
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


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


def _progress(total: int, desc: str, progress: bool | None):
    """One tqdm bar (or None) following the series' convention: ``$TLUTILS_PROGRESS=0`` turns bars off."""
    from tlutils.train import make_progress, progress_enabled

    return make_progress(total, desc, progress_enabled(progress))


def _autocast(device: torch.device, amp: bool | None):
    """bf16 autocast on CUDA (no loss scaling needed); on the CPU only when asked (or at smoke scale)."""
    from tlutils.train import default_amp

    use = default_amp(device) if amp is None else amp
    if use and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


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
        logs["acc"] = (outs.argmax(-1) == tasks.y_query).float().mean().item()
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
) -> dict[str, list[float]]:
    """Meta-train ``model`` in place: Adam over ``meta_steps`` meta-batches from ``sample_tasks(generator)``.

    ``anneal=True`` decays the meta learning rate to zero on a cosine (useful when the budget is
    far below the paper's 60-70k meta-steps). Returns the per-step logs (``loss``, and ``acc`` for
    classification) as lists, plus ``seconds``. ``snapshot_at`` lists meta-step counts (0 = the
    initialisation) at which a copy of the parameters goes into ``history["snapshots"][count]``
    (a dict, not a list), so one run gives accuracy against meta-training length.
    """
    check_batch_stats(model)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=meta_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, meta_steps)) if anneal else None
    history: dict[str, list[float]] = {}
    snapshots: dict[int, Params] = {}
    copy = lambda: {k: v.detach().clone() for k, v in model.named_parameters()}  # noqa: E731
    if 0 in snapshot_at:
        snapshots[0] = copy()
    start = time.perf_counter()
    meta_steps = smoke_cap(meta_steps)  # a handful under TLUTILS_SMOKE=1
    bar = _progress(meta_steps, desc, progress)
    for step in range(1, meta_steps + 1):
        logs = meta_step(
            model, optimizer, sample_tasks(gen), loss_fn,
            steps=steps, inner_lr=inner_lr, first_order=first_order, vectorize=vectorize, amp=amp,
        )
        if scheduler is not None:
            scheduler.step()
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        if step in snapshot_at:
            snapshots[step] = copy()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)
    if bar is not None:
        bar.close()
    history["seconds"] = [time.perf_counter() - start]
    if snapshot_at:
        history["snapshots"] = snapshots  # type: ignore[assignment]
    return history


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def mse(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error (the sinusoid loss and metric)."""
    return F.mse_loss(out, y)


def accuracy(out: Tensor, y: Tensor) -> Tensor:
    """Fraction of correct argmax predictions."""
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


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def pretrain_joint(
    model: nn.Module,
    sample_tasks: Callable[[torch.Generator], TaskBatch],
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
    desc: str = "pretrain",
) -> dict[str, list[float]]:
    """The paper's "pretrained on all tasks" baseline: plain regression on every point of the sampled tasks.

    No adaptation during training; at test time the model is fine-tuned with ``adapt`` like MAML.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    start = time.perf_counter()
    steps = smoke_cap(steps)  # a handful under TLUTILS_SMOKE=1
    bar = _progress(steps, desc, progress)
    for _ in range(steps):
        t = sample_tasks(gen).to(device)
        x = torch.cat([t.x_support, t.x_query], 1).flatten(0, 1)
        y = torch.cat([t.y_support, t.y_query], 1).flatten(0, 1)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"loss": losses, "seconds": [time.perf_counter() - start]}


@torch.no_grad()
def embed_tasks(features: nn.Module, tasks: TaskBatch, batch_size: int = 1024) -> TaskBatch:
    """Replace each image of ``tasks`` by its feature vector under the frozen ``features`` (eval mode)."""
    was_training = features.training
    features.eval()
    device = next(features.parameters()).device

    def embed(x: Tensor) -> Tensor:
        flat = x.flatten(0, 1).to(device)
        out = torch.cat([features(flat[i: i + batch_size]) for i in range(0, len(flat), batch_size)])
        return out.view(*x.shape[:2], -1).float()

    out = TaskBatch(embed(tasks.x_support), tasks.y_support.to(device), embed(tasks.x_query),
                    tasks.y_query.to(device), tasks.info)
    features.train(was_training)
    return out


def finetune_head_curve(
    features: nn.Module,
    tasks: TaskBatch,
    *,
    steps: int = 100,
    lr: float = 0.1,
    num_classes: int | None = None,
) -> Tensor:
    """Fine-tuning baseline: a new linear head per episode, trained by gradient descent on frozen features.

    The head starts at zero (every class equally likely) and takes ``steps`` full-batch steps of
    cross-entropy on the support set; returns query accuracy ``(steps + 1, T)`` like ``adaptation_curve``.
    """
    feats = embed_tasks(features, tasks)
    num_classes = num_classes or int(tasks.y_support.max().item()) + 1
    head = nn.Linear(feats.x_support.shape[-1], num_classes).to(feats.x_support.device)
    zeros = {k: torch.zeros_like(v) for k, v in parameters_of(head).items()}
    return adaptation_curve(head, zeros, feats, F.cross_entropy, steps=steps, inner_lr=lr, metric_fn=accuracy,
                            chunk_size=256)


def prototype_logits(emb_support: Tensor, y_support: Tensor, emb_query: Tensor, n_way: int) -> Tensor:
    """Prototypical Networks' classifier (Snell et al., NeurIPS 2017) for one episode.

    Each class's prototype is the mean embedding of its support examples; a query's logit for a
    class is minus its squared Euclidean distance to the prototype. Embeddings ``(n, D)``.
    """
    one_hot = F.one_hot(y_support, n_way).to(emb_support.dtype)  # (n_support, n_way)
    protos = one_hot.T @ emb_support / one_hot.sum(0).unsqueeze(1)  # (n_way, D)
    return -torch.cdist(emb_query, protos).pow(2)


def protonet_loss(features: nn.Module, tasks: TaskBatch) -> tuple[Tensor, Tensor]:
    """Mean query cross-entropy and accuracy of the prototype classifier over a batch of episodes.

    Support and query images of all episodes go through ``features`` in one batch per set.
    """
    n_way = int(tasks.y_support.max().item()) + 1
    t, ns = tasks.y_support.shape
    nq = tasks.y_query.shape[1]
    emb_s = features(tasks.x_support.flatten(0, 1)).view(t, ns, -1)
    emb_q = features(tasks.x_query.flatten(0, 1)).view(t, nq, -1)
    logits = torch.stack([prototype_logits(emb_s[i], tasks.y_support[i], emb_q[i], n_way) for i in range(t)])
    loss = F.cross_entropy(logits.flatten(0, 1), tasks.y_query.flatten())
    acc = (logits.argmax(-1) == tasks.y_query).float().mean()
    return loss, acc


def protonet_train(
    features: nn.Module,
    sample_tasks: Callable[[torch.Generator], TaskBatch],
    *,
    meta_steps: int,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
    desc: str = "protonet",
) -> dict[str, list[float]]:
    """Train an embedding ``features`` episodically with the prototypical loss (Adam, one update per batch).

    Returns per-step ``loss`` and ``acc`` lists plus ``seconds``, like ``meta_train``.
    """
    meta_steps = smoke_cap(meta_steps)  # a handful under TLUTILS_SMOKE=1
    gen = torch.Generator().manual_seed(seed)
    device = next(features.parameters()).device
    optimizer = torch.optim.Adam(features.parameters(), lr=lr)
    features.train()
    history: dict[str, list[float]] = {"loss": [], "acc": []}
    start = time.perf_counter()
    bar = _progress(meta_steps, desc, progress)
    for _ in range(meta_steps):
        loss, acc = protonet_loss(features, sample_tasks(gen).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history["loss"].append(loss.item())
        history["acc"].append(acc.item())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    history["seconds"] = [time.perf_counter() - start]
    return history


@torch.no_grad()
def protonet_accuracy(features: nn.Module, tasks: TaskBatch) -> Tensor:
    """Query accuracy of the prototype classifier per episode ``(T,)`` (features in eval mode)."""
    feats = embed_tasks(features, tasks)
    n_way = int(tasks.y_support.max().item()) + 1
    return torch.stack([
        accuracy(prototype_logits(feats.x_support[i], feats.y_support[i], feats.x_query[i], n_way), feats.y_query[i])
        for i in range(feats.num_tasks)
    ]).cpu()


# --------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------


def measure_step(
    fn: Callable[[], object], repeats: int = 3, device: torch.device | None = None, memory: bool = True
) -> dict[str, float]:
    """Median seconds of ``fn()`` over ``repeats`` runs (after one warm-up) and its peak memory in MB.

    Peak memory: CUDA's allocator peak on a GPU; on the CPU, the running maximum of the
    profiler's allocation events (memory held by tensors, not the process RSS). The CPU profiler
    slows many-small-op code a lot, so ``memory=False`` skips it (``peak_mb`` is then NaN).
    """
    device = device or torch.device("cpu")
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = peak_memory_mb(fn, device) if memory else math.nan
    return {"seconds": sorted(times)[len(times) // 2], "peak_mb": peak}


def peak_memory_mb(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Peak tensor memory allocated while ``fn()`` runs, in MB."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # each op's own net allocation (children excluded) plus frees outside ops, in time order
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


@contextmanager
def _quiet_stderr():
    """Silence C-level stderr (the profiler's start/stop log lines) for the duration of the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
