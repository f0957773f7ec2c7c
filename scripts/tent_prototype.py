"""Chapter 09 prototype (issue 21, unfinished): TENT (Wang et al. 2021) on chapter 04's cached source-only network,
online over the mnistm-lite test stream, against AdaBN; batch size varied."""

import sys

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.adapt import adabn
from tlutils.adapt_runs import cached_runs
from tlutils.config import setup
from tlutils.data import load_domain
from tlutils.train import evaluate


def tent(model: nn.Module, x: torch.Tensor, batch_size: int, lr: float = 1e-3) -> float:
    """Predict each test batch after one entropy step on it (BN affine only, batch statistics); return accuracy
    of the predictions made online (``x`` in stream order)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in norms for p in (m.weight, m.bias)]
    for p in params:
        p.requires_grad_(True)
    for m in norms:
        m.track_running_stats, m.running_mean, m.running_var = False, None, None
    model.train()
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    preds = []
    for xb in x.split(batch_size):
        out = model(xb)
        p = out.softmax(1)
        loss = -(p * F.log_softmax(out, 1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        preds.append(out.argmax(1).detach())
    return torch.cat(preds)


cfg = setup(profile="quick", seed=0)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
net = cached_runs(cfg, seed, methods=("source_only",))["source_only"][0]
T, TT = load_domain("mnistm-lite", "train"), load_domain("mnistm-lite", "test")
print("source-only", evaluate(net, TT)["acc"], "adabn", evaluate(adabn(net, T), TT)["acc"])
for bs in (200, 64, 16, 4):
    for lr in (1e-3,):
        m = cached_runs(cfg, seed, methods=("source_only",))["source_only"][0]
        pred = tent(m, TT.x, bs, lr)
        print(f"tent bs={bs} lr={lr}: online acc {(pred == TT.y).float().mean():.4f}", flush=True)
