"""Unit tests of tlutils.adapt_runs: methods over seeds on tiny data, and the cache of trained networks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tlutils.adapt import AdaptationRecipe
from tlutils.adapt_runs import (
    METHODS,
    by_method,
    cache_paths,
    cached_runs,
    compare_methods,
    compare_pairs,
    run_seed,
    save_runs,
)
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
    recipe = AdaptationRecipe(steps=6, batch_size=8, domain_hidden=(8,))
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
    assert cache_paths(cfg, seed=0, recipe=AdaptationRecipe(steps=7))["dann"] != a["dann"]


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
    monkeypatch.setattr("tlutils.adapt_runs.run_method", lambda method, *a, **k: asked.append(method) or [runs[1]])
    monkeypatch.setattr("tlutils.adapt_runs.load_pair", lambda *a, **k: (None, None, None))
    with pytest.warns(UserWarning, match=r"adaptation checkpoint .*dann.* is invalid .*deleting and rebuilding"):
        again = cached_runs(cfg, seed=0)
    assert asked == ["dann"], "only the unreadable network is retrained"
    assert set(again) == {"source_only", "dann"} and again["dann"][0] is nets["dann"]
    model, _ = cached_runs(cfg, seed=0, methods=("dann",))["dann"]  # the retrained network was saved
    assert all(torch.equal(model.state_dict()[k], v) for k, v in nets["dann"].state_dict().items())
    # a readable checkpoint of another method under this name is not trusted either
    paths = cache_paths(cfg, seed=0)
    paths["dann"].write_bytes(paths["source_only"].read_bytes())
    with pytest.warns(UserWarning, match="'source_only' under key"):
        cached_runs(cfg, seed=0, methods=("dann",))
    assert asked == ["dann", "dann"]
    with pytest.raises(ValueError, match="not cached"):
        cached_runs(cfg, seed=0, methods=("adabn",))


def test_save_run_caches_a_visible_run_so_cached_runs_does_not_train_it_again(tmp_path, monkeypatch):
    from tlutils.adapt_runs import save_run

    cfg = SimpleNamespace(data_dir=tmp_path, pick=lambda quick, full, **_: quick, device="cpu")
    net = ganin_cnn(10, batch_norm=True).eval()
    history = History(epochs=[{"epoch": 1, "train_mmd": 0.1}])
    assert save_run(cfg, "dan", 3, net, history, 0.7) == cache_paths(cfg, seed=3)["dan"]
    monkeypatch.setattr("tlutils.adapt_runs.run_method", lambda *a, **k: pytest.fail("should load, not train"))
    model, hist = cached_runs(cfg, seed=3, methods=("dan",))["dan"]
    assert hist.epochs == history.epochs
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="not cached"):
        save_run(cfg, "adabn", 3, net, history, 0.7)


def test_compare_pairs_in_two_workers_equals_one_process_and_keeps_the_order():
    data = {"p": (_domain(0), _domain(1, 0.5), _domain(2, 0.5)), "q": (_domain(3), _domain(4, 0.3), _domain(5, 0.3))}
    recipe = AdaptationRecipe(steps=4, batch_size=8, domain_hidden=(8,))
    methods = ("source_only", "adabn", "dann")
    here = compare_pairs(data, recipe, [0, 1], methods=methods, workers=1)
    spawned = compare_pairs(data, recipe, [0, 1], methods=methods, workers=2)
    for name in data:
        assert [(r.method, r.seed) for r in here[name]] == [(m, s) for s in (0, 1) for m in methods]
        for a, b in zip(here[name], spawned[name], strict=True):
            assert (a.method, a.seed, a.target_acc, a.source_acc) == (b.method, b.seed, b.target_acc, b.source_acc)
            for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
                assert torch.equal(v, w), (name, a.method, a.seed, k)
        by = {(r.method, r.seed): r for r in spawned[name]}
        assert by["adabn", 0].model is by["source_only", 0].model  # derived in the job of its base network
    assert [r.target_acc for r in compare_methods(*data["p"], recipe, [0, 1], methods=methods, workers=1)] == [
        r.target_acc for r in here["p"]]


def test_cached_seeds_trains_only_the_missing_networks_together_then_loads_them(tmp_path, monkeypatch):
    from tlutils.adapt_runs import cached_seeds

    cfg = SimpleNamespace(data_dir=tmp_path, pick=lambda quick, full, **_: quick, device="cpu")
    history = History(epochs=[{"epoch": 1, "train_loss": 0.5}])
    stored = SimpleNamespace(method="source_only", seed=0, model=ganin_cnn(10, batch_norm=True).eval(),
                             target_acc=0.5, history=history)
    save_runs(cfg, [stored])
    trained = []

    def fake_submit_jobs(fn, jobs, **kwargs):
        trained.extend((job["method"], job["seed"]) for job in jobs)
        runs = [[SimpleNamespace(method=job["method"], seed=job["seed"], model=ganin_cnn(10, batch_norm=True).eval(),
                                 target_acc=0.5, history=history)] for job in jobs]
        return SimpleNamespace(result=lambda: runs)

    monkeypatch.setattr("tlutils.adapt_runs.submit_jobs", fake_submit_jobs)
    monkeypatch.setattr("tlutils.adapt_runs.load_pair", lambda *a, **k: (None, None, None))
    nets = cached_seeds(cfg, [0, 1], methods=("source_only", "dann"))
    assert sorted(trained) == [("dann", 0), ("dann", 1), ("source_only", 1)], "only the missing three, in one call"
    assert set(nets) == {0, 1} and all(set(v) == {"source_only", "dann"} for v in nets.values())
    assert all(torch.equal(a, b) for a, b in zip(nets[0]["source_only"][0].state_dict().values(),
                                                  stored.model.state_dict().values(), strict=True))
    trained.clear()
    cached_seeds(cfg, [0, 1], methods=("source_only", "dann"))
    assert trained == [], "all cached now"
    with pytest.raises(ValueError, match="not cached"):
        cached_seeds(cfg, [0], methods=("adabn",))


def test_compare_pairs_trains_a_shared_supervised_network_once_and_scores_it_for_both_pairs(monkeypatch):
    import tlutils.adapt_runs as ar

    labelled = _domain(1, 0.5)
    # q's target is p's target: q's oracle is p's oracle; r's target is p's source: r's oracle is p's source-only
    data = {"p": (_domain(0), labelled, _domain(2, 0.5)),
            "q": (_domain(3), _domain(1, 0.5), _domain(2, 0.5)),
            "r": (_domain(4, 0.3), _domain(0), _domain(5))}
    recipe = AdaptationRecipe(steps=4, batch_size=8, domain_hidden=(8,))
    real_submit_jobs, trained = ar.submit_jobs, []

    def counting_submit_jobs(fn, jobs, **kwargs):
        trained.extend((job["method"], job["seed"], job["source"].name) for job in jobs)
        return real_submit_jobs(fn, jobs, **kwargs)

    monkeypatch.setattr(ar, "submit_jobs", counting_submit_jobs)
    runs = compare_pairs(data, recipe, [0], methods=("source_only", "adabn", "oracle"), workers=1)
    assert sorted(trained) == sorted([("source_only", 0, "toy0"), ("source_only", 0, "toy3"),
                                      ("source_only", 0, "toy4"), ("oracle", 0, "toy0")])
    by = {name: {r.method: r for r in rs} for name, rs in runs.items()}
    assert by["q"]["oracle"].model is by["p"]["oracle"].model
    assert by["r"]["oracle"].model is by["p"]["source_only"].model
    assert by["r"]["oracle"].target_acc == ar.evaluate(by["p"]["source_only"].model, data["r"][2])["acc"]
    separate = compare_pairs({"r": data["r"]}, recipe, [0], methods=("source_only", "oracle"), workers=1)["r"]
    assert separate[1].target_acc == by["r"]["oracle"].target_acc  # the same number as training it again
    for v, w in zip(separate[1].model.state_dict().values(), by["r"]["oracle"].model.state_dict().values(),
                    strict=True):
        assert torch.equal(v, w)


def test_cache_is_per_pair(tmp_path):
    from tlutils.adapt_runs import cached_seeds

    cfg = SimpleNamespace(data_dir=tmp_path, pick=lambda quick, full, **_: quick, device="cpu")
    net = ganin_cnn(10, batch_norm=True).eval()
    stored = SimpleNamespace(method="source_only", seed=0, model=net, target_acc=0.5, history=None)
    syn = ("syndigits", "mnist5k")
    (path,) = save_runs(cfg, [stored], pair=syn)
    assert path == cache_paths(cfg, 0, pair=syn)["source_only"] != cache_paths(cfg, 0)["source_only"]
    assert "syndigits_to_mnist5k" in path.name
    loaded, _ = cached_seeds(cfg, [0], methods=("source_only",), pair=syn)[0]["source_only"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values(), strict=True))


def test_a_run_trained_with_one_thread_in_the_notebook_is_the_sweeps_run():
    from tlutils.adapt_runs import train_method
    from tlutils.parallel import one_thread

    data = {"p": (_domain(0), _domain(1, 0.5), _domain(2, 0.5))}
    recipe = AdaptationRecipe(steps=4, batch_size=8, domain_hidden=(8,))
    with one_thread():
        net, history = train_method("dann", *data["p"][:2], recipe, seed=1)
    given = compare_pairs(data, recipe, [0, 1], methods=("source_only", "dann"), workers=2,
                          trained={("p", 1, "dann"): (net, history)})["p"]
    swept = compare_pairs(data, recipe, [0, 1], methods=("source_only", "dann"), workers=2)["p"]
    assert given[3].model is net and given[3].history is history
    for a, b in zip(given, swept, strict=True):
        assert (a.method, a.seed, a.target_acc, a.source_acc) == (b.method, b.seed, b.target_acc, b.source_acc)
        for v, w in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
            assert torch.equal(v, w), (a.method, a.seed)
    with pytest.raises(ValueError, match="trained= names runs"):
        compare_pairs(data, recipe, [0], methods=("source_only", "adabn"), trained={("p", 0, "adabn"): (net, None)})


def test_a_sweep_started_in_the_background_while_the_notebook_trains_its_run_equals_compare_pairs():
    """Chapter 04 starts its sweep (``start_pairs``) before its visible run and hands that run over afterwards."""
    from tlutils.adapt_runs import start_pairs, train_method
    from tlutils.parallel import one_thread

    data = {"p": (_domain(0), _domain(1, 0.5), _domain(2, 0.5))}
    recipe = AdaptationRecipe(steps=4, batch_size=8, domain_hidden=(8,))
    methods = ("source_only", "adabn", "dann")
    sweep = start_pairs(data, recipe, [0, 1], methods=methods, workers=2, leave_out=[("p", 0, "dann")])
    with one_thread():  # meanwhile, in this process
        net, history = train_method("dann", *data["p"][:2], recipe, seed=0)
    with pytest.raises(ValueError, match="the sweep left out"):
        sweep.result(trained={})
    started = sweep.result(trained={("p", 0, "dann"): (net, history)})["p"]
    plain = compare_pairs(data, recipe, [0, 1], methods=methods, workers=1)["p"]
    assert [(r.method, r.seed) for r in started] == [(r.method, r.seed) for r in plain]
    assert started[2].model is net
    for a, b in zip(started, plain, strict=True):
        assert (a.target_acc, a.source_acc) == (b.target_acc, b.source_acc), (a.method, a.seed)
    lazy = start_pairs(data, recipe, [0], methods=("source_only",), workers=1)
    assert lazy.pending._futures is None, "with one worker nothing starts before result()"
    assert lazy.result()["p"][0].target_acc == plain[0].target_acc


def test_start_cached_seeds_trains_the_missing_networks_in_the_background_and_caches_them_at_result(tmp_path):
    """Chapter 05 starts the other seeds' DAN networks before its visible run; ``result()`` caches and loads them,
    the same networks ``cached_seeds`` trains."""
    from tlutils.adapt_runs import cache_paths, cached_seeds, start_cached_seeds

    def digits(seed: int, shift: float = 0.0, n: int = 40) -> Domain:  # ten classes, as the cache's networks have
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 10
        x = (torch.rand(n, 3, 32, 32, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.04 + shift).clamp(0, 1)
        return Domain(x=x, y=y, classes=[str(c) for c in range(10)], name=f"digits{seed}", split="train")

    data = (digits(0), digits(1, 0.3), digits(2, 0.3))
    recipe = AdaptationRecipe(steps=4, batch_size=8, domain_hidden=(8,))
    cfg = SimpleNamespace(data_dir=tmp_path / "a", pick=lambda quick, full, **_: quick, device="cpu")
    twin = SimpleNamespace(data_dir=tmp_path / "b", pick=cfg.pick, device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tlutils.adapt_runs.recipe_for", lambda *_a, **_k: recipe)
        mp.setattr("tlutils.adapt_runs.load_pair", lambda *a, **k: data)
        started = start_cached_seeds(cfg, [0, 1], ("source_only",), workers=2)
        assert started.pending._futures is not None, "two missing networks: both started in the workers"
        assert not cache_paths(cfg, 0, recipe)["source_only"].exists(), "nothing cached before result()"
        nets = started.result()
        assert cache_paths(cfg, 1, recipe)["source_only"].exists()
        plain = cached_seeds(twin, [0, 1], ("source_only",), workers=1)
    for s in (0, 1):
        for v, w in zip(nets[s]["source_only"][0].state_dict().values(),
                        plain[s]["source_only"][0].state_dict().values(), strict=True):
            assert torch.equal(v, w), s
