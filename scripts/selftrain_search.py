"""Chapter 09 recipe search (issue 21): ``tlutils.selftrain.self_train`` from chapter 04's cached networks
(mnist5k -> mnistm-lite) or a source-only network trained here (syndigits -> mnist5k, kept in /tmp/ch09b)."""

import argparse
import os
import time

import torch

from tlutils.adapt import adabn, recipe_for
from tlutils.adapt_runs import cached_runs, load_pair, train_method
from tlutils.config import setup
from tlutils.selftrain import SelfTrainRecipe, self_train
from tlutils.train import evaluate

ap = argparse.ArgumentParser()
ap.add_argument("--pair", default="m2mm")
ap.add_argument("--init", default="dann")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--shares", default="0.25,0.5,0.75,0.9")
ap.add_argument("--thresholds", default="")
ap.add_argument("--steps", type=int, default=125)
ap.add_argument("--lr", type=float, default=0.02)
ap.add_argument("--ws", type=float, default=1.0)
ap.add_argument("--augment", default="strong")
ap.add_argument("--anneal", default="round")
ap.add_argument("--ema", type=float, default=0.0)
a = ap.parse_args()
torch.set_num_threads(1)
cfg = setup(profile="quick", seed=a.seed)
pair = ("mnist5k", "mnistm-lite") if a.pair == "m2mm" else ("syndigits", "mnist5k")
S, T, TT = load_pair(*pair)
if a.pair == "m2mm":
    net = cached_runs(cfg, a.seed, methods=(a.init,))[a.init][0]
else:
    path = f"/tmp/ch09b/s2m_{a.init}_{a.seed}.pt"
    if os.path.exists(path):
        net = torch.load(path, weights_only=False)
    else:
        t0 = time.time()
        net, _ = train_method(a.init, S, T, recipe_for(cfg), seed=a.seed, progress=False)
        net = getattr(net, "classifier", net)
        torch.save(net, path)
        print(f"trained {a.init} {time.time() - t0:.0f}s")
net.eval()
start = evaluate(net, TT)["acc"], evaluate(adabn(net, T), TT)["acc"]
print(f"start {a.init}: plain {start[0]:.4f} adabn {start[1]:.4f}", flush=True)
fl = lambda s: tuple(float(v) for v in s.split(",")) if s else ()  # noqa: E731
recipe = SelfTrainRecipe(shares=() if a.thresholds else fl(a.shares), thresholds=fl(a.thresholds), steps=a.steps,
                         lr=a.lr, source_weight=a.ws, augment=a.augment, anneal=a.anneal, ema=a.ema)
t0 = time.time()
out = self_train(net, S, T, recipe, seed=a.seed, target_labels=T.y, test=TT)
for r in out.rounds:
    print(r)
print(f"FINAL pair={a.pair} seed={a.seed} {out.rounds[-1].target_acc:.4f} ({time.time() - t0:.0f}s wall) {a}")
