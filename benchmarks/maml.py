"""MAML meta-step: vmap over the tasks of a meta-batch vs a Python loop over them, measured side by side.

Both compute the same second-order meta-gradient of the paper's sinusoid MLP (1-40-40-1, K = 10,
one inner step, alpha = 0.01) on the same meta-batch of 32 tasks; the script checks they agree
before it reports the ratio. First-order (FOMAML) timings are printed beside them for scale.

    .venv/bin/python benchmarks/maml.py            # meta-batch 32, median of 20 steps
    .venv/bin/python benchmarks/maml.py --quick    # meta-batch 32, median of 5 steps

Threads: the machine's cores, or ``$TLUTILS_THREADS`` (on a shared, busy machine use 1).
"""

from __future__ import annotations

import argparse
import json

import torch

from tlutils.config import set_cpu_threads
from tlutils.data.episodes import SinusoidTasks
from tlutils.maml import meta_gradient, mse, parameters_of, sinusoid_mlp
from tlutils.timing import median_seconds


def run(quick: bool = False, seed: int = 0, meta_batch: int = 32) -> dict:
    """Time vmap and loop meta-steps (second and first order); return seconds and the vmap speed-up."""
    repeats = 5 if quick else 20
    set_cpu_threads()  # the machine's cores, or $TLUTILS_THREADS
    torch.manual_seed(seed)
    model = sinusoid_mlp()
    params = parameters_of(model)
    tasks = SinusoidTasks().sample(meta_batch, 10, 10, torch.Generator().manual_seed(seed))
    out: dict = {"meta_batch": meta_batch, "repeats": repeats, "threads": torch.get_num_threads()}
    for order, first_order in (("second", False), ("first", True)):
        def step(vectorize: bool, first_order: bool = first_order):
            return meta_gradient(model, params, tasks, mse, steps=1, inner_lr=0.01, first_order=first_order,
                                 vectorize=vectorize)

        g_vmap, g_loop = step(True)[0], step(False)[0]
        diff = max(float((g_vmap[k] - g_loop[k]).abs().max()) for k in g_loop)
        if diff > 1e-4:
            raise RuntimeError(f"vmap and loop meta-gradients disagree ({order} order, |diff| {diff:.2e})")
        t_vmap, t_loop = median_seconds([lambda: step(True), lambda: step(False)], repeats)  # interleaved
        out[f"{order}_order"] = {"vmap_s": round(t_vmap, 5), "loop_s": round(t_loop, 5),
                                 "speedup": round(t_loop / t_vmap, 2), "max_grad_diff": diff}
    out["maml_vmap_speedup"] = out["second_order"]["speedup"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke run)")
    args = parser.parse_args()
    r = run(quick=args.quick)
    for order in ("second", "first"):
        o = r[f"{order}_order"]
        print(f"MAML {order}-order meta-step, sinusoid MLP, meta-batch {r['meta_batch']}, "
              f"{r['threads']} threads: vmap {o['vmap_s'] * 1e3:.1f} ms, loop {o['loop_s'] * 1e3:.1f} ms, "
              f"speed-up x{o['speedup']} (gradients agree to {o['max_grad_diff']:.1e})")
    print(json.dumps({"maml_vmap_speedup": r["maml_vmap_speedup"]}))


if __name__ == "__main__":
    main()
