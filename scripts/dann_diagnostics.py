"""The side experiments behind chapters 04-05's notes on the recipe (quick profile, mnist5k -> mnistm-lite).

    python scripts/dann_diagnostics.py ablation [--seeds 0 1 2] [--pair mnistm|syn]
        source-only and DANN target accuracy with and without BatchNorm, and with BatchNorm but one joint
        forward of [x_s; x_t] instead of separate forwards (per-domain statistics); each tested with the
        running BatchNorm statistics and with target statistics (AdaBN)
    python scripts/dann_diagnostics.py weighting [--seeds 0 1 2]
        DANN with the paper's progress ramp against the tutorial weight sigmoid(0.1 ||mean f_s - mean f_t||)

Each run prints one line per model and a mean per variant; nothing is cached or written. Minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import tlutils
from tlutils.adapt import AdaptationRecipe, adabn, build_network, recipe_for
from tlutils.adapt_runs import train_method
from tlutils.dann import DANN, train_dann
from tlutils.data import load_domain
from tlutils.train import evaluate

PAIRS = {"mnistm": ("mnist5k", "mnistm-lite"), "syn": ("syndigits", "mnist5k")}
VARIANTS = {
    "no BatchNorm (the paper's network)": dict(batch_norm=False, per_domain=False),
    "BatchNorm, one joint forward": dict(batch_norm=True, per_domain=False),
    "BatchNorm, separate forwards": dict(batch_norm=True, per_domain=True),
}


def score(net, target_train, target_test) -> tuple[float, float]:
    """Target accuracy with the network's running statistics, and with target statistics (AdaBN)."""
    return evaluate(net, target_test)["acc"], evaluate(adabn(net, target_train), target_test)["acc"]


def ablation(recipe: AdaptationRecipe, pair: str, seeds: list[int]) -> None:
    source, target = (load_domain(d, "train") for d in PAIRS[pair])
    target_test = load_domain(PAIRS[pair][1], "test")
    for name, change in VARIANTS.items():
        r = recipe.replace(**change)
        results: dict[str, list[tuple[float, float]]] = {"source_only": [], "dann": []}
        for seed in seeds:
            for method in results:
                if method == "source_only" and not change["per_domain"] and change["batch_norm"]:
                    continue  # source-only has no target batch: identical to the separate-forward variant
                net, _ = train_method(method, source, target, r, seed=seed, progress=False)
                results[method].append(score(net, target, target_test))
                print(f"{name:36s} {method:11s} seed {seed}: target acc {results[method][-1][0]:.3f} "
                      f"(target statistics {results[method][-1][1]:.3f})", flush=True)
        for method, values in results.items():
            if values:
                v = np.asarray(values)
                print(f"== {name:36s} {method:11s} mean over {len(v)} seeds: {v[:, 0].mean():.3f} "
                      f"(target statistics {v[:, 1].mean():.3f})", flush=True)


def weighting(recipe: AdaptationRecipe, seeds: list[int]) -> None:
    source, target = (load_domain(d, "train") for d in PAIRS["mnistm"])
    target_test = load_domain(PAIRS["mnistm"][1], "test")
    for mode in ("progress", "dynamic"):
        accs = []
        for seed in seeds:
            torch.manual_seed(seed)
            net = build_network(recipe, 10)
            train_dann(DANN(net, hidden=recipe.domain_hidden), source, target, recipe, weighting=mode, seed=seed,
                       progress=False)
            accs.append(score(net.eval(), target, target_test)[1])
            print(f"DANN weighting={mode:8s} seed {seed}: target acc (target statistics) {accs[-1]:.3f}", flush=True)
        print(f"== weighting={mode:8s} mean over {len(accs)} seeds: {np.mean(accs):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["ablation", "weighting"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="mnistm")
    args = parser.parse_args()
    cfg = tlutils.setup("quick", args.seeds[0])
    recipe = recipe_for(cfg)
    if args.experiment == "ablation":
        ablation(recipe, args.pair, args.seeds)
    else:
        weighting(recipe, args.seeds)


if __name__ == "__main__":
    main()
