"""fit / evaluate / predict: one training loop for every chapter, on any device.

Small domains are tensors, so batches are cut on the device by index: no DataLoader workers and no
per-sample Python on the hot path. On CUDA the loop uses autocast (bf16 where supported, else fp16
with a gradient scaler) and channels_last. Chapters change what one step does through ``step_fn``
(DANN, DAN) and react to training progress through callbacks (unfreezing schedules).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- data


def as_tensors(data) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x, y)`` for a Domain-like object (``.x``/``.y``) or a tuple; None for a DataLoader/iterable."""
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        if len(data[0]) != len(data[1]):
            raise ValueError(f"x and y differ in length: {len(data[0])} vs {len(data[1])}")
        return data[0], data[1]
    if isinstance(data, torch.utils.data.DataLoader) or isinstance(data, Iterable):
        return None
    raise TypeError(f"expected a Domain, an (x, y) tuple of tensors or a DataLoader, got {type(data).__name__}")


def tensor_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Cut ``(x, y)`` into batches by index (a random permutation when ``shuffle``)."""
    n = len(x)
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else torch.arange(n, device=x.device)
    stop = n - n % batch_size if (drop_last and n >= batch_size) else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def _loader_batches(loader, device: torch.device) -> Iterator[Batch]:
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _num_batches(data, n: int | None, batch_size: int, drop_last: bool) -> int:
    if n is None:
        return len(data)
    return n // batch_size if (drop_last and n >= batch_size) else math.ceil(n / batch_size)


# ----------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` unless a torch.distributed process group is running (torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and always without torch.distributed): log, draw and save only there."""
    return dist_info()[0] == 0


def init_distributed(backend: str | None = None) -> torch.device:
    """Join the process group torchrun set up (env ``RANK``/``WORLD_SIZE``); return this rank's device.

    nccl with one GPU per rank when CUDA is present, gloo on CPU. A no-op outside torchrun.
    """
    if "RANK" not in os.environ or torch.distributed.is_initialized():
        from tlutils.config import get_device

        return get_device()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return device


def make_loader(dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0, num_workers: int = 0):
    """A DataLoader for datasets too large to hold as tensors: a DistributedSampler under torchrun,
    pinned memory on CUDA (fit copies with ``non_blocking=True``)."""
    rank, world = dist_info()
    sampler = None
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=shuffle, seed=seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=num_workers, pin_memory=torch.cuda.is_available(), drop_last=shuffle,
        persistent_workers=num_workers > 0,
    )


def _all_reduce_sums(sums: dict[str, torch.Tensor], seen: int, device: torch.device) -> tuple[dict, int]:
    """Add the per-rank sums of logged values (and example counts) over all ranks."""
    if dist_info()[1] == 1 or not sums:
        return sums, seen
    keys = sorted(sums)
    packed = torch.stack([sums[k].float().to(device) for k in keys] + [torch.tensor(float(seen), device=device)])
    torch.distributed.all_reduce(packed)
    return {k: packed[i] for i, k in enumerate(keys)}, int(packed[-1].item())


# ----------------------------------------------------------------------------- precision


def default_amp(device: torch.device) -> bool:
    """Mixed precision unless told otherwise: on CUDA, and on the CPU at smoke scale (``TLUTILS_SMOKE=1``)."""
    from tlutils.config import smoke_enabled

    return device.type == "cuda" or (device.type == "cpu" and smoke_enabled())


def autocast_for(device: torch.device, amp: bool) -> tuple[Callable[[], object], torch.amp.GradScaler | None]:
    """Autocast context factory and grad scaler: bf16 on CUDA when supported, else fp16 + scaler.

    On the CPU ``amp`` means bf16 autocast (the smoke scale turns it on so the mixed-precision path runs
    without a GPU); other devices get none.
    """
    if amp and device.type == "cpu":
        return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), None
    if not amp or device.type != "cuda":
        return nullcontext, None
    if torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")


# ----------------------------------------------------------------------------- history


@dataclass
class History:
    """Per-epoch means (``epochs``) and per-batch logs (``steps``) of one ``fit`` call."""

    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)

    def column(self, name: str, per: str = "epoch") -> list[float]:
        rows = self.epochs if per == "epoch" else self.steps
        return [r[name] for r in rows if name in r]

    def last(self, name: str) -> float:
        values = self.column(name)
        if not values:
            raise KeyError(f"{name!r} was never logged; logged keys: {sorted(self.keys())}")
        return values[-1]

    def keys(self) -> set[str]:
        return {k for r in self.epochs for k in r}

    def plot(self, keys: Iterable[str] | None = None, ax=None, title: str | None = None):
        """Plot logged curves against epochs (see ``tlutils.plots.plot_history``)."""
        from tlutils.plots import plot_history

        return plot_history(self, keys=keys, ax=ax, title=title)


@dataclass
class FitState:
    """What callbacks and ``step_fn`` see: the model, optimiser and where training is."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    epochs: int
    total_steps: int
    device: torch.device
    history: History
    epoch: int = 0
    step: int = 0
    logs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Training progress p in [0, 1] (used by DANN's schedules)."""
        return min(1.0, self.step / max(1, self.total_steps))


def _call(callbacks, hook: str, state: FitState) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)


def _to_floats(pending: list[tuple[int, dict]]) -> list[dict]:
    """Turn buffered per-step tensor logs into float rows with one device sync per key."""
    if not pending:
        return []
    keys = list(pending[0][1])
    cols = {k: torch.stack([logs[k].float().reshape(()) for _, logs in pending]).tolist() for k in keys}
    return [{"step": step, **{k: cols[k][i] for k in keys}} for i, (step, _) in enumerate(pending)]


def supervised_step(model: nn.Module, batch: Batch, state: FitState, loss_fn=None) -> dict:
    """Default step: loss of the model's output against the labels (+ accuracy for classes)."""
    x, y = batch
    out = model(x)
    loss = (loss_fn or F.cross_entropy)(out, y)
    logs = {"loss": loss}
    if out.dim() == 2 and not y.is_floating_point():
        logs["acc"] = (out.argmax(1) == y).float().mean()
    return logs


def progress_enabled(progress: bool | None) -> bool:
    """Progress bars are on unless ``progress=False`` or ``$TLUTILS_PROGRESS=0`` (the runner sets it)."""
    if progress is not None:
        return progress
    return os.environ.get("TLUTILS_PROGRESS", "1") != "0"


def make_progress(total: int, desc: str | None, enabled: bool):
    """One tqdm bar (notebook widget in Jupyter, text elsewhere), or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, mininterval=1.0)


# ----------------------------------------------------------------------------- fit


def fit(
    model: nn.Module,
    train,
    *,
    epochs: int,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    loss_fn=None,
    batch_size: int = 128,
    val=None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    callbacks: Iterable = (),
    step_fn: Callable | None = None,
    progress: bool | None = None,
    desc: str | None = None,
    seed: int | None = None,
    weight_decay: float = 1e-4,
    channels_last: bool | None = None,
    compile: bool = False,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> History:
    """Train ``model`` for ``epochs`` on ``train``; evaluate on ``val`` after each epoch.

    ``optimizer`` defaults to AdamW over the trainable parameters with ``lr`` and ``weight_decay``;
    ``scheduler`` is stepped once per batch. ``step_fn(model, batch, state) -> {"loss": ..., ...}``
    replaces the supervised step; other scalar entries are averaged per epoch into the history.
    ``seed`` fixes the batch order (default: drawn from torch's global generator, seeded by setup).
    On CUDA: autocast (``amp``) and channels_last by default; ``compile=True`` runs the training
    forward through ``torch.compile`` (worth it for long GPU runs, not for the quick profile).
    Under torchrun the model is wrapped in DDP; ``batch_size`` is then the global batch.
    ``augment(x) -> x`` (e.g. ``tlutils.augment.affine_jitter()``) transforms each training batch on the
    device, fresh every step; ``val`` (and ``evaluate``/``predict``) always see the unaugmented data.
    """
    from tlutils.config import get_device, smoke_cap

    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    device = get_device(device) if not isinstance(device, torch.device) else device
    amp = default_amp(device) if amp is None else amp
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    rank, world = dist_info()
    # under torchrun: DDP averages gradients over ranks; each rank takes its share of every global batch
    net = model if world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        net = torch.compile(net)
    callbacks = list(callbacks)
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters; unfreeze something or pass an optimizer")
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    step_fn = step_fn or (lambda m, b, s: supervised_step(m, b, s, loss_fn))
    autocast, scaler = autocast_for(device, amp)

    tensors = as_tensors(train)
    if tensors is not None:
        x_all, y_all = (t.to(device, non_blocking=True) for t in tensors)
        n = len(x_all)
    else:
        n = None
    drop_last = n is not None and n > batch_size  # avoids size-1 batch-norm batches
    per_epoch = smoke_cap(_num_batches(train, n, batch_size, drop_last))  # a handful at smoke scale
    history = History()
    state = FitState(model, optimizer, scheduler, epochs, epochs * per_epoch, device, history)
    if seed is None:  # every rank draws the same seed from its (identically seeded) global generator
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    gen = torch.Generator().manual_seed(seed)

    bar = make_progress(epochs, desc, progress_enabled(progress) and rank == 0)
    _call(callbacks, "on_fit_start", state)
    for epoch in range(epochs):
        state.epoch = epoch
        model.train()
        _call(callbacks, "on_epoch_start", state)
        if n is None and hasattr(getattr(train, "sampler", None), "set_epoch"):
            train.sampler.set_epoch(epoch)
        batches = (
            tensor_batches(x_all, y_all, batch_size, shuffle=True, generator=gen, drop_last=drop_last)
            if n is not None
            else _loader_batches(train, device)
        )
        if n is not None and world > 1:
            batches = ((bx[rank::world], by[rank::world]) for bx, by in batches)
        batches = itertools.islice(batches, per_epoch)
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        pending: list[tuple[int, dict]] = []
        for x, y in batches:
            if augment is not None:
                with torch.no_grad():
                    x = augment(x)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            _call(callbacks, "on_batch_start", state)
            with autocast():
                logs = step_fn(net, (x, y), state)
            loss = logs["loss"]
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            state.step += 1
            b = len(x)
            # keep logs as detached tensors: converting to floats every step would sync the GPU
            state.logs = {
                k: (v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))) for k, v in logs.items()
            }
            seen += b
            for k, v in state.logs.items():
                sums[k] = sums.get(k, 0.0) + v.float() * b
            pending.append((state.step, state.logs))
            _call(callbacks, "on_batch_end", state)
        history.steps.extend(_to_floats(pending))
        pending.clear()
        sums, seen = _all_reduce_sums(sums, seen, device)
        row = {"epoch": epoch + 1, **{f"train_{k}": float(v) / max(1, seen) for k, v in sums.items()}}
        if not math.isfinite(row.get("train_loss", 0.0)):
            raise FloatingPointError(
                f"training loss became {row['train_loss']} in epoch {epoch + 1}; "
                "lower the learning rate (or check the inputs for NaNs)"
            )
        row["lr"] = optimizer.param_groups[0]["lr"]
        if val is not None:
            row.update(
                {f"val_{k}": v for k, v in evaluate(model, val, device=device, amp=amp, loss_fn=loss_fn).items()}
            )
        history.epochs.append(row)
        _call(callbacks, "on_epoch_end", state)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("train_loss", "val_acc")})
    if bar is not None:
        bar.close()
    _call(callbacks, "on_fit_end", state)
    model.eval()
    return history


# ----------------------------------------------------------------------------- inference


@torch.no_grad()
def predict(
    model: nn.Module,
    data,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    fn: Callable | None = None,
) -> torch.Tensor:
    """Model outputs (``fn(model, x)`` if given, e.g. features) for all of ``data``, returned on the CPU."""
    from tlutils.config import get_device

    device = get_device(device) if not isinstance(device, torch.device) else device
    amp = default_amp(device) if amp is None else amp
    autocast, _ = autocast_for(device, amp)
    model.to(device)
    was_training = model.training
    model.eval()
    tensors = as_tensors(data)
    xs = tensors[0].split(batch_size) if tensors is not None else (b[0] for b in data)
    outs = []
    for x in xs:
        with autocast():
            out = (
                fn(model, x.to(device, non_blocking=True)) if fn is not None else model(x.to(device, non_blocking=True))
            )
        outs.append(out.float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(
    model: nn.Module,
    data,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    loss_fn=None,
) -> dict[str, float]:
    """Mean loss and (for class labels) accuracy of ``model`` on ``data``, as fractions."""
    out = predict(model, data, batch_size=batch_size, device=device, amp=amp)
    tensors = as_tensors(data)
    y = (tensors[1] if tensors is not None else torch.cat([b[1] for b in data])).cpu()
    result = {"loss": float((loss_fn or F.cross_entropy)(out, y))}
    if out.dim() == 2 and not y.is_floating_point():
        result["acc"] = float((out.argmax(1) == y).float().mean())
    return result


def accuracy(model: nn.Module, data, **kwargs) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``data``."""
    return evaluate(model, data, **kwargs)["acc"]
