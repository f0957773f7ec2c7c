"""Head training through the frozen backbone vs on cached features, measured side by side.

Both runs train the same new linear head on mnist5k's 4,000 training images with the same optimizer
and batch size; one runs the frozen backbone in every epoch, the other trains on features extracted
once (``tlutils.features.time_head_training``). The backbone is the source architecture of the
profile (random weights: the speed does not depend on their values, so no pretraining is needed).

    .venv/bin/python benchmarks/feature_cache.py            # full-profile backbone, 3 + 30 epochs
    .venv/bin/python benchmarks/feature_cache.py --quick    # quick-profile backbone, 2 + 10 epochs
"""

from __future__ import annotations

import argparse
import json

import torch

import tlutils
from tlutils.data import load_domain
from tlutils.features import time_head_training
from tlutils.models import build_model
from tlutils.source import source_recipe


def run(quick: bool = False, seed: int = 0) -> dict:
    """Time both ways of training the head; return epoch seconds, extraction seconds and the speed-up."""
    cfg = tlutils.setup("quick" if quick else "full", seed)
    recipe = source_recipe(cfg)
    train = load_domain("mnist5k", "train", device=cfg.device)
    torch.manual_seed(seed)
    model = build_model(recipe.arch, train.num_classes, widths=recipe.widths)
    result = time_head_training(model, train, frozen_epochs=2 if quick else 3, cached_epochs=10 if quick else 30,
                                device=cfg.device, seed=seed)
    return {"widths": list(recipe.widths), **result, "feature_cache_speedup": round(result["speedup"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick profile's backbone (CI smoke run)")
    args = parser.parse_args()
    r = run(quick=args.quick)
    print(
        f"head training on {r['n']} images, batch {r['batch_size']}, {r['device']} ({r['threads']} threads), "
        f"backbone widths {r['widths']}: frozen backbone {r['frozen_epoch_s']:.3f} s/epoch, cached features "
        f"{r['cached_epoch_s'] * 1e3:.1f} ms/epoch, speed-up x{r['feature_cache_speedup']} "
        f"(extraction {r['extract_s']:.2f} s once; pays off after {r['break_even_epochs']:.1f} epochs)"
    )
    print(json.dumps({"feature_cache_speedup": r["feature_cache_speedup"]}))


if __name__ == "__main__":
    main()
