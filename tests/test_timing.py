"""Timing helpers: median of interleaved runs after a warm-up, one timed call, peak tensor memory."""

from __future__ import annotations

import pytest
import torch

from tlutils.timing import EpochTimer, median_seconds, peak_memory_mb, timed


def test_median_seconds_warms_up_then_interleaves_and_passes_the_setup_result():
    calls = []
    made = iter(range(100))
    seconds = median_seconds([lambda v: calls.append(("a", v)), lambda v: calls.append(("b", v))], repeats=3,
                             setup=lambda: next(made))
    assert len(seconds) == 2 and all(s >= 0 for s in seconds)
    assert [name for name, _ in calls] == ["a", "b"] * 4  # one warm-up each, then 3 timed runs, alternating
    assert [v for _, v in calls] == list(range(8)), "setup runs before every run"
    with pytest.raises(ValueError, match="repeats"):
        median_seconds([lambda: None], repeats=0)


def test_timed_returns_the_result_and_its_time():
    out, seconds = timed(lambda: torch.ones(3).sum().item())
    assert out == 3.0 and seconds >= 0


def test_peak_memory_counts_the_tensors_a_call_allocates():
    assert peak_memory_mb(lambda: torch.ones(256, 1024).sum()) >= 0.9


def test_epoch_timer_records_one_time_per_epoch():
    class State:
        device = torch.device("cpu")

    timer = EpochTimer()
    for _ in range(2):
        timer.on_epoch_start(State)
        timer.on_epoch_end(State)
    assert len(timer.seconds) == 2 and min(timer.seconds) >= 0
