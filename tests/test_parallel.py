"""Unit tests of tlutils.parallel: jobs side by side in worker processes give what one process gives."""

from __future__ import annotations

import pytest
import torch

from tlutils.parallel import default_workers, map_jobs


def test_default_workers_one_on_an_accelerator_at_most_the_jobs_and_the_environment_wins(monkeypatch):
    monkeypatch.delenv("TLUTILS_WORKERS", raising=False)
    assert default_workers("cuda", jobs=10) == 1
    assert 1 <= default_workers("cpu", jobs=3) <= 3
    assert default_workers("cpu", jobs=1) == 1
    monkeypatch.setenv("TLUTILS_WORKERS", "5")
    assert default_workers("cpu", jobs=3) == 3 and default_workers("cuda", jobs=9) == 5
    for bad in ("two", "0"):
        monkeypatch.setenv("TLUTILS_WORKERS", bad)
        with pytest.raises(ValueError, match="TLUTILS_WORKERS"):
            default_workers("cpu", jobs=3)


def test_map_jobs_keeps_the_order_takes_keywords_and_runs_each_job_on_one_thread():
    jobs = [(torch.arange(4.0), 2.0), {"x": torch.ones(3), "scale": -1.0}, (torch.zeros(2),)]
    here = map_jobs(_scaled, jobs, workers=1)
    there = map_jobs(_scaled, jobs, workers=2, progress=False)
    for a, b in zip(here, there, strict=True):
        assert torch.equal(a[0], b[0]) and a[1] == b[1] == 1  # one intra-op thread in both
    assert torch.equal(here[0][0], torch.arange(4.0) * 2) and torch.equal(here[1][0], -torch.ones(3))
    assert torch.get_num_threads() >= 1


def test_a_failing_job_names_itself_and_the_way_to_debug_it():
    with pytest.raises(RuntimeError, match=r"job 1 of 2 \(_scaled\) failed in a worker.*TLUTILS_WORKERS=1"):
        map_jobs(_scaled, [(torch.ones(1),), ("not a tensor", 2.0)], workers=2, progress=False)
    with pytest.raises(TypeError):  # in this process the error is the job's own
        map_jobs(_scaled, [("not a tensor", None)], workers=1)


def _scaled(x, scale: float = 1.0):
    return x * scale, torch.get_num_threads()


def test_no_progress_bar_at_all_when_the_runner_turns_progress_off(monkeypatch):
    """A disabled tqdm widget is still saved in an executed notebook: with ``$TLUTILS_PROGRESS=0`` none is made."""
    monkeypatch.setenv("TLUTILS_PROGRESS", "0")
    monkeypatch.setattr("tlutils.parallel.tqdm", lambda *a, **k: pytest.fail("a bar was made"))
    assert [a[0].item() for a in map_jobs(_scaled, [(torch.ones(1),), (torch.zeros(1),)], workers=2)] == [1.0, 0.0]


def test_workers_are_kept_between_calls_and_restarted_when_the_package_code_changes(monkeypatch):
    import os

    import tlutils.parallel as parallel

    first = set(map_jobs(os.getpid, [()] * 4, workers=2))
    again = set(map_jobs(os.getpid, [()] * 4, workers=2))
    assert os.getpid() not in first and first & again, "the second call reuses the workers of the first"
    monkeypatch.setattr(parallel, "_code_stamp", lambda: ("a companion module was edited",))
    edited = set(map_jobs(os.getpid, [()] * 4, workers=2))
    assert not edited & (first | again), "workers that imported older code are not reused"
    with pytest.raises(RuntimeError, match="failed in a worker"):
        map_jobs(int, [("not a number",), ("1",)], workers=2)
    assert "pool" not in parallel._POOL, "after an error the workers are stopped; the next call starts afresh"
    assert len(map_jobs(os.getpid, [()] * 2, workers=2)) == 2


def test_start_workers_spawns_the_pool_that_map_jobs_then_uses(monkeypatch):
    import os

    import tlutils.parallel as parallel
    from tlutils.parallel import start_workers

    parallel._close_pool()
    monkeypatch.setenv("TLUTILS_WORKERS", "1")
    assert start_workers() == 1 and "pool" not in parallel._POOL, "one worker: nothing is started"
    monkeypatch.delenv("TLUTILS_WORKERS")
    assert start_workers("cuda") == 1 and "pool" not in parallel._POOL, "on an accelerator the jobs run in process"
    monkeypatch.setenv("TLUTILS_WORKERS", "2")
    assert start_workers() == 2
    pool = parallel._POOL["pool"][1]
    started = {p.pid for p in pool._processes.values()}
    assert len(started) == 2, "both processes are spawned at once, before any job is given"
    assert set(map_jobs(os.getpid, [()] * 4)) <= started and parallel._POOL["pool"][1] is pool


def _numel(x) -> int:
    return x.numel()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/task"), reason="counts context switches in /proc")
def test_sending_tensors_to_the_workers_leaves_this_process_openmp_spinning():
    """The jobs' tensors are pickled (and copied into shared memory) in the calling thread: copied in the pool's
    feeder thread they started a second OpenMP team, and while it lived every parallel region here slept and woke
    its threads (a training here ran 1.3-2x slower beside idle kept workers: ``benchmarks/kept_workers.py``)."""
    import tlutils.parallel as parallel
    from tlutils.timing import context_switches

    if torch.get_num_threads() < 2:
        pytest.skip("needs two intra-op threads in this process")
    parallel._close_pool()
    big = torch.randn(4_000_000)  # its shared-memory copy is large enough to run on several threads
    assert map_jobs(_numel, [(big,), (big.clone(),)], workers=2, progress=False) == [big.numel()] * 2
    regions = 300
    before = context_switches()
    for _ in range(regions):
        big.sum()  # one OpenMP parallel region each
    switches = context_switches() - before
    assert switches < regions / 3, f"{switches} context switches in {regions} parallel regions: OpenMP sleeps"


def test_submit_jobs_returns_before_its_jobs_end_and_its_result_is_map_jobs():
    import time

    from tlutils.parallel import submit_jobs

    pending = submit_jobs(time.sleep, [(2.0,), (2.0,), (0.0,)], workers=2, progress=False)
    assert not any(f.done() for f in pending._futures), "submit_jobs should return while its jobs run"
    assert pending.result() == [None, None, None] and pending.result() is pending.result()
    ran = []
    lazy = submit_jobs(ran.append, [(1,), (2,)], workers=1)
    assert ran == [], "with one worker the jobs run in this process at result()"
    assert lazy.result() == [None, None] and ran == [1, 2]
