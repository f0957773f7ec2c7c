"""Training-time data augmentation as small functions on a batch of images already on the device.

``fit(..., augment=fn)`` calls ``fn(x)`` on every *training* batch (never in ``evaluate``/``predict``):
the data stay one tensor on the device and each batch gets fresh random transforms, with no
DataLoader workers and no per-sample Python. Each transform takes and returns ``(B, C, H, W)``.

* ``crop_flip(padding=4)``: the CIFAR recipe, random crop of a zero-padded image + horizontal flip.
* ``affine_jitter(degrees=10, translate=0.1, scale=(0.9, 1.1))``: small rotation, shift and scale, for
  digits (a flipped 2 is not a 2, so no flip).
* ``compose(*fns)`` chains them. ``get(name)`` turns a name (``"digits"``, ``"crop_flip"``) into one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def _generator(x: torch.Tensor, generator: torch.Generator | None) -> torch.Generator | None:
    return generator if generator is not None and generator.device == x.device else None


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = torch.rand(len(x), device=x.device, generator=_generator(x, generator)) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels and cut a random window of the original size from each image."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    g = _generator(x, generator)
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=g)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=g)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_affine(x: torch.Tensor, degrees: float = 10.0, translate: float = 0.1,
                  scale: tuple[float, float] = (0.9, 1.1), generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate by up to ``degrees``, shift by up to ``translate`` of the size, rescale within ``scale``
    (one random affine map per image, bilinear, zero fill)."""
    b = len(x)
    g = _generator(x, generator)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, device=x.device, generator=g)

    angle = uniform(-degrees, degrees) * math.pi / 180
    s = uniform(*scale)
    tx, ty = uniform(-2 * translate, 2 * translate), uniform(-2 * translate, 2 * translate)  # grid units: [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def crop_flip(padding: int = 4) -> Transform:
    """The standard CIFAR training transform: random crop with ``padding`` + horizontal flip."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        return random_flip(random_crop(x, padding))

    transform.__name__ = f"crop_flip(padding={padding})"
    return transform


def affine_jitter(degrees: float = 10.0, translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1)) -> Transform:
    """Small affine jitter for digits (no flip: mirrored digits are different or no digits)."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        return random_affine(x, degrees, translate, scale)

    transform.__name__ = f"affine_jitter(degrees={degrees}, translate={translate}, scale={scale})"
    return transform


def compose(*fns: Transform) -> Transform:
    """Apply ``fns`` left to right."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        for fn in fns:
            x = fn(x)
        return x

    transform.__name__ = "compose(" + ", ".join(getattr(f, "__name__", repr(f)) for f in fns) + ")"
    return transform


PRESETS: dict[str, Callable[[], Transform]] = {"digits": affine_jitter, "crop_flip": crop_flip}


def get(name: str | None) -> Transform | None:
    """The preset transform called ``name`` (``None`` or ``"none"``: no augmentation)."""
    if name is None or name == "none":
        return None
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {sorted(PRESETS)} or None")
    return PRESETS[name]()
