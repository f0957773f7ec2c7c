"""Frozen-backbone features: extract them once, cache them, and probe them.

With the backbone frozen, its output for an image never changes, so training a head need not run
the backbone every epoch: run it once per (checkpoint, domain, split, stage), keep the features, and
train on those (chapter 01 measures the speed-up). The same features feed scikit-learn probes
(logistic regression, linear SVM) and the per-stage transferability probe of Yosinski et al. (2014).
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlutils.cache import cache_key, code_fingerprint, load_or_build
from tlutils.config import data_dir, get_device
from tlutils.models import make_head
from tlutils.timing import EpochTimer, timed
from tlutils.train import EVAL_BATCH, as_tensors, fit, predict

_MEMORY: dict[str, Features] = {}
_MEMORY_MAX = 16


@dataclass
class Features:
    """Features ``x`` (N, D) float32 on the CPU with labels ``y``; works with ``fit``/``evaluate`` like a Domain."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    stage: str
    key: str
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    def subset(self, index) -> Features:
        """The rows at ``index`` (e.g. ``domain.per_class_index(k, seed)``: features keep the domain's order)."""
        index = torch.as_tensor(np.asarray(index) if not torch.is_tensor(index) else index).cpu()
        return replace(self, x=self.x[index], y=self.y[index], info=dict(self.info))

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x.numpy(), self.y.numpy()


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone of a ``Classifier`` (or the module itself when it is a backbone)."""
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "forward_stages"):
        raise TypeError(f"expected a tlutils Classifier or Backbone (with forward_stages), got {type(model).__name__}")
    return backbone


def _check_stage(backbone: nn.Module, stage: str) -> None:
    if stage not in backbone.stages:
        raise ValueError(f"unknown stage {stage!r}; the backbone's stages are {list(backbone.stages)}")


def pool_features(fmap: torch.Tensor, grid: int = 1) -> torch.Tensor:
    """Average-pool a feature map (B, C, H, W) to a ``grid`` x ``grid`` grid and flatten: (B, C * grid^2)."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    return torch.flatten(F.adaptive_avg_pool2d(fmap, grid), 1)


def extract_features(model: nn.Module, data, *, stage: str | None = None, grid: int = 1,
                     batch_size: int = EVAL_BATCH,
                     device: str | torch.device | None = None) -> torch.Tensor:
    """Features of ``data`` after ``stage`` (default: the last), pooled to ``grid`` x ``grid``; (N, D) on the CPU.

    The backbone runs in eval mode under ``no_grad`` (batch norm uses its running statistics), as a
    frozen backbone does during head training.
    """
    backbone = backbone_of(model)
    stage = stage or list(backbone.stages)[-1]
    _check_stage(backbone, stage)
    return predict(backbone, data, batch_size=batch_size, device=device,
                   fn=lambda m, x: pool_features(m.forward_stages(x, upto=stage)[stage], grid))


def _digest(tensors, h: hashlib._Hash) -> None:
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights and buffers: the identity of a checkpoint."""
    h = hashlib.blake2b(digest_size=8)
    state = module.state_dict()
    for name in sorted(state):
        h.update(name.encode())
        _digest([state[name]], h)
    return h.hexdigest()


_TENSOR_HASHES: dict[int, tuple[weakref.ref, int, str]] = {}


def tensor_fingerprint(t: torch.Tensor) -> str:
    """Hash of a tensor's shape, dtype and values; memoised per live tensor until it is modified in place."""
    entry = _TENSOR_HASHES.get(id(t))
    if entry is not None and entry[0]() is t and entry[1] == t._version:
        return entry[2]
    h = hashlib.blake2b(digest_size=8)
    _digest([t], h)
    digest = h.hexdigest()
    for key in [k for k, (ref, _, _) in _TENSOR_HASHES.items() if ref() is None]:
        del _TENSOR_HASHES[key]
    _TENSOR_HASHES[id(t)] = (weakref.ref(t), t._version, digest)
    return digest


def data_fingerprint(data) -> str:
    """A short hash of a domain's images and labels (subsets of one domain get different keys)."""
    tensors = as_tensors(data)
    if tensors is None:
        raise TypeError("feature caching needs a Domain or an (x, y) tuple of tensors, not a DataLoader")
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        h.update(tensor_fingerprint(t).encode())
    return h.hexdigest()


def feature_key(model: nn.Module, data, stage: str, grid: int = 1) -> str:
    """Cache key of features: ``<domain>-<split>-<stage>-`` and the :func:`tlutils.cache.cache_key` of the
    checkpoint (weights hash), domain, split, stage, pooling, the data's hash and the code of extraction
    (:func:`tlutils.cache.code_fingerprint` of this module and what it imports)."""
    backbone = backbone_of(model)
    name, split = getattr(data, "name", "tensors"), getattr(data, "split", "data")
    fields = {"name": name, "split": split, "stage": stage, "grid": grid, "code": code_fingerprint(__name__),
              "weights": weights_fingerprint(backbone), "data": data_fingerprint(data)}
    return f"{name}-{split}-{stage}-{cache_key(fields)}"


def _remember(key: str, feats: Features) -> None:
    _MEMORY[key] = feats
    while len(_MEMORY) > _MEMORY_MAX:
        _MEMORY.pop(next(iter(_MEMORY)))


def _load_features(path: Path, key: str, y: torch.Tensor) -> dict:
    """The blob of a feature file, verified: written under ``key``, for the labels ``y``, one row per label."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("key") != key:
        raise ValueError(f"cache key mismatch (file has {blob.get('key')!r}, expected {key!r})")
    x = blob["x"]
    if x.dtype != torch.float32 or x.ndim != 2 or len(x) != len(y) or not torch.equal(blob["y"], y):
        raise ValueError(f"features {x.dtype} {tuple(x.shape)} do not match the {len(y)} labels of the data")
    return blob


def cached_features(model: nn.Module, data, *, stage: str | None = None, grid: int = 1,
                    cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
                    batch_size: int = EVAL_BATCH, refresh: bool = False) -> Features:
    """Features of ``data`` after ``stage``, computed once and then served from memory or disk.

    The key (see ``feature_key``) changes whenever the weights, the data, the stage or the pooling
    change, so a stale file is never served. Files live in ``cache_dir`` (default
    ``<data dir>/features``) under the policy of :mod:`tlutils.cache` (verified on load, a bad file
    reported and rebuilt, atomic writes, built once by concurrent processes). ``refresh``: recompute
    and overwrite. ``info`` says where they came from (``source``: "memory", "disk" or "computed") and
    how long that took.
    """
    backbone = backbone_of(model)
    stage = stage or list(backbone.stages)[-1]
    _check_stage(backbone, stage)
    start = time.perf_counter()
    key = feature_key(backbone, data, stage, grid)
    if not refresh and key in _MEMORY:
        return replace(_MEMORY[key], info={"source": "memory", "seconds": time.perf_counter() - start})
    path = Path(cache_dir or data_dir() / "features") / f"{key}.pt"
    classes = list(getattr(data, "classes", []))
    y = as_tensors(data)[1].cpu()
    computed = []

    def build() -> dict:
        x = extract_features(backbone, data, stage=stage, grid=grid, batch_size=batch_size, device=device)
        computed.append(True)
        return {"x": x, "y": y, "classes": classes or [str(c) for c in range(int(y.max()) + 1)], "key": key}

    if refresh:
        path.unlink(missing_ok=True)
    blob = load_or_build(path, build, load=lambda p: _load_features(p, key, y), save=torch.save,
                         what="feature cache file")
    source = "computed" if computed else "disk"
    feats = Features(blob["x"], blob["y"], classes or blob["classes"], stage, key,
                     {"source": source, "seconds": time.perf_counter() - start})
    _remember(key, feats)
    return feats


def clear_memory_cache() -> None:
    """Forget the in-memory features (disk files stay)."""
    _MEMORY.clear()


# ----------------------------------------------------------------------------- probes


def train_linear_head(train, *, num_classes: int | None = None, epochs: int = 100, lr: float = 1e-2,
                      weight_decay: float = 1e-4, batch_size: int = 256, hidden: int | None = None,
                      dropout: float = 0.5, val=None, device: str | torch.device | None = None,
                      seed: int = 0, progress: bool | None = False):
    """Train a new head (``make_head``: linear, or the two-layer head when ``hidden``) on features.

    ``train`` is a ``Features`` or an ``(x, y)`` tuple. The head takes the backbone's raw features,
    so ``Classifier(backbone, head)`` is the frozen-backbone model. Returns ``(head, History)``.
    Introduced in chapter 01, section 2 (one linear probe, visibly).
    """
    x, y = as_tensors(train)
    if x.dim() != 2:
        raise ValueError(f"train_linear_head expects (N, D) features, got shape {tuple(x.shape)}; "
                         "extract them first with cached_features(...)")
    num_classes = num_classes or getattr(train, "num_classes", None) or int(y.max()) + 1
    torch.manual_seed(seed)
    head = make_head(x.shape[1], num_classes, hidden=hidden, dropout=dropout)
    history = fit(head, (x, y), epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, val=val,
                  device=device, seed=seed, progress=progress, desc="head")
    return head.cpu(), history


PROBES = ("logreg", "svm", "rbf_svm")


def sklearn_probe(train, test, kind: str = "logreg", C: float = 1.0, max_iter: int = 2000) -> dict:
    """Fit a scikit-learn linear probe on standardised features; return ``{"acc", "train_acc", "model"}``.

    ``kind``: ``"logreg"`` (multinomial logistic regression), ``"svm"`` (linear SVM, one-vs-rest) or
    ``"rbf_svm"`` (kernel SVM, RBF kernel with scikit-learn's ``gamma="scale"``: a non-linear head).
    ``train``/``test``: ``Features`` or ``(x, y)`` tuples. ``acc`` is the test accuracy (a fraction).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    if kind not in PROBES:
        raise ValueError(f"unknown probe {kind!r}; choose one of {PROBES}")
    (xtr, ytr), (xte, yte) = ((t.detach().cpu().numpy() for t in as_tensors(d)) for d in (train, test))
    if xtr.ndim != 2:
        raise ValueError(f"probes expect (N, D) features, got shape {xtr.shape}")
    clf = (LogisticRegression(C=C, max_iter=max_iter) if kind == "logreg"
           else SVC(C=C, kernel="rbf", gamma="scale") if kind == "rbf_svm"
           else LinearSVC(C=C, max_iter=max_iter, dual="auto", random_state=0))
    model = make_pipeline(StandardScaler(), clf).fit(xtr, ytr)
    return {"acc": float(model.score(xte, yte)), "train_acc": float(model.score(xtr, ytr)), "model": model}


def time_head_training(model: nn.Module, train, *, frozen_epochs: int = 2, cached_epochs: int = 10,
                       batch_size: int = 128, lr: float = 1e-2, device: str | torch.device | None = None,
                       seed: int = 0) -> dict:
    """Epoch time of training a new head through the frozen backbone vs on cached features, side by side.

    Both runs train the same linear head with the same optimizer, batch size and data; only the input
    differs (images through the frozen backbone, or the features extracted once). Returns the median
    epoch times, the one-off extraction time, the ``speedup`` (frozen / cached) and how many epochs
    it takes for caching to pay for its extraction.
    """
    device = get_device(device) if not isinstance(device, torch.device) else device
    backbone = copy.deepcopy(backbone_of(model)).to(device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    num_classes = getattr(train, "num_classes", None) or int(as_tensors(train)[1].max()) + 1
    torch.manual_seed(seed)
    head = make_head(backbone.out_features, num_classes)
    frozen_model = _FrozenBackboneClassifier(backbone, copy.deepcopy(head))
    timer_frozen, timer_cached = EpochTimer(), EpochTimer()
    fit(frozen_model, train, epochs=frozen_epochs, lr=lr, batch_size=batch_size, device=device, seed=seed,
        progress=False, callbacks=[timer_frozen])
    feats, extract_s = timed(lambda: extract_features(backbone, train, batch_size=batch_size, device=device), device)
    y = as_tensors(train)[1]
    fit(copy.deepcopy(head), (feats, y), epochs=cached_epochs, lr=lr, batch_size=batch_size, device=device,
        seed=seed, progress=False, callbacks=[timer_cached])
    frozen_s, cached_s = float(np.median(timer_frozen.seconds)), float(np.median(timer_cached.seconds))
    return {"n": len(y), "batch_size": batch_size, "device": str(device), "threads": torch.get_num_threads(),
            "frozen_epoch_s": frozen_s, "cached_epoch_s": cached_s, "extract_s": extract_s,
            "speedup": frozen_s / cached_s, "break_even_epochs": extract_s / max(1e-12, frozen_s - cached_s)}


class _FrozenBackboneClassifier(nn.Module):
    """A frozen backbone (always in eval mode, no gradients) in front of a trainable head."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.backbone.eval()
        with torch.no_grad():
            feats = self.backbone(x)
        return self.head(feats)


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two feature sets of the same examples.

    1 means the representations agree up to rotation and scale; it falls as fine-tuning moves the
    features away from the pretrained ones (chapter 02's measure of feature drift).
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"CKA needs the same examples in both sets, got {a.shape[0]} and {b.shape[0]} rows")
    a = a.double().flatten(1)
    b = b.double().flatten(1)
    a = a - a.mean(0)
    b = b - b.mean(0)
    cross = (b.T @ a).norm() ** 2
    return float(cross / ((a.T @ a).norm() * (b.T @ b).norm()))
