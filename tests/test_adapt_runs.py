"""Unit tests of tlutils.adapt_runs: methods over seeds on tiny data, and the cache of trained networks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tlutils.adapt import Recipe
from tlutils.adapt_runs import METHODS, by_method, cache_paths, cached_runs, run_seed, save_runs
from tlutils.data.domain import Domain
from tlutils.models import ganin_cnn
from tlutils.train import History


def _domain(seed: int, shift: float = 0.0, n: int = 48) -> Domain:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.2 + y.view(-1, 1, 1, 1) * 0.2 + shift
    return Domain(x=x.clamp(0, 1), y=y, classes=["a", "b", "c"], name=f"toy{seed}", split="train")


def test_run_seed_trains_each_method_and_derives_adabn():
    source, target, test = _domain(0), _domain(1, 0.5), _domain(2, 0.5)
    recipe = Recipe(steps=6, batch_size=8, domain_hidden=(8,))
    runs = run_seed(source, target, test, recipe, seed=0, methods=METHODS)
    assert [r.method for r in runs] == list(METHODS)
    by = {r.method: r for r in runs}
    assert by["adabn"].model is by["source_only"].model  # same weights, only the statistics change
    assert by["adabn"].target_model is not by["source_only"].target_model
    assert by["dann"].running_acc is not None and by["source_only"].running_acc is None
    assert all(0.0 <= r.target_acc <= 1.0 and 0.0 <= r.source_acc <= 1.0 for r in runs)
    assert set(by_method(runs)) == set(METHODS)
    with pytest.raises(ValueError, match="source_only"):
        run_seed(source, target, test, recipe, seed=0, methods=("adabn",))
    with pytest.raises(ValueError, match="unknown"):
        run_seed(source, target, test, recipe, seed=0, methods=("dann_plus",))


def test_cache_paths_key_on_recipe_and_seed(tmp_path):
    cfg = SimpleNamespace(data_dir=tmp_path, pick=lambda quick, full, **_: quick, device="cpu")
    a = cache_paths(cfg, seed=0)
    assert a["dann"].parent == tmp_path / "checkpoints" and a["dann"] != a["source_only"]
    assert cache_paths(cfg, seed=1)["dann"] != a["dann"]
    assert cache_paths(cfg, seed=0, recipe=Recipe(steps=7))["dann"] != a["dann"]


def test_cached_runs_load_what_was_saved_and_retrain_a_bad_file(tmp_path, monkeypatch):
    cfg = SimpleNamespace(data_dir=tmp_path, pick=lambda quick, full, **_: quick, device="cpu")
    nets = {m: ganin_cnn(10, batch_norm=True).eval() for m in ("source_only", "dann")}
    history = History(epochs=[{"epoch": 1, "train_loss": 0.5}])
    runs = [SimpleNamespace(method=m, seed=0, model=n, target_acc=0.5, history=history) for m, n in nets.items()]
    save_runs(cfg, runs)
    loaded = cached_runs(cfg, seed=0)
    for method, net in nets.items():
        model, hist = loaded[method]
        assert hist.epochs == history.epochs
        for key, value in net.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (method, key)
    cache_paths(cfg, seed=0)["dann"].write_bytes(b"not a checkpoint")
    asked = []
    monkeypatch.setattr("tlutils.adapt_runs.run_seed", lambda *a, methods, **k: asked.append(methods) or runs[1:])
    monkeypatch.setattr("tlutils.adapt_runs.load_pair", lambda *a, **k: (None, None, None))
    with pytest.warns(UserWarning, match=r"adaptation checkpoint .*dann.* is invalid .*deleting and rebuilding"):
        again = cached_runs(cfg, seed=0)
    assert asked == [["dann"]], "only the unreadable network is retrained"
    assert set(again) == {"source_only", "dann"} and again["dann"][0] is nets["dann"]
    model, _ = cached_runs(cfg, seed=0, methods=("dann",))["dann"]  # the retrained network was saved
    assert all(torch.equal(model.state_dict()[k], v) for k, v in nets["dann"].state_dict().items())
    # a readable checkpoint of another method under this name is not trusted either
    paths = cache_paths(cfg, seed=0)
    paths["dann"].write_bytes(paths["source_only"].read_bytes())
    with pytest.warns(UserWarning, match="'source_only' under key"):
        cached_runs(cfg, seed=0, methods=("dann",))
    assert asked == [["dann"], ["dann"]]
    with pytest.raises(ValueError, match="not cached"):
        cached_runs(cfg, seed=0, methods=("oracle",))


def test_save_run_caches_a_visible_run_so_cached_runs_does_not_train_it_again(tmp_path, monkeypatch):
    from tlutils.adapt_runs import save_run

    cfg = SimpleNamespace(data_dir=tmp_path, pick=lambda quick, full, **_: quick, device="cpu")
    net = ganin_cnn(10, batch_norm=True).eval()
    history = History(epochs=[{"epoch": 1, "train_mmd": 0.1}])
    assert save_run(cfg, "dan", 3, net, history, 0.7) == cache_paths(cfg, seed=3)["dan"]
    monkeypatch.setattr("tlutils.adapt_runs.run_seed", lambda *a, **k: pytest.fail("should load, not train"))
    model, hist = cached_runs(cfg, seed=3, methods=("dan",))["dan"]
    assert hist.epochs == history.epochs
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="not cached"):
        save_run(cfg, "oracle", 3, net, history, 0.7)
