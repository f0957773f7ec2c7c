"""The source-model recipe: trained once, saved with its recipe, loaded (or rebuilt) by later chapters."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tlutils
from tlutils import source
from tlutils.models import save_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_recipe(monkeypatch):
    def recipe(cfg):
        return source.SourceRecipe(widths=(4, 4, 8, 8), num_classes=4, per_class=6, epochs=1, batch_size=8, lr=1e-3,
                                   seed=cfg.seed)

    monkeypatch.setattr(source, "source_recipe", recipe)
    return recipe


def test_load_source_model_builds_once_then_loads(tmp_data, tiny_recipe, capsys):
    cfg = tlutils.setup("quick", seed=0, device="cpu")
    model, meta = source.load_source_model(cfg)
    assert "pretraining it now" in capsys.readouterr().out
    path = source.checkpoint_path(cfg)
    assert path.exists() and path.parent == tmp_data / "checkpoints"
    assert meta["recipe"]["num_classes"] == 4 and len(meta["classes"]) == 4 and 0 <= meta["source_test_acc"] <= 1
    again, meta2 = source.load_source_model(cfg)
    assert "pretraining" not in capsys.readouterr().out
    assert meta2 == meta, "training returns the metadata loading returns (notebooks read meta['arch'])"
    assert meta["arch"] == "resnet_small" and not model.training
    # a corrupted checkpoint is reported, deleted and rebuilt, not trusted
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match=r"source checkpoint .* is invalid .*deleting and rebuilding"):
        rebuilt, _ = source.load_source_model(cfg)
    assert "pretraining it now" in capsys.readouterr().out
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key  # the same recipe trains the same weights
    # a readable checkpoint of another recipe under this name is not trusted either
    save_checkpoint(model, path, **{**meta, "recipe": {**meta["recipe"], "epochs": 9}})
    with pytest.warns(UserWarning, match="another recipe .differs in epochs"):
        source.load_source_model(cfg)
    with pytest.raises(FileNotFoundError, match="00_pretrain_source"):
        path.unlink()
        source.load_source_model(cfg, build_if_missing=False)


def test_pretrain_source_saves_what_load_source_model_loads(tmp_data, tiny_recipe, capsys):
    """Notebook 00's path: train step by step, save at ``checkpoint_path``; later chapters load it untrained."""
    cfg = tlutils.setup("quick", seed=0, device="cpu")
    model, _, meta = source.pretrain_source(cfg, tiny_recipe(cfg))
    assert source.checkpoint_path(cfg).exists()
    loaded, meta2 = source.load_source_model(cfg)
    assert "pretraining" not in capsys.readouterr().out and meta2["classes"] == meta["classes"]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_key_follows_the_recipe(tmp_data):
    quick = tlutils.setup("quick", seed=0, device="cpu")
    assert source.checkpoint_path(quick) != source.checkpoint_path(tlutils.setup("quick", seed=1, device="cpu"))
    assert source.checkpoint_path(quick) != source.checkpoint_path(tlutils.setup("full", seed=0, device="cpu"))
    recipe = source.source_recipe(quick)
    assert source.checkpoint_path(quick, recipe.replace(epochs=1)) != source.checkpoint_path(quick, recipe)
    assert source.checkpoint_path(quick, recipe).name.startswith("source-resnet_small-")


def test_source_recipe_per_profile():
    """The profile's sizes and the setup's seed (chapter 00's table of the recipe)."""
    quick, full = tlutils.setup("quick", seed=3, device="cpu"), tlutils.setup("full", seed=0, device="cpu")
    assert source.source_recipe(quick) == source.SourceRecipe(seed=3)  # the defaults are the quick profile's
    assert source.source_recipe(full).replace(seed=3) == source.SourceRecipe(
        widths=(64, 128, 256, 512), num_classes=600, per_class=200, epochs=30, batch_size=256, seed=3)
    assert source.SourceRecipe.for_profile(quick, epochs=1).epochs == 1


_CHILD = """
import json, sys, time
import tlutils
from tlutils.features import weights_fingerprint
from tlutils.source import load_source_model
cfg = tlutils.setup("full", seed=0, device="cpu")
start = time.time()
model, meta = load_source_model(cfg)
print("RESULT " + json.dumps({"start": start, "end": time.time(), "weights": weights_fingerprint(model)}))
"""


def test_two_concurrent_load_source_model_calls_train_once(tmp_path):
    """Two processes (two kernels) on an empty data dir: one trains, the other waits for it and loads."""
    env = {**os.environ, "TLUTILS_DATA": str(tmp_path / "data"), "TLUTILS_SMOKE": "1", "TLUTILS_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(out.count("pretraining it now") for out in outs) == 1, outs
    results = [json.loads(out.split("RESULT ")[1]) for out in outs]
    assert results[0]["weights"] == results[1]["weights"]
    first, second = sorted(results, key=lambda r: r["end"])
    assert second["start"] < first["end"], "the calls did not overlap, so this proved nothing"
    assert len(list((tmp_path / "data" / "checkpoints").glob("source-*.pt"))) == 1
