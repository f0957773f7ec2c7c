"""The source-model recipe: trained once, saved with its recipe, loaded (or rebuilt) by later chapters."""

import pytest

import tlutils
from tlutils import source


@pytest.fixture
def tiny_recipe(monkeypatch):
    def recipe(cfg):
        return {"version": 0, "domain": "glyphs", "alphabets": "background", "arch": "resnet_small",
                "widths": [4, 4, 8, 8], "num_classes": 4, "per_class": 6, "epochs": 1, "batch_size": 8,
                "lr": 1e-3, "seed": cfg.seed}

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
    assert meta2["classes"] == meta["classes"]
    # a corrupted checkpoint is rebuilt, not trusted
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="retraining"):
        source.load_source_model(cfg)
    with pytest.raises(FileNotFoundError, match="00_pretrain_source"):
        path.unlink()
        source.load_source_model(cfg, build_if_missing=False)


def test_checkpoint_key_follows_the_recipe(tmp_data):
    quick = tlutils.setup("quick", seed=0, device="cpu")
    assert source.checkpoint_path(quick) != source.checkpoint_path(tlutils.setup("quick", seed=1, device="cpu"))
    assert source.checkpoint_path(quick) != source.checkpoint_path(tlutils.setup("full", seed=0, device="cpu"))
