"""Does a training in the notebook's own process slow down while ``map_jobs``'s kept workers sit idle?

Side by side in one run: chapter 07's small student (``distill.small_student`` trained by ``distil``, every thread
of this process) timed before any worker exists, after the kept workers ran jobs whose arguments were tensors
(the workers then sit idle), and after the pool is closed; medians of three, with the voluntary context switches
of this process's threads during one training.

The cause of the slowdown this benchmark found (session 8: 3.30 s before, 4.34 s with idle workers, 2.40 s after
closing them) was the pickling of the jobs' tensors in the executor's queue feeder thread: ``share_memory_``'s
copy there started a second OpenMP thread team, and while that thread lived OpenMP slept at every parallel region
of the main thread instead of spinning (about 27,000 context switches per training instead of about 30).
``map_jobs`` now pickles each call in the calling thread (``parallel._pickled``); ``context_switches_idle`` shows
whether that still holds.

    python -m benchmarks.kept_workers
"""

from __future__ import annotations

import json
import statistics
import time

import torch

import tlutils
from tlutils import distill
from tlutils.data import load_domain
from tlutils.parallel import _close_pool, default_workers, map_jobs
from tlutils.timing import context_switches


def _student_seconds(x, z, y) -> float:
    start = time.perf_counter()
    torch.manual_seed(0)
    distill.distil(distill.small_student(10), x, z, y, epochs=2, T=4.0, alpha=0.9, seed=0)
    return time.perf_counter() - start


def _median(x, z, y, repeats: int = 3) -> float:
    return round(statistics.median(_student_seconds(x, z, y) for _ in range(repeats)), 2)


def _switches_during(x, z, y) -> int:
    before = context_switches()
    _student_seconds(x, z, y)
    return context_switches() - before


def _student_job(x, z, y, seed: int) -> float:
    """One worker job: a student trained in the worker (its return value is only its time)."""
    torch.manual_seed(seed)
    return _student_seconds(x, z, y)


def run() -> dict:
    cfg = tlutils.setup("quick")
    d = load_domain("mnist5k", "train")
    x, y, z = d.x, d.y, torch.randn(len(d), 10, generator=torch.Generator().manual_seed(0))
    _close_pool()
    _student_seconds(x, z, y)  # warm-up
    before, switches_before = _median(x, z, y), _switches_during(x, z, y)
    workers = default_workers(cfg.device, 2)
    map_jobs(_student_job, [(x, z, y, s) for s in range(workers)])
    with_idle_workers, switches_idle = _median(x, z, y), _switches_during(x, z, y)
    _close_pool()
    after_close = _median(x, z, y)
    result = {"kept_workers_slowdown": round(with_idle_workers / before, 3), "before_s": before,
              "with_idle_workers_s": with_idle_workers, "after_close_s": after_close, "workers": workers,
              "threads": torch.get_num_threads(), "context_switches_before": switches_before,
              "context_switches_idle": switches_idle}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run()
