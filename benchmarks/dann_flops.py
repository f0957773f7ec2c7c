"""How close chapter 04's DANN training step comes to the machine's fp32 matmul rate (aim >= 0.5).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` around ``tlutils.dann.train_dann`` at the quick recipe's
batch (32 source + 32 target images), run for ``k`` and for ``2k`` steps; the difference divided by ``k`` is one
step's forward + backward (convolutions, matmuls; the counter ignores element-wise ops and the optimiser).
Time: the same difference of wall times, so set-up and the first step's allocation cancel. The reference rate is
a plain fp32 ``torch.mm`` of two square matrices, timed in the same process with the same threads.
``train_step_flops_fraction`` = (step FLOPs / step seconds) / matmul FLOP/s.

Where the rest of the time goes is measured too: a ``torch.profiler`` table of one short run, its op time split into
convolution / matmul, BatchNorm, element-wise ops (ReLU, pooling, losses, copies) and the optimiser, and the share of
wall time spent outside any op (Python and autograd bookkeeping).

    python -m benchmarks.dann_flops [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from tlutils.adapt import build_network, recipe_for
from tlutils.config import get_device
from tlutils.dann import DANN, train_dann
from tlutils.data.domain import Domain

GROUPS = {
    "conv/matmul": ("conv", "mm", "addmm", "linear", "bmm", "matmul"),
    "batchnorm": ("batch_norm",),
    "relu/pool/other elementwise": ("relu", "max_pool", "threshold", "add", "mul", "neg", "sigmoid", "binary_cross",
                                    "cross_entropy", "log_softmax", "nll", "mean", "sum", "div", "sub", "copy",
                                    "clone", "cat", "index", "view", "zero", "fill", "empty", "ones", "eq", "argmax",
                                    "gt", "to", "randperm", "randint", "stack", "where"),
    "optimiser": ("sgd", "_foreach", "optimizer"),
}


def _domain(seed: int, n: int) -> Domain:
    g = torch.Generator().manual_seed(seed)
    return Domain(torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g),
                  [str(c) for c in range(10)], f"bench{seed}", "train")


def _model(recipe):
    torch.manual_seed(0)
    return DANN(build_network(recipe, 10), hidden=recipe.domain_hidden)


def matmul_rate(n: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of a plain fp32 ``torch.mm`` of two n x n matrices (the best of ``repeats`` timed runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _train(recipe, source, target, steps: int) -> tuple[float, int]:
    """Seconds of one ``train_dann`` call of about ``steps`` steps, and the steps it made (``fit`` runs whole
    epochs, so the count is read from the history)."""
    model = _model(recipe)
    t = time.perf_counter()
    history = train_dann(model, source, target, replace(recipe, steps=steps), seed=0, progress=False)
    return time.perf_counter() - t, len(history.steps)


def step_flops(recipe, source, target, k: int) -> float:
    """FLOPs of one DANN training step: counted over ``2k`` steps minus ``k`` steps, per step made."""
    counts, made = [], []
    for steps in (k, 2 * k):
        counter = FlopCounterMode(display=False)
        with counter:
            history = train_dann(_model(recipe), source, target, replace(recipe, steps=steps), seed=0,
                                 progress=False)
        counts.append(counter.get_total_flops())
        made.append(len(history.steps))
    return (counts[1] - counts[0]) / (made[1] - made[0])


def profile_groups(recipe, source, target, steps: int) -> dict:
    """Share of the profiled op self-time per group, and the share of wall time outside any op (Python)."""
    model = _model(recipe)
    t = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_dann(model, source, target, replace(recipe, steps=steps), seed=0, progress=False)
    wall = time.perf_counter() - t
    sums = dict.fromkeys([*GROUPS, "other ops"], 0.0)
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::") and "Optimizer" not in ev.key:
            continue
        name = ev.key.removeprefix("aten::").lower()
        group = next((g for g, keys in GROUPS.items() if any(k in name for k in keys)), "other ops")
        sums[group] += ev.self_cpu_time_total / 1e6
    ops = sum(sums.values())
    out = {f"{g} s": round(v, 3) for g, v in sums.items()}
    out.update(profiled_wall_s=round(wall, 3), outside_ops_fraction=round(max(0.0, 1 - ops / wall), 3))
    return out


def run(quick: bool = True) -> dict:
    device = get_device()
    if device.type != "cpu":
        print(f"dann_flops: measures the CPU recipe; running on cpu, not {device}")
    recipe = recipe_for(type("Cfg", (), {"pick": staticmethod(lambda quick, **_: quick)})())
    k = 32 if quick else 128  # whole epochs of the 512 images below (16 steps of 32 each)
    source, target = _domain(0, 512), _domain(1, 512)
    flops = step_flops(recipe, source, target, k)
    _train(recipe, source, target, 16)  # warm-up
    (short, n_short), (long, n_long) = _train(recipe, source, target, k), _train(recipe, source, target, 3 * k)
    step_s = (long - short) / (n_long - n_short)
    peak = matmul_rate()
    result = {
        "train_step_flops_fraction": round(flops / step_s / peak, 3),
        "step_gflop": round(flops / 1e9, 4),
        "step_ms": round(1e3 * step_s, 2),
        "step_gflop_per_s": round(flops / step_s / 1e9, 2),
        "matmul_gflop_per_s": round(peak / 1e9, 2),
        "batch": f"{recipe.batch_size} source + {recipe.batch_size} target",
        "threads": torch.get_num_threads(),
    }
    result["profile"] = profile_groups(recipe, source, target, k)
    print(f"DANN step: {result['step_gflop']:.3f} GFLOP in {result['step_ms']:.1f} ms = "
          f"{result['step_gflop_per_s']:.1f} GFLOP/s; fp32 matmul {result['matmul_gflop_per_s']:.1f} GFLOP/s; "
          f"fraction {result['train_step_flops_fraction']:.3f} (aim >= 0.5); {result['threads']} threads")
    print("profile:", result["profile"])
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (seconds)")
    print(json.dumps(run(parser.parse_args().quick)))
