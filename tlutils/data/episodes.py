"""Few-shot tasks for meta-learning (chapter 06): meta-batches of support and query sets.

``TaskBatch`` holds a meta-batch with a leading task dimension. Two task families fill it:
sinusoid regression with the protocol of Finn et al. (ICML 2017), and N-way K-shot classification
episodes drawn from the ``glyphs`` domain with alphabet-level meta-train / meta-val / meta-test
splits, so no episode mixes the scripts of two roles.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from tlutils.data.glyphs import glyph_alphabets
from tlutils.data.registry import load_domain


@dataclass
class TaskBatch:
    """A meta-batch: support and query sets with a leading task dimension ``(T, n, ...)``.

    ``info`` carries task descriptions (e.g. sinusoid amplitude and phase) for plotting.
    """

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor
    info: dict = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return TaskBatch(*(move(t) for t in self.task(slice(None))), self.info)

    def task(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Task ``i`` as ``(x_support, y_support, x_query, y_query)``."""
        return self.x_support[i], self.y_support[i], self.x_query[i], self.y_query[i]


class SinusoidTasks:
    """Sinusoid regression tasks of Finn et al.: ``y = A sin(x - phi)``.

    Amplitude A ~ U[0.1, 5], phase phi ~ U[0, pi], inputs x ~ U[-5, 5] (the paper's protocol).
    """

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ):
        for name, (lo, hi) in {"amplitude": amplitude, "phase": phase, "x_range": x_range}.items():
            if not lo < hi:
                raise ValueError(f"{name} must be an interval (low, high) with low < high, got {(lo, hi)}")
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    @staticmethod
    def curve(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
        """``A sin(x - phi)`` with A, phi of shape ``(T,)`` broadcast over x of shape ``(T, n, 1)``."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))

    def sample(
        self, num_tasks: int, k_support: int, k_query: int, generator: torch.Generator | None = None
    ) -> TaskBatch:
        """``num_tasks`` tasks of ``k_support`` support and ``k_query`` query points; x is ``(T, n, 1)``."""
        if min(num_tasks, k_support, k_query) < 1:
            raise ValueError(
                f"num_tasks, k_support and k_query must be >= 1, got {num_tasks}, {k_support}, {k_query}"
            )

        def uniform(shape, lo, hi):
            return lo + (hi - lo) * torch.rand(shape, generator=generator)

        amp = uniform((num_tasks,), *self.amplitude)
        phase = uniform((num_tasks,), *self.phase)
        x = uniform((num_tasks, k_support + k_query, 1), *self.x_range)
        y = self.curve(amp, phase, x)
        return TaskBatch(
            x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:],
            info={"amplitude": amp, "phase": phase},
        )


def glyph_images(x: Tensor, image_size: int = 28) -> Tensor:
    """Domain images ``(N, 3, 32, 32)`` -> one grayscale channel at ``image_size`` (28, the paper's)."""
    x = x[:, :1]
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    return x


class EpisodeSampler:
    """N-way K-shot classification episodes from a labelled image set.

    Each episode draws ``n_way`` classes, relabels them ``0..n_way-1`` in random order, and takes
    ``k_shot`` support and ``k_query`` query images per class (disjoint). With ``rotations=True``
    every class also appears rotated by 90, 180 and 270 degrees as three further classes (the
    paper's Omniglot augmentation; use it for meta-training only).

    ``balance="alphabet"`` weights each class by one over the number of classes of its alphabet
    (``info["alphabet"]``, one entry per label), so every alphabet is equally likely to supply a
    class however many characters it has; the default draws classes uniformly.
    """

    def __init__(
        self, x: Tensor, y: Tensor, n_way: int, k_shot: int, k_query: int, rotations: bool = False,
        info: dict | None = None, balance: str | None = None,
    ):
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"expected images (N, C, H, W) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        classes, counts = torch.unique(y.cpu(), return_counts=True)
        need = k_shot + k_query
        keep = classes[counts >= need]
        if len(keep) < len(classes):
            dropped = len(classes) - len(keep)
            warnings.warn(f"EpisodeSampler: dropped {dropped} classes with < {need} images", stacklevel=2)
        num_virtual = len(keep) * (4 if rotations else 1)
        if n_way > num_virtual:
            raise ValueError(
                f"{n_way}-way episodes need {n_way} classes with >= {need} images each, "
                f"only {num_virtual} have; "
                "lower n_way / k_shot / k_query or use rotations=True"
            )
        self.x, self.n_way, self.k_shot, self.k_query, self.rotations = x, n_way, k_shot, k_query, rotations
        self.info = dict(info or {})
        y_cpu = y.cpu()
        self.class_ids = keep.tolist()
        self.index = [torch.nonzero(y_cpu == c).flatten() for c in self.class_ids]
        self.weights: Tensor | None = None
        if balance == "alphabet":
            if "alphabet" not in self.info:
                raise ValueError("balance='alphabet' needs info['alphabet'] (the alphabet of each label)")
            alphabets = [self.info["alphabet"][c] for c in self.class_ids]
            counts = {a: alphabets.count(a) for a in set(alphabets)}
            w = torch.tensor([1.0 / counts[a] for a in alphabets], dtype=torch.float64)
            self.weights = w.repeat_interleave(4) if rotations else w
        elif balance is not None:
            raise ValueError(f"balance must be None or 'alphabet', got {balance!r}")

    @property
    def num_classes(self) -> int:
        """Classes an episode can draw from (rotated copies count as classes)."""
        return len(self.class_ids) * (4 if self.rotations else 1)

    def sample(self, num_tasks: int, generator: torch.Generator | None = None) -> TaskBatch:
        """``num_tasks`` episodes: x ``(T, n_way * k, C, H, W)``, y ``(T, n_way * k)``.

        ``info["classes"]`` ``(T, n_way)`` holds the original label of each episode label, and
        ``info["rotation"]`` its rotation in quarter turns.
        """
        n, k, q = self.n_way, self.k_shot, self.k_query
        idx = torch.empty(num_tasks, n, k + q, dtype=torch.long)
        rot = torch.zeros(num_tasks, n, dtype=torch.long)
        cls = torch.zeros(num_tasks, n, dtype=torch.long)
        for t in range(num_tasks):
            if self.weights is None:
                picked = torch.randperm(self.num_classes, generator=generator)[:n]
            else:
                picked = torch.multinomial(self.weights, n, replacement=False, generator=generator)
            for j, v in enumerate(picked.tolist()):
                c, rot[t, j] = divmod(v, 4) if self.rotations else (v, 0)
                cls[t, j] = self.class_ids[c]
                members = self.index[c]
                idx[t, j] = members[torch.randperm(len(members), generator=generator)[: k + q]]
        images = self.x[idx.to(self.x.device)]  # (T, n, k+q, C, H, W)
        if self.rotations:
            for r in (1, 2, 3):
                mask = (rot == r).to(images.device)
                images[mask] = torch.rot90(images[mask], r, dims=(-2, -1))
        labels = torch.arange(n, device=images.device).view(1, n, 1).expand(num_tasks, n, k + q)
        flat = lambda t: t.reshape(num_tasks, n * t.shape[2], *t.shape[3:])  # noqa: E731
        return TaskBatch(
            flat(images[:, :, :k]), flat(labels[:, :, :k]), flat(images[:, :, k:]), flat(labels[:, :, k:]),
            info={"classes": cls, "rotation": rot},
        )


def glyph_episodes(
    role: str,
    n_way: int = 5,
    k_shot: int = 1,
    k_query: int = 5,
    *,
    rotations: bool = False,
    image_size: int = 28,
    split: str = "train",
    seed: int = 0,
    device: torch.device | str | None = None,
    balance: str | None = None,
    **options,
) -> EpisodeSampler:
    """An ``EpisodeSampler`` over the glyph classes whose alphabet belongs to ``role``.

    ``role`` is ``"meta-train"``, ``"meta-val"`` or ``"meta-test"``: disjoint sets of alphabets
    (``tlutils.data.glyphs.glyph_alphabets``), so no episode mixes meta-train and meta-test scripts.
    ``options`` go to ``load_domain("glyphs", split, ...)``, e.g. ``num_classes``, ``per_class``;
    ``balance="alphabet"`` gives every alphabet the same chance per class drawn (see ``EpisodeSampler``).
    """
    x, y, info = glyph_role_data(
        role, image_size=image_size, split=split, seed=seed, device=device, **options
    )
    return EpisodeSampler(x, y, n_way, k_shot, k_query, rotations=rotations, info=info, balance=balance)


def glyph_role_data(
    role: str,
    *,
    image_size: int = 28,
    split: str = "train",
    seed: int = 0,
    device: torch.device | str | None = None,
    **options,
) -> tuple[Tensor, Tensor, dict]:
    """Images ``(N, 1, S, S)``, labels ``0..C-1`` and ``info`` of the glyph classes of ``role``'s alphabets.

    ``info`` has per class ``classes`` (the character) and ``alphabet``, plus the ``role``.

    ``options["alphabets"]`` defaults to ``role``; any class whose ``info["alphabet"]`` lies outside
    the role is dropped, so a wider domain (e.g. one cached by another chapter) can be passed.
    """
    allowed = set(glyph_alphabets(role))
    dom = load_domain("glyphs", split, seed=seed, **{"alphabets": role, **options})
    keep = [c for c in range(dom.num_classes) if dom.info["alphabet"][c] in allowed]
    if not keep:
        raise ValueError(
            f"no glyph classes belong to role {role!r} (alphabets {sorted(allowed)}); "
            "load more classes (num_classes=None) or include those alphabets"
        )
    remap = torch.full((dom.num_classes,), -1, dtype=torch.long)
    remap[torch.tensor(keep)] = torch.arange(len(keep))
    labels = remap[dom.y.cpu()]
    rows = torch.nonzero(labels >= 0).flatten()
    x = glyph_images(dom.x[rows.to(dom.x.device)], image_size)
    y = labels[rows]
    if device is not None:
        x, y = x.to(device), y.to(device)
    info = {
        "role": role,
        "classes": [dom.classes[c] for c in keep],
        "alphabet": [dom.info["alphabet"][c] for c in keep],
    }
    return x, y, info
