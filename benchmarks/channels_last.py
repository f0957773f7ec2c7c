"""Why ``fit`` trains channels-last on every device: the same training of chapter 00's ResNet with NCHW and with
channels-last tensors, interleaved, and the speed-up of channels-last (it is the default; target >= 1.2).

On the 2-core CPU of CI, oneDNN's convolutions run 1.4-1.7x faster on channels-last tensors for the batch sizes
of the chapters (32-128); on a CUDA GPU channels-last lets cuDNN use its tensor-core kernels.

    python -m benchmarks.channels_last [--quick]
"""

from __future__ import annotations

import argparse
import json

import torch

from tlutils.config import get_device
from tlutils.models import build_model
from tlutils.timing import median_seconds
from tlutils.train import fit


def run(quick: bool = True) -> dict:
    device = get_device()
    n, repeats = (1024, 3) if quick else (4096, 5)
    batch_size = 128
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 100, (n,), generator=g).to(device)

    def fresh_model():
        torch.manual_seed(0)
        return build_model("resnet_small", 100)

    def train(channels_last: bool):
        return lambda model: fit(model, (x, y), epochs=1, batch_size=batch_size, lr=1e-3, device=device,
                                 progress=False, seed=0, amp=False, channels_last=channels_last)

    nchw_s, last_s = median_seconds([train(False), train(True)], repeats, device, setup=fresh_model)
    result = {"channels_last_speedup": round(nchw_s / last_s, 3), "nchw_images_per_s": round(n / nchw_s, 1),
              "channels_last_images_per_s": round(n / last_s, 1), "device": str(device), "repeats": repeats,
              "threads": torch.get_num_threads()}
    print(f"channels_last: NCHW {n / nchw_s:.0f} img/s, channels-last {n / last_s:.0f} img/s, "
          f"speed-up {result['channels_last_speedup']:.2f} (target >= 1.2) on {device}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (seconds)")
    print(json.dumps(run(parser.parse_args().quick)))
