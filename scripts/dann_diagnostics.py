"""The side experiments behind the "Reading the table" notes of chapters 04 and 05 (seed 0, quick recipe).

    python scripts/dann_diagnostics.py mmd-vs-steps [--steps 1000 4000]
        feature MMD^2 and target accuracy of source-only and DANN on mnist5k -> mnistm-lite (notebook 05)
    python scripts/dann_diagnostics.py syn2real
        why DANN collapses on syndigits -> mnist5k: the source plateau, lambda_max, Adam, warm start (notebook 04)

Each run prints one line per model; nothing is cached or written. A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy

import torch

import tlutils
from tlutils import mmd
from tlutils.dann import DANN, recipe_for, run_method, train_dann
from tlutils.data import load_domain
from tlutils.train import evaluate, predict


def features(model, data) -> torch.Tensor:
    return predict(model, data, fn=lambda m, x: m.features(x))


def mmd_vs_steps(cfg, steps: list[int], seed: int) -> None:
    src, tgt = load_domain("mnist5k", "train"), load_domain("mnistm-lite", "train")
    src_test, tgt_test = load_domain("mnist5k", "test"), load_domain("mnistm-lite", "test")
    order = torch.randperm(len(src_test), generator=torch.Generator().manual_seed(seed))
    half = len(order) // 2
    src_half, tgt_half = src_test.subset(order[:half]), tgt_test.subset(order[half:])  # independent samples
    for n in steps:
        for method in ("source_only", "dann"):
            r = run_method(method, src, tgt, tgt_test, recipe_for(cfg, steps=n), seed=seed, device=cfg.device,
                           progress=False)
            m2, p = mmd.permutation_test(features(r.model, src_half), features(r.model, tgt_half), 200, seed=seed)
            print(f"steps {n:5d} {method:11s}: target acc {r.target_acc:.3f}, "
                  f"feature MMD^2 {float(m2):.4f} (p={p:.3f})")


def syn2real(cfg, seed: int) -> None:
    src, tgt = load_domain("syndigits", "train"), load_domain("mnist5k", "train")
    tgt_test = load_domain("mnist5k", "test")

    def run(method: str, **overrides):
        recipe = recipe_for(cfg, **overrides)
        r = run_method(method, src, tgt, tgt_test, recipe, seed=seed, device=cfg.device, progress=False)
        acc = r.history.column("acc", per="step")
        windows = " / ".join(f"{sum(acc[s:s + 100]) / len(acc[s:s + 100]):.2f}" for s in range(0, 400, 100))
        norm = features(r.model, tgt_test).norm(dim=1).mean()
        print(f"{method:11s} {overrides or ''}: target {r.target_acc:.3f}, source {r.source_acc:.3f}, "
              f"source acc in steps 0-100/-200/-300/-400 {windows}, mean target feature norm {norm:.1f}")
        return r

    base = run("source_only")
    run("source_only", steps=2000)
    for lam in (1.0, 0.1, 0.0):
        run("dann", lambda_max=lam)
    run("source_only", optimizer="adam", lr=1e-3)
    run("dann", optimizer="adam", lr=1e-3)
    for lam in (1.0, 0.3):  # warm start: DANN from the trained source-only weights, 1,000 more steps
        net = copy.deepcopy(base.model).train()
        torch.manual_seed(seed)  # the new domain head's initialisation
        train_dann(DANN(net, hidden=recipe_for(cfg).domain_hidden), src, tgt, recipe_for(cfg, lambda_max=lam),
                   seed=seed, device=cfg.device, progress=False)
        print(f"warm-start DANN lambda_max={lam}: target {evaluate(net, tgt_test)['acc']:.3f}, "
              f"source {evaluate(net, src)['acc']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["mmd-vs-steps", "syn2real"])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = tlutils.setup("quick", args.seed)
    if args.experiment == "mmd-vs-steps":
        mmd_vs_steps(cfg, args.steps, args.seed)
    else:
        syn2real(cfg, args.seed)


if __name__ == "__main__":
    main()
