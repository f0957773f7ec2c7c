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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlutils.adapt import AdaptationRecipe, adabn, build_network, fit_recipe, recipe_for
from tlutils.cache import code_fingerprint, load_or_build
from tlutils.dan import train_dan
from tlutils.dann import DANN, train_dann
from tlutils.data import list_domains, load_domain, online_options
from tlutils.models import Classifier, load_weights, save_checkpoint, write_checkpoint
from tlutils.parallel import map_jobs, submit_jobs
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
    method: str, source, target_train, recipe: AdaptationRecipe, *, seed: int = 0, device=None,
    progress: bool | None = None,
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


SOURCE_SCORED = 1000
"""Source images (a fixed random subset of the labelled source) that ``source_acc`` is measured on and that re-estimate
the source BatchNorm statistics of ``source_model``. The source side is a sanity check (how well the network still
fits its labelled data); on all 4,000 images it cost more than scoring the target side."""


def _source_sample(source):
    if len(source) <= SOURCE_SCORED:
        return source
    return source.subset(torch.randperm(len(source), generator=torch.Generator().manual_seed(0))[:SOURCE_SCORED])


def _scored(method: str, seed: int, net: Classifier, history: History | None, seconds: float, source, target_train,
            target_test, device=None) -> RunResult:
    """``net`` scored on ``target_test`` and on ``SOURCE_SCORED`` of the ``source`` images (with each domain's
    BatchNorm statistics for ``PER_DOMAIN`` methods); ``seconds`` counts the scoring too."""
    start = time.perf_counter()
    source = _source_sample(source)
    on_target, on_source, running = net, net, None
    if method in PER_DOMAIN:
        on_target, on_source = adabn(net, target_train, device=device), adabn(net, source, device=device)
        running = evaluate(net, target_test, device=device)["acc"] if method not in DERIVED else None
    target_acc = evaluate(on_target, target_test, device=device)["acc"]
    source_acc = evaluate(on_source, source, device=device)["acc"]
    return RunResult(method, seed, target_acc, source_acc, net, history, seconds + time.perf_counter() - start,
                     on_target, on_source, running)


def run_method(method: str, source, target_train, target_test, recipe: AdaptationRecipe, seed: int, *, derived=(),
               device=None, progress: bool | None = None) -> list[RunResult]:
    """Train one method's network (:func:`train_method`) and score it, then score the ``derived`` methods that
    re-use it (``adabn`` of ``source_only``): one job of :func:`compare_pairs`, ``[run, *derived runs]``."""
    start = time.perf_counter()
    net, history = train_method(method, source, target_train, recipe, seed=seed, device=device, progress=progress)
    runs = [_scored(method, seed, net, history, time.perf_counter() - start, source, target_train, target_test,
                    device)]
    return runs + [_scored(m, seed, net, None, 0.0, source, target_train, target_test, device) for m in derived]


def _check_methods(methods) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    missing = [m for m in methods if m in DERIVED and DERIVED[m] not in methods]
    if missing:
        raise ValueError(f"{missing} re-use the network of {[DERIVED[m] for m in missing]}: list that method too")


def run_seed(
    source,
    target_train,
    target_test,
    recipe: AdaptationRecipe,
    seed: int,
    *,
    methods=("source_only", "adabn", "dann", "oracle"),
    device=None,
    progress: bool | None = None,
) -> list[RunResult]:
    """Every method of ``methods`` for one seed, in this process, scored on ``target_test`` (and on the source it
    was trained on).

    ``adabn`` re-uses the ``source_only`` network (list both); it costs one pass over the unlabelled target
    training images. ``source_acc`` is measured on ``SOURCE_SCORED`` of the ``source`` images (which the network was
    trained on).
    """
    _check_methods(methods)
    out: dict[str, RunResult] = {}
    for method in (m for m in methods if m not in DERIVED):
        derived = [m for m in methods if DERIVED.get(m) == method]
        for run in run_method(method, source, target_train, target_test, recipe, seed, derived=derived,
                              device=device, progress=progress):
            out[run.method] = run
    return [out[m] for m in methods]


COST = {"dann": 2.0, "dan": 2.0, "source_only": 1.0, "oracle": 1.0}
"""Relative training time of the trained methods (two domains per step cost about twice one): longest first."""


def _same_labelled_data(a, b) -> bool:
    """Whether two labelled datasets (Domains) hold the same images and labels (a pair's source may be another
    pair's target: ``mnist5k`` is the source of ``mnist5k → mnistm-lite`` and the target of ``syndigits → mnist5k``)."""
    return a is b or (a.x.shape == b.x.shape and a.num_classes == b.num_classes and torch.equal(a.x, b.x)
                      and torch.equal(a.y, b.y))


SUPERVISED = {"source_only": 0, "oracle": 1}
"""Methods trained on one labelled dataset only, and which of (source, target train) it is: the same training
on the same data and seed gives the same network, so :func:`compare_pairs` trains it once."""


def compare_pairs(
    data: dict[str, tuple], recipe: AdaptationRecipe, seeds, *, methods=("source_only", "adabn", "dann", "oracle"),
    device=None, workers: int | None = None, trained: dict | None = None,
) -> dict[str, list[RunResult]]:
    """``{pair name: runs}`` for ``data = {name: (source, target train, target test)}``: every trained method and
    seed of every pair is one job of :func:`tlutils.parallel.map_jobs` (worker processes on a multi-core CPU, one
    thread each; in this process on a GPU); a derived method (``adabn``) is scored in the job of its base network.
    A supervised run that another job already trains (the oracle of ``syndigits → mnist5k`` is the source-only
    network of ``mnist5k → mnistm-lite``: both train on labelled ``mnist5k`` with the same recipe and seed) is
    trained once and scored for both pairs. ``trained``: ``{(pair name, seed, method): (network, history)}`` of runs
    already trained exactly as :func:`train_method` trains them (with one thread on a CPU, :func:`one_thread`; a
    chapter's visible run): they are scored, not trained again. Runs come in the order ``for seed in seeds: for
    method in methods``, as :func:`run_seed` returns them. :func:`start_pairs` starts the same sweep in the
    background."""
    trained = dict(trained or {})
    return start_pairs(data, recipe, seeds, methods=methods, device=device, workers=workers,
                       leave_out=trained).result(trained)


def _derived(methods, m: str) -> list[str]:
    """The derived methods among ``methods`` scored on ``m``'s network (``adabn`` on ``source_only``'s)."""
    return [d for d in methods if DERIVED.get(d) == m]


class PendingPairs:
    """A :func:`compare_pairs` sweep started by :func:`start_pairs`; ``result(trained)`` completes it."""

    def __init__(self, data, recipe, seeds, methods, device, unique, same_as, leave_out, pending):
        self.data, self.recipe, self.seeds, self.methods, self.device = data, recipe, seeds, methods, device
        self.unique, self.same_as, self.leave_out, self.pending = unique, same_as, leave_out, pending

    def result(self, trained: dict | None = None) -> dict[str, list[RunResult]]:
        """``{pair name: runs}`` as :func:`compare_pairs` returns them; ``trained`` gives the networks of the runs
        left out when the sweep started (``{(pair name, seed, method): (network, history)}``)."""
        given = dict(trained or {})
        if set(given) != set(self.leave_out):
            raise ValueError(f"trained= gives {sorted(given)} but the sweep left out {sorted(self.leave_out)}: "
                             "pass the network and history of each run left out, and only those")
        done = {(name, s, run.method): run for (name, s, _), runs in
                zip(self.unique, self.pending.result(), strict=True) for run in runs}
        # networks not trained here (given, or shared with another run): scored for this run's pair
        reused = {**given, **{job: given[base] if base in given else (done[base].model, done[base].history)
                              for job, base in self.same_as.items()}}
        for (name, s, m), (net, history) in reused.items():
            for method in (m, *_derived(self.methods, m)):
                done[name, s, method] = _scored(method, s, net.eval(), history, 0.0, *self.data[name], self.device)
        return {name: [done[name, s, m] for s in self.seeds for m in self.methods] for name in self.data}


def start_pairs(
    data: dict[str, tuple], recipe: AdaptationRecipe, seeds, *, methods=("source_only", "adabn", "dann", "oracle"),
    device=None, workers: int | None = None, leave_out=(),
) -> PendingPairs:
    """Start :func:`compare_pairs`'s sweep in the worker processes and return at once, without the runs named in
    ``leave_out`` (``(pair name, seed, method)`` keys): the notebook trains such a run itself meanwhile (chapter 04's
    visible DANN run, while a core would otherwise idle) and hands it to ``.result(trained=...)``. With one worker
    (a GPU) the sweep runs when ``.result`` is called."""
    _check_methods(methods)
    seeds = list(seeds)
    leave_out = tuple(leave_out)
    wrong = [k for k in leave_out if k[0] not in data or k[1] not in seeds or k[2] not in methods or k[2] in DERIVED]
    if wrong:
        raise ValueError(f"trained= names runs this call does not make: {wrong}; keys are (pair name, seed, method) "
                         f"with a pair of {list(data)}, a seed of {seeds} and a trained method of {list(methods)}")
    runs_to_make = [(name, s, m) for name in data for s in seeds for m in methods if m not in DERIVED]
    runs_to_make.sort(key=lambda job: -COST.get(job[2], 1.0))
    same_as: dict[tuple, tuple] = {}  # a run -> the earlier run that trains the same network
    for i, (name, s, m) in enumerate(runs_to_make):
        if m not in SUPERVISED:
            continue
        for n2, s2, m2 in runs_to_make[:i]:
            if (s2 == s and m2 in SUPERVISED and (n2, s2, m2) not in same_as
                    and _same_labelled_data(data[name][SUPERVISED[m]], data[n2][SUPERVISED[m2]])):
                same_as[name, s, m] = (n2, s2, m2)
                break
    unique = [job for job in runs_to_make if job not in same_as and job not in leave_out]

    jobs = [dict(method=m, source=data[name][0], target_train=data[name][1], target_test=data[name][2],
                 recipe=recipe, seed=s, derived=_derived(methods, m), device=device, progress=False)
            for name, s, m in unique]
    pending = submit_jobs(run_method, jobs, workers=workers, device=device, desc="adaptation runs")
    return PendingPairs(data, recipe, seeds, tuple(methods), device, unique, same_as, leave_out, pending)


def compare_methods(
    source, target_train, target_test, recipe: AdaptationRecipe, seeds, *,
    methods=("source_only", "adabn", "dann", "oracle"), device=None, workers: int | None = None,
) -> list[RunResult]:
    """Every method and seed on one pair (:func:`compare_pairs`): the runs behind a results table."""
    return compare_pairs({"pair": (source, target_train, target_test)}, recipe, seeds, methods=methods,
                         device=device, workers=workers)["pair"]


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
CACHED = ("source_only", "dann", "dan", "oracle")
"""Trained methods that later chapters re-use: chapter 04 caches its source-only, DANN and oracle networks of both
offline pairs, chapter 05 adds DAN on ``PAIR`` and chapter 09 starts self-training from them."""


def run_key(recipe: AdaptationRecipe, source: str, target: str, seed: int) -> str:
    """:func:`tlutils.cache.cache_key` of everything that determines a trained network (recipe, domains, seed, and
    :func:`tlutils.cache.code_fingerprint` of this module: the methods, ``train``, ``models`` and the data code)."""
    return recipe.cache_key(source=source, target=target, seed=seed, code=code_fingerprint(__name__), length=12)


def _check_cached(methods) -> None:
    unknown = [m for m in methods if m not in CACHED]
    if unknown:
        raise ValueError(f"{unknown} are not cached; choose from {', '.join(CACHED)}")


def cache_paths(cfg, seed: int = 0, recipe: AdaptationRecipe | None = None, pair: tuple[str, str] = PAIR
                ) -> dict[str, Path]:
    """Checkpoint paths of the cached methods (``CACHED``) of ``pair`` (source, target domain names), one seed."""
    recipe = recipe or recipe_for(cfg)
    key = run_key(recipe, *pair, seed)
    folder = Path(cfg.data_dir) / "checkpoints"
    return {m: folder / f"adapt_{pair[0]}_to_{pair[1]}_{m}_seed{seed}_{key}.pt" for m in CACHED}


def _run_metadata(run: RunResult, recipe: AdaptationRecipe, pair: tuple[str, str]) -> dict:
    """What a cached network's checkpoint records beside its weights (``key``: checked when it is loaded)."""
    epochs = run.history.epochs if getattr(run, "history", None) is not None else []
    return dict(method=run.method, source=pair[0], target=pair[1], seed=run.seed, recipe=recipe.as_dict(),
                key=run_key(recipe, *pair, run.seed), target_acc=run.target_acc, history=epochs)


def save_runs(cfg, runs: list[RunResult], recipe: AdaptationRecipe | None = None, pair: tuple[str, str] = PAIR
              ) -> list[Path]:
    """Write the networks (and per-epoch logs) of the cached methods among ``runs`` (of ``pair``), atomically."""
    recipe = recipe or recipe_for(cfg)
    return [save_checkpoint(r.model, cache_paths(cfg, r.seed, recipe, pair)[r.method], **_run_metadata(r, recipe, pair))
            for r in runs if r.method in CACHED]


def save_run(cfg, method: str, seed: int, model: Classifier, history: History | None, target_acc: float,
             recipe: AdaptationRecipe | None = None, pair: tuple[str, str] = PAIR) -> Path:
    """Cache one network of ``pair`` trained outside :func:`cached_runs` (a chapter's visible run), so that
    ``cached_runs(cfg, seed, (method,))`` loads it instead of training it again.

    Only correct for a network trained exactly as :func:`train_method` trains ``method`` (``torch.manual_seed(seed)``
    before ``build_network(recipe, 10)``, the same ``seed`` passed to training, the data of ``load_pair(*pair)``);
    chapter 05's DAN run is.
    """
    _check_cached([method])
    recipe = recipe or recipe_for(cfg)
    run = RunResult(method, seed, target_acc, float("nan"), model, history, 0.0, model, model)
    return save_checkpoint(model, cache_paths(cfg, seed, recipe, pair)[method], **_run_metadata(run, recipe, pair))


def _load_run(path: Path, recipe: AdaptationRecipe, method: str, seed: int, pair: tuple[str, str]
              ) -> tuple[Classifier, History]:
    """The network and per-epoch history at ``path``, verified to be ``method``'s under ``recipe``, ``seed`` and
    ``pair`` (raises otherwise)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta, key = blob["metadata"], run_key(recipe, *pair, seed)
    if (meta.get("method"), meta.get("key")) != (method, key):
        raise ValueError(f"it holds {meta.get('method')!r} under key {meta.get('key')!r}, not {method!r} under {key!r}")
    model = build_network(recipe, 10)
    load_weights(model, blob["state_dict"])
    return model.eval(), History(epochs=list(meta.get("history", [])))


def cached_runs(
    cfg, seed: int = 0, methods=("source_only", "dann"), *, progress: bool | None = None,
    pair: tuple[str, str] = PAIR,
) -> dict[str, tuple[Classifier, History]]:
    """``{method: (network, per-epoch history)}`` for ``pair`` under ``cfg``'s recipe and ``seed``.

    Loaded from ``cfg.data_dir / "checkpoints"`` when chapter 04 or 05 (or an earlier call) left them there;
    the missing ones are trained now, one at a time (under a minute each on a CPU in the quick profile), and
    cached.
    """
    _check_cached(methods)
    recipe = recipe_for(cfg)
    paths = cache_paths(cfg, seed, recipe, pair)
    domains: list = []  # the domains, loaded by the first network that has to be trained

    def train(method: str) -> tuple[Classifier, History, RunResult]:
        if not domains:
            domains.extend(load_pair(*pair, device=cfg.device))
        ((run,),) = map_jobs(run_method, [dict(method=method, source=domains[0], target_train=domains[1],
                                               target_test=domains[2], recipe=recipe, seed=seed, device=cfg.device,
                                               progress=progress)],
                             device=cfg.device)  # one thread, as in compare_pairs: the same network either way
        return run.model.cpu().eval(), run.history, run

    def save(value, f) -> None:
        write_checkpoint(value[0], f, **_run_metadata(value[2], recipe, pair))

    out = {}
    for m in methods:
        value = load_or_build(paths[m], lambda m=m: train(m), load=lambda p, m=m: _load_run(p, recipe, m, seed, pair),
                              save=save, what="adaptation checkpoint")
        out[m] = value[:2]
    return out


def cached_seeds(cfg, seeds, methods=("source_only", "dann"), *, workers: int | None = None,
                 pair: tuple[str, str] = PAIR) -> dict[int, dict[str, tuple[Classifier, History]]]:
    """:func:`cached_runs` of ``pair`` for several seeds, ``{seed: {method: (network, history)}}``; the networks
    missing from the cache are first trained side by side (:func:`tlutils.parallel.map_jobs`) and cached."""
    return start_cached_seeds(cfg, seeds, methods, workers=workers, pair=pair).result()


class PendingSeeds:
    """:func:`cached_seeds` started by :func:`start_cached_seeds`; ``result()`` caches and returns the networks."""

    def __init__(self, cfg, seeds, methods, pair, recipe, missing, pending):
        self.cfg, self.seeds, self.methods, self.pair = cfg, seeds, methods, pair
        self.recipe, self.missing, self.pending = recipe, missing, pending

    def result(self) -> dict[int, dict[str, tuple[Classifier, History]]]:
        """``{seed: {method: (network, history)}}``, as :func:`cached_seeds` returns it."""
        if self.pending is not None:
            save_runs(self.cfg, [run for (run,) in self.pending.result()], self.recipe, self.pair)
            self.pending = None
        return {s: cached_runs(self.cfg, s, self.methods, pair=self.pair) for s in self.seeds}


def start_cached_seeds(cfg, seeds, methods=("source_only", "dann"), *, workers: int | None = None,
                       pair: tuple[str, str] = PAIR) -> PendingSeeds:
    """Start training :func:`cached_seeds`'s missing networks in the worker processes and return at once; the
    notebook trains something else meanwhile (chapter 05 its visible DAN run) and ``.result()`` caches and loads
    them. With one worker (a GPU) they train when ``.result()`` is called."""
    _check_cached(methods)
    seeds, recipe = list(seeds), recipe_for(cfg)
    missing = [(s, m) for s in seeds for m in methods if not cache_paths(cfg, s, recipe, pair)[m].exists()]
    pending = None
    if len(missing) > 1:
        source, target_train, target_test = load_pair(*pair, device=cfg.device)
        jobs = [dict(method=m, source=source, target_train=target_train, target_test=target_test, recipe=recipe,
                     seed=s, device=cfg.device, progress=False) for s, m in missing]
        pending = submit_jobs(run_method, jobs, workers=workers, device=cfg.device, desc="cached networks")
    return PendingSeeds(cfg, seeds, tuple(methods), pair, recipe, missing, pending)


__all__ = [
    "CACHED",
    "PendingPairs",
    "PendingSeeds",
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
    "cached_seeds",
    "load_pair",
    "compare_methods",
    "compare_pairs",
    "run_key",
    "run_method",
    "run_seed",
    "save_run",
    "save_runs",
    "start_cached_seeds",
    "start_pairs",
    "train_method",
]
