"""Chapter 09 prototype (issue 21, unfinished): mean-teacher / FixMatch-style self-training from chapter 04's cached
DANN network on mnist5k -> mnistm-lite (plain torch loop; not yet a loss module on the engine API). See
docs/ch09_prototype_notes.md for what it measured."""

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from tlutils.adapt import adabn, infinite_batches, recipe_for
from tlutils.adapt_runs import cached_runs, train_method
from tlutils.augment import random_affine
from tlutils.config import setup
from tlutils.data import load_domain
from tlutils.schedules import annealing
from tlutils.train import evaluate

ap = argparse.ArgumentParser()
ap.add_argument("--pair", default="m2mm")
ap.add_argument("--init", default="dann")
ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--tau", type=float, default=0.95)
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--ema", type=float, default=0.99)
ap.add_argument("--w", type=float, default=1.0)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--teacher", default="ema")
ap.add_argument("--strong", default="affine+color")
ap.add_argument("--balance", type=float, default=0.0)
ap.add_argument("--bs", type=int, default=32)
a = ap.parse_args()
torch.set_num_threads(1)
cfg = setup(profile="quick", seed=a.seed)
rec = recipe_for(cfg)
if a.pair == "m2mm":
    S, T, TT = [load_domain(d, s) for d, s in [("mnist5k", "train"), ("mnistm-lite", "train"), ("mnistm-lite", "test")]]
    net = cached_runs(cfg, a.seed, methods=(a.init,))[a.init][0]
    if hasattr(net, "classifier"):
        net = net.classifier
else:
    S, T, TT = [load_domain(d, s) for d, s in [("syndigits", "train"), ("mnist5k", "train"), ("mnist5k", "test")]]
    t0 = time.time()
    net, _ = train_method("source_only", S, T, rec, seed=a.seed, progress=False)
    print("trained src", time.time() - t0)
    torch.save(net.state_dict(), f"/tmp/ch09/s2m_src{a.seed}.pt")
print("start", evaluate(adabn(net, T), TT)["acc"])


def strong(x):
    x = random_affine(x, 15, 0.1, (0.85, 1.15))
    if "color" in a.strong:
        b = len(x)
        perm = torch.stack([torch.randperm(3) for _ in range(b)])
        x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
        c = 0.5 + torch.rand(b, 1, 1, 1)
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * c + m + (torch.rand(b, 1, 1, 1) - 0.5) * 0.4
        inv = torch.rand(b, 1, 1, 1) < 0.5
        x = torch.where(inv, 1 - x, x).clamp(0, 1)
    return x


stu = net
tea = copy.deepcopy(net)
for p in tea.parameters():
    p.requires_grad_(False)
opt = torch.optim.SGD(stu.parameters(), lr=a.lr, momentum=0.9, nesterov=False)
g = torch.Generator().manual_seed(a.seed)
sb = infinite_batches(len(S.x), a.bs, a.seed)
tb = infinite_batches(len(T.x), a.bs, a.seed + 1)
t0 = time.time()
for step in range(a.steps):
    for gr in opt.param_groups:
        gr["lr"] = a.lr * annealing(step / a.steps)
    i = next(sb)
    j = next(tb)
    xs, ys = random_affine(S.x[i], 10, 0.1, (0.9, 1.1)), S.y[i]
    xt = T.x[j]
    stu.train()
    ls = F.cross_entropy(stu(xs), ys)
    with torch.no_grad():
        src = tea if a.teacher == "ema" else stu
        src.train()  # per-domain BN: teacher normalises target batch by its stats
        pt = F.softmax(src(random_affine(xt, 5, 0.05, (0.95, 1.05))), 1)
        conf, pl = pt.max(1)
        mask = (conf > a.tau).float()
    out = stu(strong(xt))
    lu = (F.cross_entropy(out, pl, reduction="none") * mask).mean()
    loss = ls + a.w * lu
    if a.balance > 0:
        pm = F.softmax(out, 1).mean(0)
        loss = loss + a.balance * (pm * torch.log(pm * 10 + 1e-8)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for pt_, ps in zip(tea.state_dict().values(), stu.state_dict().values(), strict=True):
            if pt_.dtype.is_floating_point:
                pt_.mul_(a.ema).add_(ps, alpha=1 - a.ema)
            else:
                pt_.copy_(ps)
    if (step + 1) % 100 == 0 or step == a.steps - 1:
        pla = ((pl == T.y[j]).float() * mask).sum() / mask.sum().clamp(min=1)
        print(
            step + 1,
            f"{time.time() - t0:.1f}s mask {mask.mean():.2f} placc {pla:.3f}",
            "stu",
            round(evaluate(adabn(stu, T), TT)["acc"], 4),
            "tea",
            round(evaluate(adabn(tea, T), TT)["acc"], 4),
            flush=True,
        )
