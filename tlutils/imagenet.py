"""ImageNet inputs: the one place that prepares ``Domain`` images for ImageNet-pretrained weights.

torchvision's ImageNet ResNets were trained on 224 px RGB crops normalised with ImageNet's channel
mean and std; our domains are 32 px RGB in [0, 1]. ``ImageNetInput`` resizes and normalises on the
device, batch by batch, as the first module of the backbone's stem, so every caller (notebooks 02 and
03, ``scripts/ddp_finetune.py``) feeds the network the same tensors and the stage names stay
``stem, stage1, ...`` for freezing and discriminative learning rates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.config import smoke_enabled
from tlutils.models import Backbone, torchvision_resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224
SMOKE_SIZE = 48
"""Input side at smoke scale (``TLUTILS_SMOKE=1``): the same path (a real resize), 22x fewer pixels."""


def input_size() -> int:
    """Side the wrapper resizes to: 224 (what the weights were trained on), 48 at smoke scale."""
    return SMOKE_SIZE if smoke_enabled() else IMAGENET_SIZE


class ImageNetInput(nn.Module):
    """``(B, 3, H, W)`` in [0, 1] -> bilinear (antialiased) resize to ``size`` -> ImageNet mean/std normalisation."""

    def __init__(self, size: int = IMAGENET_SIZE):
        super().__init__()
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ImageNetInput expects (B, 3, H, W) RGB images in [0, 1], got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, mean={IMAGENET_MEAN}, std={IMAGENET_STD}"


def with_imagenet_input(backbone: Backbone, size: int | None = None) -> Backbone:
    """Prepend ``ImageNetInput(size)`` (default ``input_size()``) to ``backbone``'s stem, in place; return it."""
    stem = backbone.stages["stem"]
    if isinstance(stem, nn.Sequential) and len(stem) and isinstance(stem[0], ImageNetInput):
        raise ValueError("this backbone already starts with ImageNetInput")
    backbone.stages["stem"] = nn.Sequential(ImageNetInput(size or input_size()), stem)
    return backbone


def imagenet_resnet(arch: str = "resnet18", *, download: bool = False, size: int | None = None) -> Backbone:
    """ImageNet-pretrained ResNet-18 (``IMAGENET1K_V1``) or ResNet-50 (``IMAGENET1K_V2``) with its input step.

    ``download=cfg.download`` fetches the weights in the full profile; offline and uncached it fails at
    once naming the file, the download page and the built-in alternative (``torchvision_resnet``).
    """
    return with_imagenet_input(torchvision_resnet(arch, weights="imagenet", download=download), size)
