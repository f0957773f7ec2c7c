"""A sweep of independent trainings: one process with every thread against ``tlutils.parallel.map_jobs``'s
one-thread workers, side by side in one run (target ratio >= 1.2 on a multi-core CPU; 1 on one core or a GPU).

The jobs are chapter 04's DANN runs on ``mnist5k -> mnistm-lite``, shortened to a few hundred steps; the
serial path is the old one (``run_seed`` per seed in this process at the default thread count).

    python -m benchmarks.parallel_sweep [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import tlutils
from tlutils.adapt import recipe_for
from tlutils.adapt_runs import compare_pairs, load_pair, run_seed
from tlutils.parallel import default_workers


def run(quick: bool = True) -> dict:
    cfg = tlutils.setup("quick")
    steps, seeds = (150, [0, 1, 2, 3]) if quick else (400, [0, 1, 2, 3, 4, 5])
    recipe = recipe_for(cfg, steps=steps)
    data = load_pair("mnist5k", "mnistm-lite", device=cfg.device)
    workers = default_workers(cfg.device, len(seeds))
    start = time.perf_counter()
    for s in seeds:  # the serial path: every thread of this process, one run after the other
        run_seed(*data, recipe, s, methods=("dann",), device=cfg.device, progress=False)
    serial_s = time.perf_counter() - start
    start = time.perf_counter()
    compare_pairs({"pair": data}, recipe, seeds, methods=("dann",), device=cfg.device, workers=workers)
    parallel_s = time.perf_counter() - start
    result = {"parallel_sweep_speedup": round(serial_s / parallel_s, 3), "serial_s": round(serial_s, 1),
              "parallel_s": round(parallel_s, 1), "workers": workers, "threads_serial": torch.get_num_threads(),
              "jobs": len(seeds), "steps": steps}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
