"""One registry for every domain: ``load_domain(name, split, seed=..., device=..., **options)``.

A builder is a function ``build(split, seed, **options) -> Arrays`` registered with its splits and
default options. Its cache key holds :func:`tlutils.cache.code_fingerprint` of the builder's module (and of the
data modules it imports), so a change to the code that draws a domain rebuilds it, and nothing else does.
``load_domain`` validates the call, serves the cached arrays (or builds them) and returns a ``Domain`` with
float32 images in [0, 1] on ``device``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from tlutils.cache import code_fingerprint
from tlutils.config import SMOKE_PER_CLASS, smoke_enabled
from tlutils.data.cache import Arrays, cached
from tlutils.data.domain import Domain


@dataclass(frozen=True)
class DomainSpec:
    """How to build one named domain."""

    name: str
    build: Callable[..., Arrays]
    splits: tuple[str, ...]
    defaults: dict
    description: str
    uses_seed: bool = True
    online: bool = False
    uncached_options: tuple[str, ...] = field(default=())
    """Options that do not change the data (e.g. ``download``) and so stay out of the cache key."""
    fingerprint: Callable[[dict], str] | None = None
    """Optional ``fingerprint(options) -> str`` of the files a domain reads (e.g. an image folder's listing),
    added to the cache key so that changed files are rebuilt."""


_REGISTRY: dict[str, DomainSpec] = {}


def register(spec: DomainSpec) -> DomainSpec:
    """Add a domain to the registry (a name can be registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"domain {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_domains(kind: str = "all") -> list[str]:
    """Names of the registered domains: ``kind`` is ``"all"``, ``"offline"`` (built-in) or ``"online"``."""
    if kind not in ("all", "offline", "online"):
        raise ValueError(f"kind must be 'all', 'offline' or 'online', got {kind!r}")
    return [n for n, s in _REGISTRY.items() if kind == "all" or s.online == (kind == "online")]


def domain_spec(name: str) -> DomainSpec:
    """The spec of ``name``; ValueError listing the valid names when unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; valid names are: {', '.join(list_domains())}") from None


def online_options(name: str, *, download: bool, verify: bool = True) -> dict:
    """``{"download": ..., "verify": ...}`` for an online domain, ``{}`` for a built-in one, so one call serves both:
    ``load_domain(name, split, **online_options(name, download=cfg.download, verify=cfg.verify))``."""
    return {"download": download, "verify": verify} if domain_spec(name).online else {}


def _jsonable(value):
    """Normalise an option value for the cache key (tuples -> lists, numpy scalars -> python)."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"option value {value!r} of type {type(value).__name__} is not supported (use str/int/float/list)"
    )


def resolve_options(spec: DomainSpec, options: dict) -> dict:
    """Defaults updated by ``options``; unknown options raise a TypeError naming the valid ones."""
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items()) or "none"
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for domain {spec.name!r}; "
            f"valid options: {valid}"
        )
    return {k: _jsonable(options.get(k, v)) for k, v in spec.defaults.items()}


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch and BLAS on one thread inside the block, then restore the previous settings.

    Builders do many small tensor operations, where thread pools only spin: on a busy 2-core machine
    rendering 60 syndigits took 2.2 s with two torch threads and 0.09 s with one.
    """
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def builder_code(spec: DomainSpec) -> str:
    """:func:`tlutils.cache.code_fingerprint` of the module that defines ``spec.build`` (and what it imports)."""
    try:
        return code_fingerprint(spec.build.__module__)
    except ValueError as err:
        raise ValueError(f"domain {spec.name!r}: {err}. Define its builder in a module file (its code keys the "
                         "cache), or load it with cache=False") from None


def _build(spec: DomainSpec, split: str, seed: int, opts: dict) -> Arrays:
    with single_threaded():
        return spec.build(split, seed, **opts)


def to_tensors(arrays: Arrays, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, 32, 32) -> float32 (N, 3, 32, 32) in [0, 1] on ``device`` (moved once, as uint8)."""
    x = torch.from_numpy(np.ascontiguousarray(arrays.x))
    y = torch.from_numpy(np.ascontiguousarray(arrays.y))
    if device is not None:
        x, y = x.to(device), y.to(device)
    x = x.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x, y


def smoke_subset(arrays: Arrays) -> Arrays:
    """At smoke scale (``TLUTILS_SMOKE=1``) at most ``SMOKE_PER_CLASS`` examples per class, a fixed random
    subset in the original order; otherwise ``arrays`` unchanged."""

    if not smoke_enabled():
        return arrays
    order = np.random.default_rng(0).permutation(len(arrays.y))
    kept = np.zeros(len(arrays.y), dtype=bool)
    counts: dict[int, int] = {}
    for i in order:
        label = int(arrays.y[i])
        if counts.get(label, 0) < SMOKE_PER_CLASS:
            counts[label] = counts.get(label, 0) + 1
            kept[i] = True
    if kept.all():
        return arrays
    return Arrays(arrays.x[kept], arrays.y[kept], arrays.classes, {**arrays.info, "smoke_subset": int(kept.sum())})


def load_domain(
    name: str,
    split: str = "train",
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache: bool = True,
    **options,
) -> Domain:
    """Load (build or read from cache) one split of a registered domain.

    Args:
        name: one of ``list_domains()``.
        split: a split the domain has (``"train"``/``"test"`` for most; see ``domain_spec(name).splits``).
        seed: seeds the generation of synthetic domains (ignored by fixed real data sets).
        device: where the tensors go (moved once); None keeps them on the CPU.
        cache: read/write ``data_dir()/"domains"``; False always rebuilds and writes nothing.
            At smoke scale (``TLUTILS_SMOKE=1``) the split is then cut to ``SMOKE_PER_CLASS`` per class.
        **options: domain-specific options (``domain_spec(name).defaults`` lists them).

    Returns:
        ``Domain`` with ``x`` float32 (N, 3, 32, 32) in [0, 1] and ``y`` int64 (N,).
    """
    spec = domain_spec(name)
    if split not in spec.splits:
        raise ValueError(
            f"unknown split {split!r} for domain {name!r}; valid splits are: {', '.join(spec.splits)}"
        )
    if int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    opts = resolve_options(spec, options)
    key_opts = {k: v for k, v in opts.items() if k not in spec.uncached_options}
    fields = {"options": key_opts, "seed": seed if spec.uses_seed else None}
    if cache:  # an uncached builder needs no fingerprint (it may live in a notebook, outside any module file)
        fields["code"] = builder_code(spec)
    if spec.fingerprint is not None:
        fields["files"] = spec.fingerprint(opts)
    arrays = cached(name, split, fields, lambda: _build(spec, split, seed, opts), use_cache=cache)
    arrays = smoke_subset(arrays)
    x, y = to_tensors(arrays, device)
    info = {**arrays.info, "seed": seed if spec.uses_seed else None, "options": opts}
    return Domain(x=x, y=y, classes=list(arrays.classes), name=name, split=split, info=info)
