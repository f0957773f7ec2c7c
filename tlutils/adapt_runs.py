"""Chapters 04-05's experiments: every adaptation method on a domain pair, over seeds, and their cache.

The methods (``METHODS``) share ``tlutils.adapt``'s recipe and differ only in the adaptation term:

- ``source_only``: trained on labelled source images only (the baseline every gain is measured from);
- ``adabn``: the source-only network with its BatchNorm statistics re-estimated on target images;
- ``dann``: domain-adversarial training (``tlutils.dann``);
- ``dan``: the MMD penalty of Long et al. 2015 (``tlutils.mmd``);
- ``oracle``: trained on *labelled* target images (the ceiling; uses the labels the others never see).

DANN and DAN forward each domain separately during training, so each is normalised by its own BatchNorm
statistics; they are tested the same way (``PER_DOMAIN``): target images with target statistics, source
images with source statistics (both estimated with ``adabn`` on unlabelled training images). Their accuracy
with the running statistics left by training (a mix of both domains) is kept as ``running_acc``.

Trained networks of one pair can be cached in ``cfg.data_dir / "checkpoints"`` (chapter 04 writes them,
chapter 05 reads them) under a key of everything that determines them, with the policy of
:mod:`tlutils.cache` (verified on load, a bad file reported and retrained, atomic writes, trained once by
concurrent processes).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tlutils.adapt import Recipe, adabn, build_network, fit_recipe, recipe_for
from tlutils.cache import cache_key, code_fingerprint, load_or_build
from tlutils.dan import train_dan
from tlutils.dann import DANN, train_dann
from tlutils.data import list_domains, load_domain, online_options
from tlutils.models import Classifier, load_weights, save_checkpoint, write_checkpoint
from tlutils.train import History, evaluate

METHODS = ("source_only", "adabn", "dann", "dan", "oracle")
DERIVED = {"adabn": "source_only"}
"""Methods that re-use another method's trained network (only its BatchNorm statistics change)."""
PER_DOMAIN = ("adabn", "dann", "dan")
"""Methods tested with each domain's own BatchNorm statistics."""


@dataclass
class RunResult:
    """One trained (or derived) model of an experiment: method, seed, accuracies, networks, history, time.

    ``model`` is the network as trained; ``target_model`` / ``source_model`` are what is applied to target /
    source images (copies with that domain's BatchNorm statistics for ``PER_DOMAIN`` methods, else ``model``).
    """

    method: str
    seed: int
    target_acc: float
    source_acc: float
    model: Classifier
    history: History | None
    seconds: float
    target_model: nn.Module
    source_model: nn.Module
    running_acc: float | None = None


def train_method(
    method: str, source, target_train, recipe: Recipe, *, seed: int = 0, device=None, progress: bool | None = None
) -> tuple[Classifier, History]:
    """Train one method's network from scratch (``torch.manual_seed(seed)`` before building it)."""
    torch.manual_seed(seed)
    net = build_network(recipe, source.num_classes)
    kw = dict(seed=seed, device=device, progress=progress)
    if method == "dann":
        history = train_dann(DANN(net, hidden=recipe.domain_hidden), source, target_train, recipe, **kw)
    elif method == "dan":
        history = train_dan(net, source, target_train, recipe, weight=recipe.lambda_max, **kw)
    elif method in ("source_only", "oracle"):
        train = source if method == "source_only" else target_train
        history = fit_recipe(net, train, recipe, desc=method, **kw)
    else:
        raise ValueError(f"{method!r} is not a trained method; choose one of source_only, dann, dan, oracle")
    return net.eval(), history


def run_seed(
    source,
    target_train,
    target_test,
    recipe: Recipe,
    seed: int,
    *,
    methods=("source_only", "adabn", "dann", "oracle"),
    device=None,
    progress: bool | None = None,
) -> list[RunResult]:
    """Every method of ``methods`` for one seed, scored on ``target_test`` (and on the source it was trained on).

    ``adabn`` re-uses the ``source_only`` network (list both); it costs one pass over the unlabelled target
    training images. ``source_acc`` is measured on ``source`` (the images the source model was trained on).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    missing = [m for m in methods if m in DERIVED and DERIVED[m] not in methods]
    if missing:
        raise ValueError(f"{missing} re-use the network of {[DERIVED[m] for m in missing]}: list that method too")
    out: dict[str, RunResult] = {}
    for method in sorted(methods, key=lambda m: m in DERIVED):  # trained methods first
        start = time.perf_counter()
        if method in DERIVED:
            net, history = out[DERIVED[method]].model, None
        else:
            net, history = train_method(method, source, target_train, recipe, seed=seed, device=device,
                                        progress=progress)
        on_target, on_source, running = net, net, None
        if method in PER_DOMAIN:
            on_target, on_source = adabn(net, target_train, device=device), adabn(net, source, device=device)
            running = evaluate(net, target_test, device=device)["acc"] if method != "adabn" else None
        seconds = time.perf_counter() - start
        out[method] = RunResult(method, seed, evaluate(on_target, target_test, device=device)["acc"],
                                evaluate(on_source, source, device=device)["acc"], net, history, seconds,
                                on_target, on_source, running)
    return [out[m] for m in methods]


def compare_methods(
    source, target_train, target_test, recipe: Recipe, seeds, *, methods=("source_only", "adabn", "dann", "oracle"),
    device=None,
    progress: bool | None = None,
) -> list[RunResult]:
    """:func:`run_seed` for every seed: the runs behind a results table."""
    return [r for s in seeds for r in run_seed(source, target_train, target_test, recipe, s, methods=methods,
                                               device=device, progress=progress)]


def by_method(runs: list[RunResult], field: str = "target_acc") -> dict[str, list[float]]:
    """``{method: [value per seed]}`` of one field of the runs, in the runs' order."""
    out: dict[str, list[float]] = {}
    for r in runs:
        out.setdefault(r.method, []).append(float(getattr(r, field)))
    return out


OFFLINE_PAIRS = {
    "mnist5k → mnistm-lite": ("mnist5k", "mnistm-lite"),
    "syndigits → mnist5k": ("syndigits", "mnist5k"),
}
ONLINE_PAIRS = {"mnist → mnistm": ("mnist", "mnistm"), "svhn → mnist": ("svhn", "mnist")}
"""The paper's real pairs, run by the full profile when their files are present (MNIST-M needs BSDS500)."""


def load_pair(
    source: str, target: str, *, seed: int = 0, device=None, download: bool = False, verify: bool = True
) -> tuple:
    """(labelled source train, unlabelled target train, target test) of a domain pair; ``download``/``verify``
    reach the online domains only (``cfg.download``, ``cfg.verify``)."""
    parts = ((source, "train"), (target, "train"), (target, "test"))
    return tuple(load_domain(d, split, seed=seed, device=device, **online_options(d, download=download, verify=verify))
                 for d, split in parts)


def available_pairs(cfg) -> dict[str, tuple[str, str]]:
    """Chapter 04's (source, target) pairs: the offline ones, plus in the full profile the paper's real pairs
    whose files are present or can be downloaded (``cfg.download``); a skipped pair is reported with the reason."""
    pairs = dict(OFFLINE_PAIRS)
    if cfg.profile != "full":
        return pairs
    for name, domains in ONLINE_PAIRS.items():
        missing = [d for d in domains if d not in list_domains()]
        if missing:
            print(f"skipping {name}: no domain {', '.join(missing)} in tlutils.data")
            continue
        try:
            for d in domains:
                load_domain(d, "test", **online_options(d, download=cfg.download, verify=cfg.verify))
        except (FileNotFoundError, RuntimeError, OSError) as exc:
            print(f"skipping {name}: {exc}")
            continue
        pairs[name] = domains
    return pairs


# ----------------------------------------------------------------------------- cache of trained networks

PAIR = ("mnist5k", "mnistm-lite")
CACHED = ("source_only", "dann", "dan")
"""Trained methods of ``PAIR`` that chapter 05 re-uses (chapter 04 trains the first two, chapter 05 the third)."""


def run_key(recipe: Recipe, source: str, target: str, seed: int) -> str:
    """:func:`tlutils.cache.cache_key` of everything that determines a trained network (recipe, domains, seed, and
    :func:`tlutils.cache.code_fingerprint` of this module: the methods, ``train``, ``models`` and the data code)."""
    return cache_key({"recipe": asdict(recipe), "source": source, "target": target, "seed": seed,
                      "code": code_fingerprint(__name__)}, length=12)


def cache_paths(cfg, seed: int = 0, recipe: Recipe | None = None) -> dict[str, Path]:
    """Checkpoint paths of the cached methods (``CACHED``) of ``PAIR`` for one seed."""
    recipe = recipe or recipe_for(cfg)
    key = run_key(recipe, *PAIR, seed)
    folder = Path(cfg.data_dir) / "checkpoints"
    return {m: folder / f"adapt_{PAIR[0]}_to_{PAIR[1]}_{m}_seed{seed}_{key}.pt" for m in CACHED}


def _run_metadata(run: RunResult, recipe: Recipe) -> dict:
    """What a cached network's checkpoint records beside its weights (``key``: checked when it is loaded)."""
    epochs = run.history.epochs if getattr(run, "history", None) is not None else []
    return dict(method=run.method, source=PAIR[0], target=PAIR[1], seed=run.seed, recipe=asdict(recipe),
                key=run_key(recipe, *PAIR, run.seed), target_acc=run.target_acc, history=epochs)


def save_runs(cfg, runs: list[RunResult], recipe: Recipe | None = None) -> list[Path]:
    """Write the networks (and per-epoch logs) of the cached methods among ``runs`` (of ``PAIR``), atomically."""
    recipe = recipe or recipe_for(cfg)
    return [save_checkpoint(r.model, cache_paths(cfg, r.seed, recipe)[r.method], **_run_metadata(r, recipe))
            for r in runs if r.method in CACHED]


def save_run(cfg, method: str, seed: int, model: Classifier, history: History | None, target_acc: float,
             recipe: Recipe | None = None) -> Path:
    """Cache one network of ``PAIR`` trained outside :func:`cached_runs` (a chapter's visible run), so that
    ``cached_runs(cfg, seed, (method,))`` loads it instead of training it again.

    Only correct for a network trained exactly as :func:`train_method` trains ``method`` (``torch.manual_seed(seed)``
    before ``build_network(recipe, 10)``, the same ``seed`` passed to training, the data of ``load_pair(*PAIR)``);
    chapter 05's DAN run is.
    """
    if method not in CACHED:
        raise ValueError(f"{method!r} is not cached; choose from {', '.join(CACHED)}")
    recipe = recipe or recipe_for(cfg)
    run = RunResult(method, seed, target_acc, float("nan"), model, history, 0.0, model, model)
    return save_checkpoint(model, cache_paths(cfg, seed, recipe)[method], **_run_metadata(run, recipe))


def _load_run(path: Path, recipe: Recipe, method: str, seed: int) -> tuple[Classifier, History]:
    """The network and per-epoch history at ``path``, verified to be ``method``'s under ``recipe`` and ``seed``
    (raises otherwise)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta, key = blob["metadata"], run_key(recipe, *PAIR, seed)
    if (meta.get("method"), meta.get("key")) != (method, key):
        raise ValueError(f"it holds {meta.get('method')!r} under key {meta.get('key')!r}, not {method!r} under {key!r}")
    model = build_network(recipe, 10)
    load_weights(model, blob["state_dict"])
    return model.eval(), History(epochs=list(meta.get("history", [])))


def cached_runs(
    cfg, seed: int = 0, methods=("source_only", "dann"), *, progress: bool | None = None
) -> dict[str, tuple[Classifier, History]]:
    """``{method: (network, per-epoch history)}`` for ``PAIR`` under ``cfg``'s recipe and ``seed``.

    Loaded from ``cfg.data_dir / "checkpoints"`` when chapter 04 or 05 (or an earlier call) left them there;
    the missing ones are trained now, one at a time (under a minute each on a CPU in the quick profile), and
    cached.
    """
    unknown = [m for m in methods if m not in CACHED]
    if unknown:
        raise ValueError(f"{unknown} are not cached; choose from {', '.join(CACHED)}")
    recipe = recipe_for(cfg)
    paths = cache_paths(cfg, seed, recipe)
    pair: list = []  # the domains, loaded by the first network that has to be trained

    def train(method: str) -> tuple[Classifier, History, RunResult]:
        if not pair:
            pair.extend(load_pair(*PAIR, device=cfg.device))
        (run,) = run_seed(*pair, recipe, seed, methods=[method], device=cfg.device, progress=progress)
        return run.model.cpu().eval(), run.history, run

    def save(value, f) -> None:
        write_checkpoint(value[0], f, **_run_metadata(value[2], recipe))

    out = {}
    for m in methods:
        value = load_or_build(paths[m], lambda m=m: train(m), load=lambda p, m=m: _load_run(p, recipe, m, seed),
                              save=save, what="adaptation checkpoint")
        out[m] = value[:2]
    return out


__all__ = [
    "CACHED",
    "DERIVED",
    "METHODS",
    "OFFLINE_PAIRS",
    "ONLINE_PAIRS",
    "PAIR",
    "PER_DOMAIN",
    "RunResult",
    "available_pairs",
    "by_method",
    "cache_paths",
    "cached_runs",
    "load_pair",
    "compare_methods",
    "run_key",
    "run_seed",
    "save_run",
    "save_runs",
    "train_method",
]
