"""Independent trainings side by side: seeds and grid points in worker processes on a multi-core CPU.

A small network trained on a CPU uses its cores poorly: on 2 cores one process with 2 threads runs a chapter
04 training step only about 1.5x faster than with 1 thread. Two processes of one thread each, each training
its own seed, finish a sweep sooner (``benchmarks/parallel_sweep.py`` measures the ratio). On a GPU the jobs
run one after the other in this process, as before (``workers`` is 1).

Every job runs with one intra-op thread whatever the worker count, so a sweep's numbers do not depend on how
many workers ran it (1 or 8 give the same floats); ``TLUTILS_WORKERS`` sets the count (1: in this process).
Jobs are functions of the package (picklable by name) called on picklable arguments; tensors travel through
shared memory, results come back serialised with ``torch.save``. A notebook's own functions, and monkeypatches
made in the notebook, do not reach the workers: train the run you want to change in the notebook itself.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch
import torch.multiprocessing as mp
from tqdm.auto import tqdm

from tlutils.config import progress_enabled

__all__ = ["default_workers", "map_jobs"]


def default_workers(device=None, jobs: int | None = None) -> int:
    """Worker processes for ``jobs`` independent CPU trainings: ``$TLUTILS_WORKERS`` if set, 1 on an accelerator
    (or with fewer than 2 jobs), else one per core (at most ``jobs``)."""
    env = os.environ.get("TLUTILS_WORKERS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"TLUTILS_WORKERS={env!r} is not a whole number: set it to 1 (no workers) or more"
                             ) from None
        if n < 1:
            raise ValueError(f"TLUTILS_WORKERS={n} must be at least 1 (1 runs every job in this process)")
    elif device is not None and torch.device(device).type != "cpu":
        n = 1
    else:
        n = os.cpu_count() or 1
    return max(1, min(n, jobs)) if jobs else max(1, n)


def _init_worker() -> None:
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _run(fn: Callable, args: tuple, kwargs: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(fn(*args, **kwargs), buffer)
    return buffer.getvalue()


def _one_thread(fn: Callable, args: tuple, kwargs: dict):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(before)


def map_jobs(fn: Callable, jobs: Sequence[tuple | dict], *, workers: int | None = None, device=None,
             progress: bool | None = None, desc: str = "jobs") -> list:
    """``[fn(*job) for job in jobs]`` (a dict job is keyword arguments), in order, each job with one thread.

    ``workers`` (default :func:`default_workers`) > 1 runs them in that many spawned processes; list the longest
    jobs first for the best packing. An exception in a job is raised here with the job it came from. ``progress``:
    a bar over the jobs unless ``False`` or ``$TLUTILS_PROGRESS=0`` (the runner's setting: no widget is saved).
    """
    jobs = list(jobs)
    calls = [((), job) if isinstance(job, dict) else (tuple(job), {}) for job in jobs]
    n = workers if workers is not None else default_workers(device, len(jobs))
    if n <= 1 or len(jobs) <= 1:
        return [_one_thread(fn, a, k) for a, k in calls]
    pool = ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker)
    try:
        futures = [pool.submit(_run, fn, a, k) for a, k in calls]
        out = []
        shown = (tqdm(futures, desc=f"{desc} ({n} workers)", leave=False) if progress_enabled(progress)
                 else futures)  # no bar at all when off: a disabled widget would still be saved in a notebook
        for i, f in enumerate(shown):
            try:
                out.append(torch.load(io.BytesIO(f.result()), weights_only=False))
            except BrokenProcessPool as exc:
                raise RuntimeError(f"a worker process died while running {desc} (out of memory?); set "
                                   "TLUTILS_WORKERS=1 to run the jobs in this process") from exc
            except Exception as exc:
                raise RuntimeError(f"{desc}: job {i} of {len(jobs)} ({fn.__name__}) failed in a worker: {exc!r}; "
                                   "set TLUTILS_WORKERS=1 to run it in this process and debug it") from exc
        return out
    finally:
        pool.shutdown(cancel_futures=True)
