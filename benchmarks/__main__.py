"""Run every benchmark and write ``runs/bench.json``: ``python -m benchmarks [--quick]``.

The quick-profile wall time is read from the latest ``runs/quick/results.json`` (run
``make run`` first); pass ``--run-notebooks`` to execute the quick profile here and time it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULES = ["train_loop", "channels_last", "feature_cache", "mmd", "maml", "dann_flops", "parallel_sweep"]
TARGETS = {"train_loop_ratio": ">= 0.95", "channels_last_speedup": ">= 1.2", "feature_cache_speedup": ">= 10",
           "mmd_permutation_speedup": ">= 10",
           "maml_vmap_speedup": ">= 3", "train_step_flops_fraction": ">= 0.5",
           "parallel_sweep_speedup": ">= 1.2",
           "quick_profile_wall_s": "<= 900"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--run-notebooks", action="store_true", help="time the whole quick profile now")
    args = parser.parse_args()
    out: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()}
    for name in MODULES:
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            print(f"{name}: not available ({exc})")
            continue
        try:
            out[name] = mod.run(quick=args.quick)
        except Exception:  # noqa: BLE001 - report and go on with the others
            traceback.print_exc()
            out[name] = {"error": traceback.format_exc(limit=1)}
            continue
        for key in TARGETS:
            if key in out[name]:
                out[key] = out[name][key]
    results = REPO / "runs" / "quick" / "results.json"
    if args.run_notebooks:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tlutils.course.run", "--profile", "quick"], cwd=REPO, check=False)
        out["quick_profile_wall_s"] = round(time.perf_counter() - start, 1)
    elif results.exists():
        out["quick_profile_wall_s"] = json.loads(results.read_text()).get("_run", {}).get("total_wall_s")
    path = REPO / "runs" / "bench.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print("\nsummary")
    for key, target in TARGETS.items():
        print(f"  {key:<26} {out.get(key, 'n/a')!s:>10}   target {target}")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
