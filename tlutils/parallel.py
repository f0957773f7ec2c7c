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

The worker processes are started once and kept for the next call (starting one costs seconds: it imports torch
and the package), and started afresh when a file of the package changed since (an edit to a companion module
reaches the next sweep), when the worker count changes, or after an error.
"""

from __future__ import annotations

import atexit
import io
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import torch
import torch.multiprocessing as mp
from tqdm.auto import tqdm

from tlutils.config import progress_enabled

__all__ = ["Pending", "default_workers", "map_jobs", "one_thread", "start_workers", "submit_jobs"]


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
    # an interrupt of the whole process group (Ctrl-C, a kernel shutting down) ends a kept worker without a
    # traceback; the parent sees its jobs fail and stops the others (map_jobs)
    signal.signal(signal.SIGINT, lambda *_: os._exit(1))


def _run(call: bytes) -> bytes:
    fn, args, kwargs = pickle.loads(call)
    buffer = io.BytesIO()
    torch.save(fn(*args, **kwargs), buffer)
    return buffer.getvalue()


@contextmanager
def one_thread():
    """Run the block with one intra-op thread, as every job of :func:`map_jobs` runs: a run trained inside it gives
    the same floats as the same run in a sweep (chapter 04's visible DANN run is seed 0's run of its sweep)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_thread(fn: Callable, args: tuple, kwargs: dict):
    with one_thread():
        return fn(*args, **kwargs)


def _pickled(fn: Callable, args: tuple, kwargs: dict) -> bytes:
    """A job's call pickled here, in the calling thread, its CPU tensors moved into shared memory as it goes.

    Left to the pool, that pickling (and the tensor copies of ``share_memory_``) runs in the executor's queue
    feeder thread; a copy there starts a second OpenMP thread team in this process, and while that thread lives
    (as long as the kept workers) OpenMP counts more threads than cores and puts its threads to sleep at every
    parallel region instead of spinning: a training in the notebook's process then ran 1.3-2x slower, with
    ~27,000 context switches where there had been ~30 (``benchmarks/kept_workers.py``)."""
    return bytes(ForkingPickler.dumps((fn, args, kwargs)))


_POOL: dict = {}  # "pool": (key, executor) of the workers kept between calls


def _code_stamp() -> tuple:
    """Modification times of the package's source files: a worker that imported older code is not reused."""
    root = Path(__file__).resolve().parent
    return tuple(sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*.py")))


def _close_pool(terminate: bool = False) -> None:
    """Stop the kept workers (``terminate``: at once, dropping the jobs they run, e.g. after an interrupt)."""
    _, pool = _POOL.pop("pool", (None, None))
    if pool is None:
        return
    if terminate:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
    pool.shutdown(wait=not terminate, cancel_futures=True)


atexit.register(_close_pool)


def _pool(n: int) -> ProcessPoolExecutor:
    """``n`` spawned one-thread workers: the kept ones if they run the package's current code."""
    key = (n, _code_stamp())
    kept = _POOL.get("pool")
    if kept is not None and kept[0] == key:
        return kept[1]
    _close_pool()
    pool = ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker)
    _POOL["pool"] = (key, pool)
    return pool


def _warm() -> None:
    """A worker's first job: nothing, as the work is done by loading this module to call it (torch and the
    package's foundation are imported; the job modules add little)."""


def start_workers(device=None) -> int:
    """Start :func:`map_jobs`'s worker processes now, in the background, and return their number (1: none). Each
    spends seconds importing torch and the package; started at the top of a chapter, they do it while the chapter
    loads its data instead of when its first sweep waits for them. A no-op on an accelerator, with one core or
    ``TLUTILS_WORKERS=1``."""
    n = default_workers(device)
    if n > 1:
        pool = _pool(n)
        for _ in range(n):  # one pending job per worker: the pool spawns a process for each
            pool.submit(_warm)
    return n


class Pending:
    """Jobs started by :func:`submit_jobs`; :meth:`result` waits for them and returns their values in order."""

    def __init__(self, fn: Callable, calls: list, n: int, progress: bool | None, desc: str):
        self.fn, self.calls, self.n, self.progress, self.desc = fn, calls, n, progress, desc
        self._futures = None
        if n > 1:
            pool = _pool(n)
            try:
                self._futures = [pool.submit(_run, _pickled(fn, a, k)) for a, k in calls]
            except BaseException:
                _close_pool(terminate=True)  # a job that cannot be sent: none of the others keeps running
                raise
        self._out: list | None = None

    def result(self) -> list:
        """``[fn(*job) for job in jobs]``, waiting for the workers (in this process, now, with one worker)."""
        if self._out is None:
            self._out = self._collect() if self._futures is not None else [
                _one_thread(self.fn, a, k) for a, k in self.calls]
        return self._out

    def _collect(self) -> list:
        fn, desc, futures = self.fn, self.desc, self._futures
        try:
            out = []
            shown = (tqdm(futures, desc=f"{desc} ({self.n} workers)", leave=False) if progress_enabled(self.progress)
                     else futures)  # no bar at all when off: a disabled widget would still be saved in a notebook
            for i, f in enumerate(shown):
                try:
                    out.append(torch.load(io.BytesIO(f.result()), weights_only=False))
                except BrokenProcessPool as exc:
                    raise RuntimeError(f"a worker process died while running {desc} (out of memory?); set "
                                       "TLUTILS_WORKERS=1 to run the jobs in this process") from exc
                except Exception as exc:
                    raise RuntimeError(f"{desc}: job {i} of {len(futures)} ({fn.__name__}) failed in a worker: "
                                       f"{exc!r}; set TLUTILS_WORKERS=1 to run it in this process and debug it"
                                       ) from exc
            return out
        except BaseException:
            _close_pool(terminate=True)  # an error or an interrupt: no job keeps running, the next call starts afresh
            raise


def submit_jobs(fn: Callable, jobs: Sequence[tuple | dict], *, workers: int | None = None, device=None,
                progress: bool | None = None, desc: str = "jobs") -> Pending:
    """Start :func:`map_jobs`'s jobs in the worker processes and return at once: the notebook trains something
    else meanwhile (chapter 04 trains its visible run while its sweep runs), then calls ``.result()``. With one
    worker (an accelerator, one core, ``TLUTILS_WORKERS=1``) the jobs run in this process when ``.result()`` is
    called, after what the notebook did meanwhile."""
    jobs = list(jobs)
    calls = [((), job) if isinstance(job, dict) else (tuple(job), {}) for job in jobs]
    n = workers if workers is not None else default_workers(device, len(jobs))
    return Pending(fn, calls, n if len(jobs) > 1 else 1, progress, desc)


def map_jobs(fn: Callable, jobs: Sequence[tuple | dict], *, workers: int | None = None, device=None,
             progress: bool | None = None, desc: str = "jobs") -> list:
    """``[fn(*job) for job in jobs]`` (a dict job is keyword arguments), in order, each job with one thread.

    ``workers`` (default :func:`default_workers`) > 1 runs them in that many spawned processes; list the longest
    jobs first for the best packing. An exception in a job is raised here with the job it came from. ``progress``:
    a bar over the jobs unless ``False`` or ``$TLUTILS_PROGRESS=0`` (the runner's setting: no widget is saved).
    """
    return submit_jobs(fn, jobs, workers=workers, device=device, progress=progress, desc=desc).result()
