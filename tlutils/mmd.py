"""Maximum mean discrepancy (Gretton et al., JMLR 2012): kernels, estimators, permutation test, loss, and the
geometry of features across domains (class centroids, separation): chapter 05's measurements.

MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y) is zero iff P = Q for a characteristic kernel,
so it measures how far apart two samples' distributions are. Everything here works on 2-D feature
tensors ``(N, D)``; larger tensors (images, feature maps) are flattened to ``(N, -1)``.

Kernel convention, written down once: ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))``. The bandwidth
``sigma`` defaults to the median heuristic: the median pairwise Euclidean distance of the pooled sample,
detached from the graph (a bandwidth is a choice, not something to learn by gradient). A multi-kernel
(DAN, Long et al. 2015) is the equal-weight mean of Gaussians with ``sigma_j^2 = s_j * sigma^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

ESTIMATORS = ("unbiased", "biased", "linear")
"""unbiased: U-statistic (Gretton eq. 3, diagonal excluded, can be < 0). biased: V-statistic (eq. 5,
>= 0). linear: the O(n) estimator of Lemma 14 (equal sample sizes, higher variance)."""


def _as_features(name: str, t: Tensor) -> Tensor:
    """Return ``t`` as a float ``(N, D)`` matrix; half precision is promoted (exp of distances needs it)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, D), got {type(t).__name__}")
    if t.dim() == 1:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; pass samples as rows, e.g. {name}.unsqueeze(1)")
    t = t.flatten(1) if t.dim() > 2 else t
    if not t.is_floating_point():
        t = t.float()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t


def _check_pair(x: Tensor, y: Tensor, estimator: str) -> tuple[Tensor, Tensor]:
    x, y = _as_features("x", x), _as_features("y", y)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same feature size, got {x.shape[1]} and {y.shape[1]} "
            f"(shapes {tuple(x.shape)} and {tuple(y.shape)}); extract both from the same layer"
        )
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} and y on {y.device}; move both to one device first")
    if estimator == "unbiased" and min(len(x), len(y)) < 2:
        raise ValueError(f"the unbiased estimator needs >= 2 samples per side, got {len(x)} and {len(y)}")
    if estimator == "linear":
        if len(x) != len(y):
            raise ValueError(
                f"the linear estimator pairs x_i with y_i and needs equal sizes, got {len(x)} and {len(y)}; "
                "subsample the larger sample (e.g. x[:len(y)])"
            )
        if len(x) < 2:
            raise ValueError(f"the linear estimator needs >= 2 samples per side, got {len(x)}")
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return x, y


def pairwise_sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``(len(a), len(b))``, clamped at 0; differentiable everywhere (no sqrt)."""
    sq = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * a @ b.T
    return sq.clamp_min_(0.0)


def median_bandwidth(z: Tensor, max_points: int = 1000) -> Tensor:
    """Median heuristic: median pairwise Euclidean distance of ``z`` (the pooled sample), detached.

    Above ``max_points`` rows an evenly spaced subset is used (deterministic, keeps the x/y proportion of
    a pooled ``cat([x, y])``); the median of ~500k distances is already stable. If half the pairs
    coincide the mean nonzero distance is used instead, and 1.0 if all points are identical.
    """
    z = _as_features("z", z).detach()
    if len(z) < 2:
        raise ValueError(f"the median heuristic needs >= 2 points, got {len(z)}")
    if len(z) > max_points:
        z = z[torch.linspace(0, len(z) - 1, max_points, device=z.device).round().long()]
    d2 = pairwise_sq_dists(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    d = d2[iu[0], iu[1]].sqrt()
    sigma = d.median()
    if sigma <= 0:
        nonzero = d[d > 0]
        sigma = nonzero.mean() if len(nonzero) else torch.ones((), dtype=z.dtype, device=z.device)
    return sigma


def dan_scales(low: int = -8, high: int = 8, step: int = 2) -> tuple[float, ...]:
    """Multipliers ``2^k`` (k = low, low+step, ..., high) of ``sigma^2`` for a DAN-style multi-kernel.

    DAN varies the kernel width gamma = 2 sigma^2 over 2^-8 gamma .. 2^8 gamma around the median one.
    """
    if step <= 0 or high < low:
        raise ValueError(f"need step > 0 and high >= low, got low={low}, high={high}, step={step}")
    return tuple(2.0**k for k in range(low, high + 1, step))


@dataclass(frozen=True)
class GaussianKernel:
    """``k(x, y) = mean_j exp(-||x - y||^2 / (2 sigma_j^2))`` with ``sigma_j^2 = scales[j] * sigma^2``.

    ``sigma=None`` takes ``sigma`` from the median heuristic on the pooled sample at each call, so the
    same kernel object adapts to pixels and to features. ``scales=(1.0,)`` is the plain Gaussian.
    """

    sigma: float | None = None
    scales: tuple[float, ...] = (1.0,)
    max_points: int = 1000

    def __post_init__(self) -> None:
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError(f"sigma must be > 0 (or None for the median heuristic), got {self.sigma}")
        if len(self.scales) == 0 or any(not s > 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty tuple of positive numbers, got {self.scales}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    def sigmas(self, pooled: Tensor) -> Tensor:
        """The bandwidths ``(J,)`` used for this pooled sample (detached)."""
        base = median_bandwidth(pooled, self.max_points) if self.sigma is None else self.sigma
        scales = torch.tensor(self.scales, dtype=pooled.dtype, device=pooled.device)
        return torch.as_tensor(base, dtype=pooled.dtype, device=pooled.device) * scales.sqrt()

    def gram(self, a: Tensor, b: Tensor, sigmas: Tensor) -> Tensor:
        """Kernel matrix ``(len(a), len(b))`` for the given bandwidths."""
        return self._from_sq(pairwise_sq_dists(a, b), sigmas)

    def paired(self, a: Tensor, b: Tensor, sigmas: Tensor) -> Tensor:
        """``k(a_i, b_i)`` for each row i, in O(N D)."""
        return self._from_sq((a - b).pow(2).sum(1), sigmas)

    @staticmethod
    def _from_sq(d2: Tensor, sigmas: Tensor) -> Tensor:
        out = torch.zeros_like(d2)
        for s in sigmas:  # a loop over J kernels keeps memory at one matrix
            out = out + torch.exp(-d2 / (2.0 * s * s))
        return out / len(sigmas)


def multi_kernel(low: int = -8, high: int = 8, step: int = 2, sigma: float | None = None) -> GaussianKernel:
    """DAN-style multi-kernel: Gaussians with ``sigma_j^2 = 2^k sigma^2``, k in ``low..high`` by ``step``."""
    return GaussianKernel(sigma=sigma, scales=dan_scales(low, high, step))


def _kernel(kernel: GaussianKernel | None) -> GaussianKernel:
    if kernel is None:
        return GaussianKernel()
    if isinstance(kernel, (int, float)) and not isinstance(kernel, bool):
        return GaussianKernel(sigma=float(kernel))
    if not isinstance(kernel, GaussianKernel):
        raise TypeError(
            f"kernel must be a GaussianKernel, a float bandwidth or None (median heuristic), "
            f"got {type(kernel).__name__}; e.g. kernel=GaussianKernel(sigma=1.0) or kernel=multi_kernel()"
        )
    return kernel


def mmd2_from_gram(gram: Tensor, n_x: int, estimator: str = "unbiased") -> Tensor:
    """MMD^2 from the pooled kernel matrix of ``cat([x, y])``, where the first ``n_x`` rows are x."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (N, N) matrix, got shape {tuple(gram.shape)}")
    n, m = n_x, len(gram) - n_x
    if n < 1 or m < 1:
        raise ValueError(f"n_x={n_x} must split the {len(gram)} rows into two non-empty samples")
    if estimator == "linear":
        if n != m:
            raise ValueError(f"the linear estimator needs equal sizes, got {n} and {m}")
        idx = torch.arange(len(gram), device=gram.device).unsqueeze(0)
        return _linear_from_gram(gram, idx, n)[0]
    assignment = torch.zeros(1, len(gram), dtype=gram.dtype, device=gram.device)
    assignment[0, :n] = 1.0
    return _quadratic_from_gram(gram, assignment, n, estimator)[0]


def _quadratic_from_gram(gram: Tensor, assign: Tensor, n: int, estimator: str) -> Tensor:
    """Batched MMD^2 for P group assignments ``assign`` (P, N) of 0/1, each with ``n`` ones.

    With K0 the Gram matrix (diagonal zeroed for the U-statistic) and a the indicator of x:
    sum_xx = a K0 a^T, sum_xy = a K0 1 - sum_xx, sum_yy = 1 K0 1 - 2 a K0 1 + sum_xx: one matmul per batch.
    """
    m = gram.shape[0] - n
    k0 = gram.clone() if estimator == "unbiased" else gram
    if estimator == "unbiased":
        k0.diagonal().zero_()
        if n < 2 or m < 2:
            raise ValueError(f"the unbiased estimator needs >= 2 samples per side, got {n} and {m}")
    ak = assign @ k0
    row = k0.sum(1, dtype=torch.float64)
    total = row.sum()
    xx = (ak * assign).sum(1, dtype=torch.float64)
    ar = assign.to(torch.float64) @ row
    xy = ar - xx
    yy = total - 2.0 * ar + xx
    if estimator == "unbiased":
        out = xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m)
    else:
        out = xx / n**2 + yy / m**2 - 2.0 * xy / (n * m)
    return out.to(gram.dtype)


def _linear_from_gram(gram: Tensor, order: Tensor, n: int) -> Tensor:
    """Batched linear-time MMD^2 (Lemma 14) for P orderings ``order`` (P, 2n): first n are x, rest y."""
    half = n // 2
    xs, ys = order[:, :n], order[:, n:]
    x1, x2 = xs[:, 0 : 2 * half : 2], xs[:, 1 : 2 * half : 2]
    y1, y2 = ys[:, 0 : 2 * half : 2], ys[:, 1 : 2 * half : 2]
    h = gram[x1, x2] + gram[y1, y2] - gram[x1, y2] - gram[x2, y1]
    return h.mean(1)


def mmd2(
    x: Tensor, y: Tensor, kernel: GaussianKernel | float | None = None, estimator: str = "unbiased"
) -> Tensor:
    """Estimate MMD^2 between samples ``x`` (n, D) and ``y`` (m, D); differentiable, 0-d tensor.

    ``kernel``: a ``GaussianKernel`` (default: one Gaussian, median bandwidth of the pooled sample), or
    a float bandwidth sigma. ``estimator``: "unbiased" (U-statistic), "biased" (V-statistic) or
    "linear" (O(n), needs n == m). Introduced in chapter 05, section 1 (``notebooks/05_mmd.ipynb``).
    """
    x, y = _check_pair(x, y, estimator)
    k = _kernel(kernel)
    sigmas = k.sigmas(torch.cat([x, y]))
    if estimator == "linear":
        half = len(x) // 2
        x1, x2, y1, y2 = x[0 : 2 * half : 2], x[1 : 2 * half : 2], y[0 : 2 * half : 2], y[1 : 2 * half : 2]
        h = k.paired(x1, x2, sigmas) + k.paired(y1, y2, sigmas) - k.paired(x1, y2, sigmas)
        return (h - k.paired(x2, y1, sigmas)).mean()
    kxx, kyy, kxy = k.gram(x, x, sigmas), k.gram(y, y, sigmas), k.gram(x, y, sigmas)
    n, m = len(x), len(y)
    if estimator == "biased":
        return kxx.mean() + kyy.mean() - 2.0 * kxy.mean()
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2.0 * kxy.mean()


def gaussian_mmd2(shift: float, dim: int, sigma: float, scale_x: float = 1.0, scale_y: float = 1.0) -> float:
    """Exact MMD^2 between N(0, scale_x^2 I) and N(mu, scale_y^2 I), ||mu|| = shift, in ``dim`` dimensions.

    For u ~ N(m, v I): E exp(-||u||^2 / (2 sigma^2)) = (sigma^2 / (sigma^2 + v))^(d/2) exp(-||m||^2 /
    (2 (sigma^2 + v))), applied to x - x', y - y' and x - y. The ground truth for checking estimators.
    """
    if dim < 1 or not sigma > 0:
        raise ValueError(f"need dim >= 1 and sigma > 0, got dim={dim}, sigma={sigma}")
    s2 = sigma**2

    def expected_kernel(mean_sq: float, var: float) -> float:
        return (s2 / (s2 + var)) ** (dim / 2) * math.exp(-mean_sq / (2 * (s2 + var)))

    vx, vy = scale_x**2, scale_y**2
    return (
        expected_kernel(0.0, 2 * vx) + expected_kernel(0.0, 2 * vy) - 2 * expected_kernel(shift**2, vx + vy)
    )


def permutation_null(
    gram: Tensor,
    n_x: int,
    *,
    n_permutations: int = 1000,
    estimator: str = "unbiased",
    seed: int = 0,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Observed MMD^2 and its permutation null ``(n_permutations,)`` from a precomputed pooled Gram matrix.

    Each permutation relabels the pooled sample at random; permutations are index shuffles drawn in
    batches (``rand(P, N).argsort``) and scored with one matmul per batch, never a Python loop per
    permutation. Seeded: the same ``(seed, batch_size)`` gives the same null on any run.
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    gram = gram.detach()
    n_total = len(gram)
    observed = mmd2_from_gram(gram, n_x, estimator)
    batch = batch_size or max(1, min(n_permutations, (1 << 22) // n_total))
    gen = torch.Generator().manual_seed(int(seed))
    null = []
    for start in range(0, n_permutations, batch):
        p = min(batch, n_permutations - start)
        order = torch.rand(p, n_total, generator=gen).argsort(dim=1).to(gram.device)
        if estimator == "linear":
            null.append(_linear_from_gram(gram, order, n_x))
        else:
            assign = torch.zeros(p, n_total, dtype=gram.dtype, device=gram.device)
            assign.scatter_(1, order[:, :n_x], 1.0)
            null.append(_quadratic_from_gram(gram, assign, n_x, estimator))
    return observed, torch.cat(null)


def permutation_test(
    x: Tensor,
    y: Tensor,
    n_permutations: int = 1000,
    *,
    kernel: GaussianKernel | float | None = None,
    estimator: str = "unbiased",
    seed: int = 0,
    batch_size: int | None = None,
) -> tuple[float, float]:
    """Two-sample test of H0: P = Q. Returns ``(mmd2, p_value)``, p = (1 + #{null >= observed}) / (1 + B).

    The kernel matrix of the pooled sample (and its median bandwidth) is computed once; under H0 the
    labels are exchangeable, so relabelled statistics give the null distribution.
    """
    x, y = _check_pair(x, y, estimator)
    with torch.no_grad():
        k = _kernel(kernel)
        z = torch.cat([x, y])
        gram = k.gram(z, z, k.sigmas(z))
        observed, null = permutation_null(
            gram, len(x), n_permutations=n_permutations, estimator=estimator, seed=seed, batch_size=batch_size
        )
    p_value = (1 + int((null >= observed).sum())) / (1 + n_permutations)
    return float(observed), p_value


class MMDLoss(nn.Module):
    """MMD^2 between a batch of source and target features, as a training loss (DAN).

    Default: the DAN multi-kernel (``multi_kernel()``, bandwidths from the pooled batch, detached) and
    the unbiased estimator. With ``estimator="linear"`` unequal batches are cut to the smaller size.
    Chapter 05, section 4 (``notebooks/05_mmd.ipynb``, "One DAN run") trains with it and shows this source.
    """

    def __init__(self, kernel: GaussianKernel | None = None, estimator: str = "unbiased") -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        self.kernel = multi_kernel() if kernel is None else _kernel(kernel)
        self.estimator = estimator

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        if self.estimator == "linear":
            size = min(len(source), len(target))
            source, target = source[:size], target[:size]
        return mmd2(source, target, self.kernel, self.estimator)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, estimator={self.estimator!r}"


def class_centroid_distance(
    source: Tensor, source_labels: Tensor, target: Tensor, target_labels: Tensor
) -> float:
    """Mean over classes of ||mu_c(source) - mu_c(target)||, divided by the mean distance between
    different source class centroids (scale-free: < 1 means a target class sits nearer its own source
    class than source classes sit to each other). Uses target labels: an analysis tool, not a method.
    """
    source, target = _as_features("source", source).detach(), _as_features("target", target).detach()
    classes = sorted(set(source_labels.tolist()) & set(target_labels.tolist()))
    if len(classes) < 2:
        raise ValueError(f"need >= 2 classes present in both domains, found {classes}")
    mu_s = torch.stack([source[source_labels == c].mean(0) for c in classes])
    mu_t = torch.stack([target[target_labels == c].mean(0) for c in classes])
    across = (mu_s - mu_t).norm(dim=1).mean()
    between = torch.cdist(mu_s, mu_s)
    spread = between.sum() / (len(classes) * (len(classes) - 1))
    return float(across / spread)


def inter_centroid_distance(features: Tensor, labels: Tensor) -> float:
    """Class inter-centroid distance as commonly defined: ``CID = 1/C sum_c ||mu_c - mu||^2``.

    ``mu_c`` is the centroid of class ``c`` and ``mu`` the mean of the class centroids. It has the units of the
    features squared: scaling the features by ``s`` scales it by ``s^2``, so it says as much about feature norms
    as about separation; :func:`class_separation` divides by the within-class spread and is scale-free.
    """
    features = _as_features("features", features).detach()
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise ValueError(f"need >= 2 classes, found {classes}")
    mu = torch.stack([features[labels == c].mean(0) for c in classes])
    return float(((mu - mu.mean(0)) ** 2).sum(1).mean())


def class_separation(features: Tensor, labels: Tensor) -> float:
    """Class inter-centroid distance relative to the spread: mean distance between different class
    centroids divided by the mean distance of a point to its own class centroid (scale-free; higher =
    classes further apart). On target features it says how separable the target classes are.
    """
    features = _as_features("features", features).detach()
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise ValueError(f"need >= 2 classes, found {classes}")
    mu = torch.stack([features[labels == c].mean(0) for c in classes])
    within = torch.cat([(features[labels == c] - mu[i]).norm(dim=1) for i, c in enumerate(classes)]).mean()
    between = torch.cdist(mu, mu).sum() / (len(classes) * (len(classes) - 1))
    return float(between / within)


__all__ = [
    "ESTIMATORS",
    "GaussianKernel",
    "MMDLoss",
    "class_centroid_distance",
    "class_separation",
    "dan_scales",
    "gaussian_mmd2",
    "inter_centroid_distance",
    "median_bandwidth",
    "mmd2",
    "mmd2_from_gram",
    "multi_kernel",
    "pairwise_sq_dists",
    "permutation_null",
    "permutation_test",
]
