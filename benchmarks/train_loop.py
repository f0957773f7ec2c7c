"""Throughput of ``tlutils.train.fit`` against a minimal hand-written PyTorch loop (target ratio >= 0.95).

Both train the same model on the same tensors with the same optimiser and batch size; runs are
interleaved (fit, hand, fit, hand, ...) so that machine noise hits both alike, and the ratio of the
median throughputs is reported.

    python -m benchmarks.train_loop [--quick]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from tlutils.config import get_device
from tlutils.models import build_model
from tlutils.timing import median_seconds
from tlutils.train import fit


def hand_loop(model, x, y, epochs: int, batch_size: int, lr: float, device) -> None:
    """The minimal loop a reader would write: shuffle, forward, loss, backward, step."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = len(x) - len(x) % batch_size
    for _ in range(epochs):
        perm = torch.randperm(len(x), device=device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def run(quick: bool = True) -> dict:
    device = get_device()
    n, epochs, repeats = (2048, 1, 3) if quick else (8192, 2, 5)
    batch_size = 128
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 100, (n,), generator=g).to(device)
    images = (n - n % batch_size) * epochs

    def fresh_model():
        torch.manual_seed(0)
        return build_model("resnet_small", 100)

    def with_fit(model):
        fit(model, (x, y), epochs=epochs, batch_size=batch_size, lr=1e-3, device=device, progress=False, seed=0,
            amp=False, channels_last=False)

    # one warm-up run of each path (allocator, kernels), then interleaved timed runs on fresh models
    fit_s, hand_s = median_seconds([with_fit, lambda model: hand_loop(model, x, y, epochs, batch_size, 1e-3, device)],
                                   repeats, device, setup=fresh_model)
    fit_ips, hand_ips = images / fit_s, images / hand_s
    result = {"train_loop_ratio": round(fit_ips / hand_ips, 3), "fit_images_per_s": round(fit_ips, 1),
              "hand_images_per_s": round(hand_ips, 1), "device": str(device), "repeats": repeats,
              "threads": torch.get_num_threads()}
    print(f"train loop: fit {fit_ips:.0f} img/s, hand-written {hand_ips:.0f} img/s, "
          f"ratio {result['train_loop_ratio']:.3f} (target >= 0.95) on {device}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (seconds)")
    print(json.dumps(run(parser.parse_args().quick)))
