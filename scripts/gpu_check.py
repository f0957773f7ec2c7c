"""GPU readiness: chapter 02's full-profile training step, images/s with and without bf16 autocast and channels_last.

    python scripts/gpu_check.py                 # make gpu-check: on CUDA, 4 settings x --steps steps
    python scripts/gpu_check.py --steps 50 --batch-size 256

It trains the full profile's network (torchvision ResNet-18 behind the ImageNet input wrapper: 32 px
CIFAR-sized images resized to 224 px on the device) with ``tlutils.train.fit`` for a fixed number of steps
on random tensors already on the GPU, so data loading and downloads play no part, and prints images/s for
fp32 vs bf16 autocast, NCHW vs channels_last. Random weights: speed does not depend on them. Without
CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from tlutils.imagenet import with_imagenet_input
from tlutils.models import Classifier, make_head, torchvision_resnet
from tlutils.train import fit

SETTINGS = ((False, False), (True, False), (False, True), (True, True))
"""(bf16 autocast, channels_last) pairs, measured in this order."""


def images_per_second(device: torch.device, *, amp: bool, channels_last: bool, steps: int, batch_size: int,
                      size: int = 224, warmup: int = 3) -> float:
    """Train ResNet-18 (ImageNet input wrapper at ``size``) for ``steps`` steps; return training images/s."""
    torch.manual_seed(0)
    backbone = with_imagenet_input(torchvision_resnet("resnet18"), size)
    model = Classifier(backbone, make_head(backbone.out_features, 10))
    n = (steps + warmup) * batch_size
    x = torch.rand(n, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    run = dict(lr=1e-4, batch_size=batch_size, device=device, amp=amp, channels_last=channels_last, progress=False,
               seed=0)
    fit(model, (x[: warmup * batch_size], y[: warmup * batch_size]), epochs=1, **run)  # cudnn autotune, allocator
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fit(model, (x[warmup * batch_size :], y[warmup * batch_size :]), epochs=1, **run)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed optimisation steps per setting (default 30)")
    parser.add_argument("--batch-size", type=int, default=128, help="the full profile's batch size (default 128)")
    parser.add_argument("--size", type=int, default=224, help="input side after the ImageNet wrapper (default 224)")
    parser.add_argument("--device", default=None, help="default: cuda; 'cpu' runs the same code slowly (a test)")
    args = parser.parse_args(argv)
    if args.device is None and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
              "nothing to measure. Run it on a machine with an NVIDIA GPU.")
        return 0
    device = torch.device(args.device or "cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu-check on {name}: ResNet-18 at {args.size} px, batch {args.batch_size}, {args.steps} timed steps")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rates = {}
    for amp, channels_last in SETTINGS:
        rate = images_per_second(device, amp=amp, channels_last=channels_last, steps=args.steps,
                                 batch_size=args.batch_size, size=args.size)
        rates[amp, channels_last] = rate
        precision, layout = "bf16 autocast" if amp else "fp32", "channels_last" if channels_last else "NCHW"
        speedup = rate / rates[False, False]
        print(f"  {precision:13s}  {layout:13s}  {rate:9.1f} images/s  (x{speedup:.2f} vs fp32 NCHW)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
