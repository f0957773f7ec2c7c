"""The ``Domain`` container: one split of one image domain as tensors.

Every domain, built-in or downloaded, is stored the same way so chapters can swap them freely:
``x`` is float32 ``(N, 3, 32, 32)`` with values in [0, 1] (grayscale images are replicated to three
channels; no mean/std normalisation here, models do that), ``y`` is int64 ``(N,)`` class indices into
``classes``. Small domains live as tensors (on the GPU when there is one), so training needs no
DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

IMAGE_SHAPE = (3, 32, 32)


@dataclass
class Domain:
    """One split of a domain: images ``x`` (N, 3, 32, 32) float32 in [0, 1] and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str
    split: str
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or tuple(self.x.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(
                f"Domain {self.name!r}: x must have shape (N, 3, 32, 32), got {tuple(self.x.shape)}"
            )
        if self.x.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise ValueError(
                f"Domain {self.name!r}: x must be float32 and y int64, got {self.x.dtype} and {self.y.dtype}"
            )
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(
                f"Domain {self.name!r}: y must have shape ({self.x.shape[0]},), got {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (
            f"Domain(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"num_classes={self.num_classes}, device={self.x.device})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device | None) -> Domain:
        """Return this domain with ``x`` and ``y`` on ``device`` (no copy when already there)."""
        if device is None:
            return self
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def subset(self, index) -> Domain:
        """Return the examples at ``index`` (indices, a boolean mask, a slice, a list or an array)."""
        if isinstance(index, slice):
            return replace(self, x=self.x[index], y=self.y[index], info=dict(self.info))
        index = torch.as_tensor(np.asarray(index) if not torch.is_tensor(index) else index)
        if index.dtype == torch.bool:
            if index.shape != self.y.shape:
                raise ValueError(f"boolean mask has shape {tuple(index.shape)}, expected ({len(self)},)")
            index = index.nonzero().squeeze(1)
        index = index.to(device=self.x.device, dtype=torch.long)
        return replace(self, x=self.x[index], y=self.y[index], info=dict(self.info))

    def per_class_index(self, k: int, seed: int = 0) -> torch.Tensor:
        """Indices of ``k`` examples of every class, drawn without replacement (class-major order).

        Deterministic given ``seed`` and independent of the device. Raises ValueError if a class
        has fewer than ``k`` examples.
        """
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        y = self.y.cpu().numpy()
        counts = np.bincount(y, minlength=self.num_classes)
        short = [f"{self.classes[c]!r} ({counts[c]})" for c in range(self.num_classes) if counts[c] < k]
        if short:
            raise ValueError(
                f"per_class({k}) on {self.name}/{self.split}: {len(short)} class(es) have fewer than {k} "
                "examples: "
                f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''}; use a smaller k"
            )
        rng = np.random.default_rng(seed)
        picks = [rng.permutation(np.flatnonzero(y == c))[:k] for c in range(self.num_classes)]
        return torch.from_numpy(np.concatenate(picks).astype(np.int64))

    def split_validation(self, per_class: int, seed: int = 0) -> tuple[Domain, Domain]:
        """``(rest, validation)``: a fixed, stratified validation split of ``per_class`` examples per class.

        Choose learning rates, epochs and settings on ``validation``; draw labelled subsets from ``rest``;
        read the test split only for the numbers you report.
        """
        index = self.per_class_index(per_class, seed)
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[index] = False
        rest, val = self.subset(keep.to(self.y.device)), self.subset(index)
        rest.split, val.split = f"{self.split}-minus-val", f"{self.split}-val"
        rest.info = {**self.info, "val_per_class": int(per_class), "val_seed": int(seed)}
        val.info = {**self.info, "per_class": int(per_class), "per_class_seed": int(seed)}
        return rest, val

    def per_class(self, k: int, seed: int = 0) -> Domain:
        """Stratified labelled subset: ``k`` examples of every class (the label budgets of chapters 01-03)."""
        out = self.subset(self.per_class_index(k, seed))
        out.info = {**self.info, "per_class": int(k), "per_class_seed": int(seed)}
        return out


def domain_summary(domain: Domain) -> dict:
    """Counts and pixel statistics of a domain, handy for printing and sanity checks."""
    counts = torch.bincount(domain.y.cpu(), minlength=domain.num_classes).tolist()
    x = domain.x
    return {
        "name": domain.name,
        "split": domain.split,
        "n": len(domain),
        "num_classes": domain.num_classes,
        "per_class": dict(zip(domain.classes, counts, strict=True)),
        "min_per_class": min(counts) if counts else 0,
        "max_per_class": max(counts) if counts else 0,
        "mean": x.mean(dim=(0, 2, 3)).tolist() if len(domain) else [],
        "std": x.std(dim=(0, 2, 3)).tolist() if len(domain) > 1 else [],
        "device": str(x.device),
    }
