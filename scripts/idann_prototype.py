"""Chapter 09 recipe search (issue 21): iterative class-balanced whole-set pseudo-labelling from DANN (iDANN-like,
Gallego et al. 2020), fine-tuning on source labels + confident target pseudo-labels with per-domain BatchNorm."""

import argparse
import time

import torch
import torch.nn.functional as F

from tlutils.adapt import adabn, build_network, recipe_for
from tlutils.adapt_runs import load_pair
from tlutils.augment import random_affine
from tlutils.config import setup
from tlutils.models import load_weights
from tlutils.schedules import annealing
from tlutils.train import evaluate, infinite_batches, predict

ap = argparse.ArgumentParser()
ap.add_argument("--pair", default="m2mm")
ap.add_argument("--init", default="dann")
ap.add_argument("--ckpt", default="")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--steps", type=int, default=150)
ap.add_argument("--shares", default="0.4,0.7,1.0")
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--aug", type=int, default=1)
ap.add_argument("--ws", type=float, default=1.0)
ap.add_argument("--strong", type=int, default=0)
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(1)
cfg = setup(profile="quick", seed=a.seed)
rec = recipe_for(cfg)
S, T, TT = load_pair(*(("mnist5k", "mnistm-lite") if a.pair == "m2mm" else ("syndigits", "mnist5k")))
net = build_network(rec, 10)
if a.ckpt:
    blob = torch.load(a.ckpt, map_location="cpu", weights_only=True)
    load_weights(net, blob["state_dict"])
else:
    from tlutils.adapt_runs import train_method
    t0 = time.time()
    net, _ = train_method(a.init, S, T, rec, seed=a.seed, progress=False)
    if hasattr(net, "classifier"):
        net = net.classifier
    print("trained", a.init, f"{time.time()-t0:.0f}s", flush=True)
    torch.save({"state_dict": net.state_dict()}, f"/tmp/ch09b/{a.pair}_{a.init}_{a.seed}.pt")
print("start adabn", evaluate(adabn(net, T), TT)["acc"], "running", evaluate(net, TT)["acc"], flush=True)
def colour(x):
    b = len(x)
    perm = torch.stack([torch.randperm(3) for _ in range(b)])
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    c = 0.5 + torch.rand(b, 1, 1, 1)
    m = x.mean((1, 2, 3), keepdim=True)
    x = (x - m) * c + m + (torch.rand(b, 1, 1, 1) - 0.5) * 0.4
    inv = torch.rand(b, 1, 1, 1) < 0.5
    return torch.where(inv, 1 - x, x).clamp(0, 1)


shares = [float(s) for s in a.shares.split(",")]
g = torch.Generator().manual_seed(a.seed)
sb = infinite_batches(len(S.x), a.bs, a.seed)
t0 = time.time()
for r in range(a.rounds):
    share = shares[min(r, len(shares) - 1)]
    with torch.no_grad():
        probs = F.softmax(predict(adabn(net, T), T.x) if False else adabn(net, T)(T.x), 1)
    conf, pl = probs.max(1)
    keep = []
    per = int(share * len(T.x) / 10)
    for c in range(10):
        idx = (pl == c).nonzero().squeeze(1)
        idx = idx[conf[idx].argsort(descending=True)][:per]
        keep.append(idx)
    keep = torch.cat(keep)
    placc = (pl[keep] == T.y[keep]).float().mean().item()
    allacc = (pl == T.y).float().mean()
    print(f"round {r} share {share} kept {len(keep)} pseudo-acc {placc:.3f} all-acc {allacc:.3f}", flush=True)
    xt, yt = T.x[keep], pl[keep]
    tb = infinite_batches(len(xt), a.bs, a.seed + 100 + r)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.9)
    net.train()
    for step in range(a.steps):
        for gr in opt.param_groups:
            gr["lr"] = a.lr * annealing(step / a.steps)
        i, j = next(sb), next(tb)
        xs, xtb = S.x[i], xt[j]
        if a.aug:
            xs, xtb = random_affine(xs, 10, 0.1, (0.9, 1.1)), random_affine(xtb, 10, 0.1, (0.9, 1.1))
        if a.strong:
            xtb = colour(xtb)
        loss = a.ws * F.cross_entropy(net(xs), S.y[i]) + F.cross_entropy(net(xtb), yt[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    acc = evaluate(adabn(net, T), TT)["acc"]
    print(f"  after round {r}: target(adabn) {acc:.4f} {time.time() - t0:.1f}s", flush=True)
