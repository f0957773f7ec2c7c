"""Vectorised MMD permutation test vs recomputing MMD for every permutation, measured side by side.

The vectorised test builds the pooled kernel matrix once and scores each batch of permutations with one
matmul; the baseline is the obvious loop: shuffle, split, recompute the kernel and the estimator. Both
use the same bandwidth (median of the pooled sample, computed once) and the same permutations, so the
null distributions must agree; the script checks that before it reports the ratio.

    .venv/bin/python benchmarks/mmd.py            # B = 1000, n = m = 1000, d = 128
    .venv/bin/python benchmarks/mmd.py --quick    # B = 200,  n = m = 300,  d = 32
"""

from __future__ import annotations

import argparse
import json

import torch

from tlutils.mmd import GaussianKernel, median_bandwidth, mmd2, permutation_null
from tlutils.timing import timed


def run(quick: bool = False, seed: int = 0) -> dict:
    """Time both permutation tests on one shifted Gaussian pair; return sizes, seconds and the speed-up."""
    n, d, n_perm = (300, 32, 200) if quick else (1000, 128, 1000)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = torch.randn(n, d, generator=gen) + 0.05
    z = torch.cat([x, y])
    kernel = GaussianKernel(sigma=median_bandwidth(z).item())
    orders = torch.rand(n_perm, 2 * n, generator=torch.Generator().manual_seed(seed + 1)).argsort(1)

    def vectorised():
        with torch.no_grad():
            gram = kernel.gram(z, z, kernel.sigmas(z))
            return permutation_null(gram, n, n_permutations=n_perm, seed=seed + 1, batch_size=n_perm)

    def loop():
        with torch.no_grad():
            observed = mmd2(x, y, kernel)
            return observed, torch.stack([mmd2(z[o[:n]], z[o[n:]], kernel) for o in orders])

    (obs_v, null_v), t_vec = timed(vectorised)  # one run each: the loop takes seconds
    (obs_l, null_l), t_loop = timed(loop)
    max_diff = float((null_v - null_l).abs().max())
    if max_diff > 1e-4 or abs(float(obs_v - obs_l)) > 1e-4:
        raise RuntimeError(
            f"the two permutation nulls disagree (max |diff| = {max_diff:.2e}); not timing a bug"
        )
    p_value = (1 + int((null_v >= obs_v).sum())) / (1 + n_perm)
    return {
        "n": n,
        "m": n,
        "d": d,
        "n_permutations": n_perm,
        "threads": torch.get_num_threads(),
        "vectorised_s": round(t_vec, 4),
        "loop_s": round(t_loop, 4),
        "max_null_diff": max_diff,
        "p_value": p_value,
        "mmd_permutation_speedup": round(t_loop / t_vec, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (CI smoke run)")
    args = parser.parse_args()
    r = run(quick=args.quick)
    print(
        f"MMD permutation test, B={r['n_permutations']}, n=m={r['n']}, d={r['d']}, {r['threads']} threads: "
        f"vectorised {r['vectorised_s']:.3f} s, loop {r['loop_s']:.3f} s, "
        f"speed-up x{r['mmd_permutation_speedup']} (nulls agree to {r['max_null_diff']:.1e})"
    )
    print(json.dumps({"mmd_permutation_speedup": r["mmd_permutation_speedup"]}))


if __name__ == "__main__":
    main()
