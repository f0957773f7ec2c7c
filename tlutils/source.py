"""Stage A of the recipe: the source backbone pretrained on glyphs, built once and cached.

Notebook 00 trains it step by step; every later chapter calls ``load_source_model(cfg)``, which
loads the checkpoint keyed by the recipe (profile, seed, sizes) and trains it if it is missing or
unreadable (the policy of :mod:`tlutils.cache`: a bad file is reported, deleted and rebuilt; two
processes that need it at once train it once). The recipe lives here, not in a notebook, so both
paths build the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tlutils.cache import cache_key, code_fingerprint, load_or_build
from tlutils.config import Setup
from tlutils.data import load_domain
from tlutils.models import (
    Classifier,
    build_model,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from tlutils.schedules import LRSchedule, one_cycle
from tlutils.train import History, evaluate, fit


def source_recipe(cfg: Setup) -> dict:
    """Sizes and hyper-parameters of source pretraining for the active profile (tiny at smoke scale)."""
    return {
        "domain": "glyphs",
        "alphabets": "background",
        "arch": "resnet_small",
        "widths": cfg.pick(quick=[24, 48, 96, 192], full=[64, 128, 256, 512], smoke=[8, 16, 32, 64]),
        "num_classes": cfg.pick(quick=300, full=600, smoke=20),
        "per_class": cfg.pick(quick=60, full=200, smoke=10),
        "epochs": cfg.pick(quick=6, full=30, smoke=2),
        "batch_size": cfg.pick(quick=128, full=256),
        "lr": 3e-3,
        "seed": cfg.seed,
    }


def source_code() -> str:
    """:func:`tlutils.cache.code_fingerprint` of this module: the code the source model is trained by (this module,
    ``train``, ``models``, ``data``...), part of its checkpoint's key."""
    return code_fingerprint(__name__)


def checkpoint_path(cfg: Setup, recipe: dict | None = None) -> Path:
    """``<data dir>/checkpoints/source-<arch>-<cache_key of the recipe and the code>.pt``."""
    recipe = recipe or source_recipe(cfg)
    key = cache_key({**recipe, "code": source_code()}, length=12)
    return cfg.data_dir / "checkpoints" / f"source-{recipe['arch']}-{key}.pt"


def load_source_data(cfg: Setup, recipe: dict | None = None):
    """The glyph source domain of the recipe: ``(train, test)`` Domains (different renders, same classes)."""
    recipe = recipe or source_recipe(cfg)
    opts = dict(alphabets=recipe["alphabets"], num_classes=recipe["num_classes"], per_class=recipe["per_class"])
    train = load_domain(recipe["domain"], "train", seed=recipe["seed"], **opts)
    test = load_domain(
        recipe["domain"], "test", seed=recipe["seed"], **{**opts, "per_class": max(10, recipe["per_class"] // 5)}
    )
    return train, test


def pretrain_schedule(p: float) -> float:
    """Learning-rate factor of pretraining at progress ``p``: 20 % warm-up from lr/25, cosine decay to lr/25e4."""
    return one_cycle(p, pct_start=0.2, div_factor=25.0, final_div_factor=25e4)


def pretrain_source(
    cfg: Setup, recipe: dict | None = None, data=None, progress: bool | None = None, *, save: bool = True
) -> tuple[Classifier, History, dict]:
    """Train the source model from scratch; save it at ``checkpoint_path`` (unless ``save=False``), replacing any
    file there; return ``(model on the CPU, history, metadata)``.

    One-cycle learning rate (:func:`pretrain_schedule`: warm-up then cosine decay) with AdamW: the
    schedule that reaches a good source accuracy in few epochs, which is what the quick profile needs.
    Introduced in chapter 00, section 3.
    """
    recipe = recipe or source_recipe(cfg)
    train, test = data or load_source_data(cfg, recipe)
    torch.manual_seed(recipe["seed"])
    model = build_model(recipe["arch"], train.num_classes, widths=tuple(recipe["widths"]))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=5e-4)
    history = fit(
        model,
        train,
        val=test,
        epochs=recipe["epochs"],
        optimizer=opt,
        callbacks=[LRSchedule(pretrain_schedule)],
        batch_size=recipe["batch_size"],
        device=cfg.device,
        progress=progress,
        desc="pretrain",
        seed=recipe["seed"],
    )
    metrics = evaluate(model, test, device=cfg.device)
    meta = {
        "recipe": recipe,
        "domain": recipe["domain"],
        "classes": list(train.classes),
        "profile": cfg.profile,
        "seed": cfg.seed,
        "source_test_acc": metrics["acc"],
        "history": history.epochs,
        "code": source_code(),
    }
    if save:
        save_checkpoint(model.cpu(), checkpoint_path(cfg, recipe), **meta)
    return model.cpu(), history, meta


def _load_source_checkpoint(path: Path, recipe: dict) -> tuple[Classifier, dict]:
    """``load_checkpoint(path)``, verified to hold the model of ``recipe`` (raises ValueError otherwise)."""
    model, meta = load_checkpoint(path)
    stored, expected = meta.get("recipe") or {}, json.loads(json.dumps(recipe))  # as stored: plain JSON types
    differ = sorted(k for k in {*stored, *expected} if stored.get(k) != expected.get(k))
    if differ:
        raise ValueError(f"it was trained with another recipe (differs in {', '.join(differ)})")
    if meta.get("code") != source_code():
        raise ValueError(f"it was trained by other code (fingerprint {meta.get('code')!r}, now {source_code()!r})")
    return model, meta


def load_source_model(cfg: Setup, build_if_missing: bool = True) -> tuple[Classifier, dict]:
    """The pretrained source model of the active profile: loaded from the data dir, or trained now (and saved).

    A bad checkpoint is reported, deleted and retrained; two processes that both miss it train it once
    (the second waits, then loads). ``build_if_missing=False``: FileNotFoundError instead of training.
    """
    recipe = source_recipe(cfg)
    path = checkpoint_path(cfg, recipe)

    def build() -> tuple[Classifier, dict]:
        if not build_if_missing:
            raise FileNotFoundError(
                f"no source checkpoint at {path}; run notebooks/00_pretrain_source.ipynb "
                "or call load_source_model(cfg, build_if_missing=True)"
            )
        print(f"source checkpoint {path.name} not found: pretraining it now (notebook 00's recipe)")
        model, _, meta = pretrain_source(cfg, recipe, save=False)
        return model.eval(), checkpoint_metadata(model, **meta)  # what loading the saved file returns

    return load_or_build(
        path,
        build,
        load=lambda p: _load_source_checkpoint(p, recipe),
        save=lambda value, f: write_checkpoint(value[0], f, **value[1]),
        what="source checkpoint",
    )
