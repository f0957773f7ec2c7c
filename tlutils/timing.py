"""Wall-clock timing and peak memory of a piece of work, for the chapters' cost tables and the benchmarks.

CUDA runs asynchronously, so every measurement synchronises the device before reading the clock.
``median_seconds`` is the one step timer: one untimed warm-up per function, then ``repeats`` timed
runs, interleaved across the functions so that a change of machine load hits them alike, and the
median of each. ``timed`` times a single call and keeps its result; ``EpochTimer`` times the epochs
of ``tlutils.train.fit``; ``peak_memory_mb`` measures the tensor memory a call needs.
"""

from __future__ import annotations

import glob
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def sync(device: torch.device | str | None) -> None:
    """Wait for the work queued on ``device`` (a no-op except on CUDA)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[Any, float]:
    """``(fn(), seconds)``: one call, timed with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def median_seconds(
    fns: Sequence[Callable[..., Any]],
    repeats: int = 3,
    device: torch.device | str | None = None,
    *,
    warmup: int = 1,
    setup: Callable[[], Any] | None = None,
) -> list[float]:
    """Median seconds of each function over ``repeats`` timed runs, after ``warmup`` untimed runs of each.

    Runs alternate between the functions (a, b, a, b, ...). ``setup``, if given, is called untimed
    before every run and its result passed to the function (e.g. a freshly initialised model).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: list[list[float]] = [[] for _ in fns]
    for rep in range(warmup + repeats):
        for fn, ts in zip(fns, times, strict=True):
            args = () if setup is None else (setup(),)
            _, seconds = timed(lambda fn=fn, args=args: fn(*args), device)
            if rep >= warmup:
                ts.append(seconds)
    return [statistics.median(ts) for ts in times]


class EpochTimer:
    """``tlutils.train.fit`` callback: wall seconds of every epoch in ``seconds`` (device synchronised)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_epoch_start(self, state) -> None:
        sync(state.device)
        self._start = time.perf_counter()

    def on_epoch_end(self, state) -> None:
        sync(state.device)
        self.seconds.append(time.perf_counter() - self._start)


def context_switches() -> int:
    """Voluntary context switches of all this process's threads so far (Linux; 0 where ``/proc`` has none): threads
    that sleep and wake at every parallel region instead of spinning show up here (``benchmarks/kept_workers.py``)."""
    total = 0
    for status in glob.glob(f"/proc/{os.getpid()}/task/*/status"):
        with open(status) as f:
            total += int(f.read().split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def peak_memory_mb(fn: Callable[[], Any], device: torch.device | str | None = None) -> float:
    """Peak tensor memory allocated while ``fn()`` runs, in MB, above what was allocated before.

    On a GPU, CUDA's allocator peak. On the CPU, the running maximum of the profiler's allocation
    events (memory held by tensors, not the process RSS); the profiler slows code made of many small
    ops a lot, so time such code separately.
    """
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
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
def _quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (the profiler's start/stop log lines) for the duration of the block.

    Redirects file descriptor 2 itself (not just ``sys.stderr``), since the lines come from C++.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
