import pytest
import torch
from torch import nn

from tlutils.models import ganin_cnn
from tlutils.train import (
    History,
    LoopProgress,
    Stream,
    autocast_for,
    default_amp,
    evaluate,
    fit,
    infinite_batches,
    predict,
    predict_features,
    tensor_batches,
)


def blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    return centers[y] + 0.5 * torch.randn(n, 2, generator=g), y


def mlp():
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def test_fit_learns_and_logs_history():
    torch.manual_seed(0)
    x, y = blobs()
    model = mlp()
    hist = fit(model, (x, y), val=blobs(seed=1), epochs=5, lr=1e-2, batch_size=32, device="cpu", seed=0)
    assert isinstance(hist, History) and len(hist.epochs) == 5
    assert hist.last("val_acc") > 0.9
    assert hist.column("train_loss")[-1] < hist.column("train_loss")[0]
    assert len(hist.steps) == 5 * (256 // 32) and hist.steps[-1]["step"] == 40
    assert not model.training


def test_same_seed_same_result():
    x, y = blobs()
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        m = mlp()
        fit(m, (x, y), epochs=2, batch_size=32, device="cpu", seed=5)
        out.append(m[0].weight.detach().clone())
    assert torch.equal(out[0], out[1])


def test_callbacks_and_step_fn_see_progress():
    seen = []

    class Spy:
        def on_epoch_start(self, state):
            seen.append(("epoch", state.epoch))

        def on_batch_end(self, state):
            seen.append(("p", state.progress))

    def step_fn(model, batch, state):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        return {"loss": loss, "progress": torch.tensor(state.progress)}

    hist = fit(mlp(), blobs(64), epochs=2, batch_size=16, device="cpu", callbacks=[Spy()], step_fn=step_fn)
    assert [s for s in seen if s[0] == "epoch"] == [("epoch", 0), ("epoch", 1)]
    ps = [v for k, v in seen if k == "p"]
    assert ps[-1] == 1.0 and ps == sorted(ps)
    assert "train_progress" in hist.keys()


def test_dataloader_input_matches_tensor_input():
    x, y = blobs(64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    hist = fit(mlp(), loader, epochs=1, device="cpu")
    assert len(hist.steps) == 4
    m = mlp()
    assert torch.allclose(predict(m, loader), predict(m, (x, y)))


def test_evaluate_and_predict():
    x, y = blobs(100)
    m = mlp()
    res = evaluate(m, (x, y), batch_size=7)
    assert set(res) == {"loss", "acc"} and 0 <= res["acc"] <= 1
    assert predict(m, (x, y), batch_size=7).shape == (100, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in length"):
        fit(mlp(), (torch.rand(3, 2), torch.zeros(4, dtype=torch.long)), epochs=1, device="cpu")
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(frozen, blobs(8), epochs=1, device="cpu")
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(mlp(), (torch.full((32, 2), float("nan")), torch.zeros(32, dtype=torch.long)), epochs=1, device="cpu")


def test_no_autocast_on_cpu():
    ctx, scaler = autocast_for(torch.device("cpu"), amp=True)
    assert scaler is None
    with ctx():
        assert not torch.is_autocast_enabled()


def test_tensor_batches_cover_everything_once():
    x = torch.arange(10).float()
    seen = torch.cat([b for b, _ in tensor_batches(x, x, 3, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))


def test_mixed_precision_defaults_to_cuda_and_to_the_cpu_at_smoke_scale(monkeypatch):
    monkeypatch.setenv("TLUTILS_SMOKE", "0")
    assert not default_amp(torch.device("cpu")) and default_amp(torch.device("cuda"))
    monkeypatch.setenv("TLUTILS_SMOKE", "1")
    assert default_amp(torch.device("cpu"))


def test_predict_features_gives_what_the_head_reads():
    torch.manual_seed(0)
    net = ganin_cnn(10).eval()
    x = torch.rand(6, 3, 32, 32)
    feats = predict_features(net, (x, torch.zeros(6, dtype=torch.long)), device="cpu", amp=False)
    assert feats.shape == (6, 768)  # the flattened 48 x 4 x 4 map of the paper's network
    with torch.no_grad():  # predict runs channels-last: the same numbers up to the convolutions' rounding
        assert torch.allclose(feats, net.features(x), atol=1e-5) and torch.allclose(net.head(feats), net(x), atol=1e-5)


def test_loop_progress_times_the_loop_and_closes_its_bar_on_an_error(monkeypatch):
    monkeypatch.setenv("TLUTILS_PROGRESS", "1")
    history = History()
    with pytest.raises(RuntimeError, match="boom"), LoopProgress(history, 3, "test") as bar:
        assert bar.bar is not None
        bar.tick(loss=torch.tensor(0.5))
        raise RuntimeError("boom")
    assert bar.bar is None and history.seconds > 0
    monkeypatch.setenv("TLUTILS_PROGRESS", "0")
    with LoopProgress(History(), 3) as quiet:
        quiet.tick(loss=1.0)
        assert quiet.bar is None


def test_history_reads_per_epoch_or_per_step():
    history = History(epochs=[{"epoch": 1, "train_loss": 0.5}], steps=[{"step": 1, "loss": 0.7}])
    assert history.last("train_loss") == 0.5 and history.last("loss", per="step") == 0.7
    with pytest.raises(KeyError, match="'loss' was never logged per epoch"):
        history.last("loss")
    with pytest.raises(ValueError, match="per must be 'epoch' or 'step'"):
        history.column("loss", per="batch")


def test_evaluate_reads_a_shuffled_loader_once():
    """Outputs and labels come from one pass: a shuffled DataLoader read twice would pair them wrongly."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    y = torch.arange(10).repeat(20)
    x = torch.nn.functional.one_hot(y, 10).float()
    model = torch.nn.Linear(10, 10)
    with torch.no_grad():
        model.weight.copy_(torch.eye(10) * 5)
        model.bias.zero_()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    assert evaluate(model, loader, device="cpu")["acc"] == 1.0
    assert evaluate(model, (x, y), device="cpu")["acc"] == 1.0


def test_evaluate_without_labels_is_a_clear_error():
    with pytest.raises(ValueError, match="evaluate needs labelled data"):
        evaluate(torch.nn.Linear(3, 2), [torch.randn(4, 3)], device="cpu")


def test_named_streams_reach_the_step_seeded_and_as_large_as_the_first_batch():
    x, y = blobs(64)
    extra = torch.arange(10.0).view(10, 1)
    seen = []

    def step_fn(model, batch, state):
        assert set(batch) == {"main", "extra", "rows"}
        (xb, yb), eb, (r1, r2, r3) = batch["main"], batch["extra"], batch["rows"]
        assert eb.shape == (len(xb), 1) and len(r1) == len(r2) == len(r3) == len(xb)
        assert torch.equal(r2, r1 * 2) and torch.equal(r3, r1 * 3)  # a tuple stream stays aligned
        seen.append(eb.flatten().long())
        return {"loss": nn.functional.cross_entropy(model(xb), yb)}

    rows = torch.arange(30)
    fit(mlp(), {"main": (x, y), "extra": extra, "rows": (rows, rows * 2, rows * 3)}, epochs=2, batch_size=16,
        device="cpu", seed=5, step_fn=step_fn, progress=False)
    expected = infinite_batches(10, 16, seed=5 + 1)  # stream i (after the first) is seeded fit's seed + i
    assert all(torch.equal(s, next(expected)) for s in seen) and len(seen) == 8


def test_stream_with_replacement_and_bad_streams():
    x, y = blobs(32)
    draws = []

    def step_fn(model, batch, state):
        draws.append(batch["src"][1])
        return {"loss": nn.functional.cross_entropy(model(batch["tgt"][0]), batch["tgt"][1])}

    src = (torch.zeros(7, 1), torch.arange(7))
    fit(mlp(), {"tgt": (x, y), "src": Stream(src, replacement=True, seed=3)}, epochs=1, batch_size=8, device="cpu",
        seed=0, step_fn=step_fn, progress=False)
    gen = torch.Generator().manual_seed(3)
    assert all(torch.equal(d, torch.randint(7, (8,), generator=gen)) for d in draws)
    with pytest.raises(ValueError, match="empty dict"):
        fit(mlp(), {}, epochs=1, device="cpu")
    with pytest.raises(TypeError, match="first stream"):
        fit(mlp(), {"a": Stream((x, y))}, epochs=1, device="cpu")
    with pytest.raises(ValueError, match="differ in length"):
        fit(mlp(), {"a": (x, y), "b": (x, y[:3])}, epochs=1, device="cpu", step_fn=step_fn)


def test_fit_trains_channels_last_by_default_and_differs_from_nchw_only_by_rounding():
    x, y = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3
    nets = {}
    for channels_last in (True, False):
        torch.manual_seed(0)
        nets[channels_last] = ganin_cnn(3)
        kw = {} if channels_last else {"channels_last": False}
        fit(nets[channels_last], (x, y), epochs=1, lr=1e-3, batch_size=32, device="cpu", seed=0, progress=False,
            **kw)
    conv = nets[True].backbone.stages["stem"][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nets[False].backbone.stages["stem"][0].weight.is_contiguous()
    for a, b in zip(nets[True].parameters(), nets[False].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(predict(nets[True], (x, y)), predict(nets[False], (x, y)), atol=1e-4)
