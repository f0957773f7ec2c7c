"""``syndigits``: printed digits on cluttered colour backgrounds, a small SynNumbers-like domain.

Ganin & Lempitsky (2015) rendered "Syn Numbers" from Windows fonts with random position, orientation,
stroke and background colours and blur, as a synthetic source for SVHN. This is the same idea from the
fonts bundled with matplotlib: the labelled digit sits in the centre, often with parts of neighbouring
digits at the sides (as in house-number crops), over a colour gradient with random strokes, then
blurred and noised. Every step is batched in torch; the seed (and split) fix every random choice.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from tlutils.data.cache import Arrays
from tlutils.data.digits import DIGIT_CLASSES
from tlutils.data.glyphs import font_coverage, random_warp, render_master, split_generator
from tlutils.data.registry import DomainSpec, register

_DEFAULT_SIZE = {"train": 5000, "test": 1000}


@functools.lru_cache(maxsize=1)
def digit_masters() -> tuple[np.ndarray, np.ndarray]:
    """Digits 0-9 in every bundled font that has them: masters (M, 32, 32) uint8 and digit labels (M,)."""
    cover = font_coverage()
    pairs = [(d, f) for d in range(10) for f in cover if ord(str(d)) in cover[f]]
    masters = np.stack([render_master(str(d), f)[0] for d, f in pairs])
    return masters, np.array([d for d, _ in pairs], dtype=np.int64)


def _segments_mask(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(N, K, 32, 32) soft masks of ``k`` random thick line segments per image (background clutter)."""
    p0 = torch.rand(n, k, 2, generator=gen) * 40 - 4
    p1 = p0 + (torch.rand(n, k, 2, generator=gen) - 0.5) * 40
    width = 0.8 + 2.2 * torch.rand(n, k, 1, 1, generator=gen)
    coords = torch.stack(
        torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="xy"), -1
    )  # (32, 32, 2)
    d = p1 - p0
    rel = coords[None, None] - p0[:, :, None, None]
    t = ((rel * d[:, :, None, None]).sum(-1) / (d * d).sum(-1).clamp_min(1e-6)[..., None, None]).clamp(0, 1)
    dist = (rel - t[..., None] * d[:, :, None, None]).norm(dim=-1)
    return (width - dist).clamp(0, 1)


def _blur(images: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    kernel = (k[:, None] * k[None]).expand(images.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), kernel, groups=images.shape[1])


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    return rgb @ torch.tensor([0.299, 0.587, 0.114])


def render_syndigits(labels: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """Render one image per label: (N, 3, 32, 32) float in [0, 1]."""
    masters, owner = digit_masters()
    n = len(labels)
    by_digit = [np.flatnonzero(owner == d) for d in range(10)]
    counts = torch.tensor([len(b) for b in by_digit])
    starts = torch.tensor([b[0] for b in by_digit])
    master_t = torch.from_numpy(masters).float().div_(255.0)[:, None]

    def pick(digits: torch.Tensor) -> torch.Tensor:
        return master_t[starts[digits] + (torch.rand(len(digits), generator=gen) * counts[digits]).long()]

    y = torch.from_numpy(labels)
    mask = random_warp(pick(y), gen, 0.8)
    for side in (-1.0, 1.0):  # parts of neighbouring digits, as in house-number crops
        shift = side * (17 + 6 * torch.rand(n, generator=gen))
        neighbour = random_warp(pick(torch.randint(0, 10, (n,), generator=gen)), gen, 0.5)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2] = -shift / 16
        neighbour = F.grid_sample(
            neighbour, F.affine_grid(theta, [n, 1, 32, 32], align_corners=False), align_corners=False
        )
        present = (torch.rand(n, 1, 1, 1, generator=gen) < 0.6).float()
        mask = torch.maximum(mask, neighbour * present)

    bg = torch.rand(n, 3, generator=gen)
    fg = torch.rand(n, 3, generator=gen)
    low = (_luma(fg) - _luma(bg)).abs() < 0.35  # too little contrast: push the digit to the far end
    fg[low] = torch.where(_luma(bg[low])[:, None] > 0.5, fg[low] * 0.3, 0.7 + 0.3 * fg[low])
    bg2 = (bg + (torch.rand(n, 3, generator=gen) - 0.5) * 0.5).clamp(0, 1)
    direction = torch.randn(n, 2, generator=gen)
    direction = direction / direction.norm(dim=1, keepdim=True)
    ramp = torch.linspace(-0.5, 0.5, 32)
    grad = (
        direction[:, 0, None, None] * ramp[None, None, :] + direction[:, 1, None, None] * ramp[None, :, None]
    ) + 0.5
    image = bg[:, :, None, None] * (1 - grad[:, None]) + bg2[:, :, None, None] * grad[:, None]

    strokes = _segments_mask(n, 3, gen)
    colours = torch.rand(n, 3, 3, generator=gen)
    alpha = 0.3 + 0.5 * torch.rand(n, 3, generator=gen)
    for j in range(3):
        m = (strokes[:, j] * alpha[:, j, None, None])[:, None]
        image = image * (1 - m) + colours[:, j, :, None, None] * m
    image = image * (1 - mask) + fg[:, :, None, None] * mask

    amount = torch.rand(n, 1, 1, 1, generator=gen)
    image = image * (1 - amount) + _blur(image) * amount
    noise = torch.randn(image.shape, generator=gen) * (0.06 * torch.rand(n, 1, 1, 1, generator=gen))
    return (image + noise).clamp(0, 1)


def build_syndigits(split: str, seed: int, *, size=None) -> Arrays:
    """``size`` images (None: 5,000 for train, 1,000 for test), classes balanced, in shuffled order."""
    n = _DEFAULT_SIZE[split] if size is None else size
    if int(n) != n or n < 1:
        raise ValueError(f"size must be a positive integer or None (default {_DEFAULT_SIZE}), got {size!r}")
    gen = split_generator(seed, split, salt=2)
    labels = (np.arange(int(n)) % 10).astype(np.int64)
    labels = labels[torch.randperm(int(n), generator=gen).numpy()]
    out = np.empty((int(n), 3, 32, 32), dtype=np.uint8)
    for lo in range(0, int(n), 2048):
        chunk = render_syndigits(labels[lo : lo + 2048], gen)
        out[lo : lo + 2048] = chunk.mul_(255).round_().to(torch.uint8).numpy()
    return Arrays(
        out, labels, DIGIT_CLASSES, {"source": "digits from bundled fonts on cluttered colour backgrounds"}
    )


register(
    DomainSpec(
        "syndigits",
        build_syndigits,
        ("train", "test"),
        {"size": None},
        description="SynNumbers-like printed digits (colour, clutter, neighbours, blur); 5,000 / 1,000",
    )
)
