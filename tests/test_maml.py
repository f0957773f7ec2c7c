"""MAML on torch.func: meta-gradients vs explicit unrolling, vmap vs a loop, batch norm, mixed precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlutils import maml
from tlutils.data.episodes import SinusoidTasks, TaskBatch
from tlutils.train import History


def _tiny_tasks(num_tasks: int = 3, seed: int = 0) -> TaskBatch:
    return SinusoidTasks().sample(num_tasks, 4, 6, torch.Generator().manual_seed(seed))


def _tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return maml.sinusoid_mlp(hidden=(8, 8)).double()


def _unrolled_reference(model, tasks, steps, inner_lr, first_order):
    """Meta-gradient by hand: torch.autograd with create_graph=True through every inner step."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def forward(weights, x):
        return torch.func.functional_call(model, dict(zip(names, weights, strict=True)), (x,))

    total = 0.0
    for i in range(tasks.num_tasks):
        xs, ys, xq, yq = tasks.task(i)
        w = theta
        for _ in range(steps):
            g = torch.autograd.grad(F.mse_loss(forward(w, xs), ys), w, create_graph=not first_order)
            w = [wi - inner_lr * gi for wi, gi in zip(w, g, strict=True)]
        total = total + F.mse_loss(forward(w, xq), yq)
    grads = torch.autograd.grad(total / tasks.num_tasks, theta)
    return dict(zip(names, grads, strict=True))


def _double(tasks: TaskBatch) -> TaskBatch:
    return TaskBatch(*(t.double() for t in tasks.task(slice(None))))


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_unrolled_autograd(steps):
    model, tasks = _tiny_mlp(), _double(_tiny_tasks())
    params = maml.parameters_of(model)
    ours, losses, _ = maml.meta_gradient(model, params, tasks, maml.mse, steps=steps, inner_lr=0.05)
    ref = _unrolled_reference(model, tasks, steps, 0.05, first_order=False)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-9, atol=1e-12)
    assert losses.shape == (tasks.num_tasks,)

    first, _, _ = maml.meta_gradient(model, params, tasks, maml.mse, steps=steps, inner_lr=0.05,
                                     first_order=True)
    ref_first = _unrolled_reference(model, tasks, steps, 0.05, first_order=True)
    for name in ref:
        torch.testing.assert_close(first[name], ref_first[name], rtol=1e-9, atol=1e-12)
    gap = max((first[n] - ours[n]).abs().max().item() for n in ref)
    assert gap > 1e-4, "first- and second-order meta-gradients should differ"


def test_zero_inner_steps_is_plain_gradient():
    model, tasks = _tiny_mlp(), _double(_tiny_tasks())
    ours, _, _ = maml.meta_gradient(model, maml.parameters_of(model), tasks, maml.mse, steps=0)
    ref = _unrolled_reference(model, tasks, 0, 0.0, first_order=False)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name])
    with pytest.raises(ValueError, match="steps must be >= 0"):
        maml.adapt(model, maml.parameters_of(model), *tasks.task(0)[:2], maml.mse, steps=-1)


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_per_task_loop(first_order, tiny_episodes):
    torch.manual_seed(0)
    model = maml.conv4(3, hidden=4)
    _, tasks = tiny_episodes()
    params = maml.parameters_of(model)
    kw = dict(steps=2, inner_lr=0.1, first_order=first_order)
    g_vmap, l_vmap, o_vmap = maml.meta_gradient(model, params, tasks, F.cross_entropy, vectorize=True, **kw)
    g_loop, l_loop, o_loop = maml.meta_gradient(model, params, tasks, F.cross_entropy, vectorize=False, **kw)
    torch.testing.assert_close(l_vmap, l_loop, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(o_vmap, o_loop, rtol=1e-4, atol=1e-5)
    for name in g_loop:
        torch.testing.assert_close(g_vmap[name], g_loop[name], rtol=1e-3, atol=1e-5)


def test_batch_norm_keeps_no_running_statistics(tiny_episodes):
    torch.manual_seed(0)
    model = maml.conv4(3, hidden=4)
    assert not list(model.buffers()), "conv4 for MAML must have no running-statistics buffers"
    _, tasks = tiny_episodes()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    maml.meta_step(model, opt, tasks, F.cross_entropy, steps=1, inner_lr=0.1)
    assert not list(model.buffers()) and not any("running" in k for k in model.state_dict())
    x = tasks.x_query[0]
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    torch.testing.assert_close(train_out, eval_out)  # batch statistics in both modes
    # one task's statistics do not change another task's predictions
    with torch.no_grad():
        alone = model(x)
        model(tasks.x_query[1] * 5 + 3)
        again = model(x)
    torch.testing.assert_close(alone, again)

    tracked = maml.conv4(3, hidden=4, running_stats=True)
    with pytest.raises(ValueError, match="tracks running statistics"):
        maml.meta_gradient(tracked, maml.parameters_of(tracked), tasks, F.cross_entropy)


def test_batch_stat_norm_matches_fused_batch_norm_and_fused_is_refused_under_second_order_vmap(tiny_episodes):
    x = torch.randn(6, 4, 5, 5)
    ours, fused = maml.BatchStatNorm(4), nn.BatchNorm2d(4, track_running_stats=False)
    with torch.no_grad():
        ours.weight.uniform_(), ours.bias.normal_()
    fused.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), fused(x))

    model = nn.Sequential(nn.Conv2d(1, 4, 3), fused, nn.Flatten(), nn.LazyLinear(3))
    _, tasks = tiny_episodes()
    model(tasks.x_support[0])
    with pytest.raises(ValueError, match="functorch#534"):
        maml.meta_gradient(model, maml.parameters_of(model), tasks, F.cross_entropy)
    maml.meta_gradient(model, maml.parameters_of(model), tasks, F.cross_entropy, first_order=True)


def test_meta_training_is_deterministic_and_learns():
    def run():
        torch.manual_seed(0)
        model = maml.sinusoid_mlp(hidden=(16, 16))
        sampler = SinusoidTasks()
        hist = maml.meta_train(model, lambda g: sampler.sample(10, 5, 5, g), maml.mse, meta_steps=40,
                               meta_lr=3e-3, steps=1, inner_lr=0.01, seed=3, progress=False)
        return model, hist

    (m1, h1), (m2, h2) = run(), run()
    loss = h1.column("loss", per="step")
    assert isinstance(h1, History) and len(loss) == 40 and h1.steps[-1]["step"] == 40 and h1.seconds > 0
    assert loss == h2.column("loss", per="step")
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert sum(loss[-10:]) < sum(loss[:10])


def test_adaptation_curve_starts_at_the_unadapted_loss_and_descends():
    torch.manual_seed(0)
    model = maml.sinusoid_mlp()
    tasks = SinusoidTasks().sample(16, 10, 20, torch.Generator().manual_seed(0))
    params = maml.parameters_of(model)
    curve = maml.adaptation_curve(model, params, tasks, maml.mse, steps=5, inner_lr=0.01)
    assert curve.shape == (6, 16)
    with torch.no_grad():
        direct = torch.stack([F.mse_loss(model(tasks.x_query[i]), tasks.y_query[i]) for i in range(16)])
    torch.testing.assert_close(curve[0], direct)
    assert curve[-1].mean() < curve[0].mean()


def test_accuracy_of_logits_is_the_fraction_of_correct_argmax():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    assert maml.accuracy_of_logits(logits, torch.tensor([0, 1, 1, 0])).item() == 0.5


def test_mixed_precision_is_train_s_autocast_except_fp16_which_runs_in_fp32(monkeypatch):
    cpu = torch.device("cpu")
    with maml._autocast(cpu, True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with maml._autocast(cpu, False):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv("TLUTILS_SMOKE", "0")
    with maml._autocast(cpu, None):  # default: off on the CPU unless at smoke scale
        assert not torch.is_autocast_enabled("cpu")
    # where train would need fp16 + GradScaler (a GPU without bf16), MAML runs in full precision
    monkeypatch.setattr(maml, "autocast_for", lambda device, amp: (lambda: torch.autocast("cpu"), object()))
    with maml._autocast(cpu, True):
        assert not torch.is_autocast_enabled("cpu")


def test_mean_ci():
    values = torch.tensor([0.0, 1.0] * 50)
    mean, half = maml.mean_ci(values)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(1.959964 * values.std().item() / 10, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        maml.mean_ci([1.0])


def test_meta_train_snapshots_are_copies_at_the_requested_steps():
    torch.manual_seed(0)
    model = maml.sinusoid_mlp(hidden=(8, 8))
    start = maml.parameters_of(model)
    start = {k: v.clone() for k, v in start.items()}
    sampler = SinusoidTasks()
    hist = maml.meta_train(model, lambda g: sampler.sample(4, 5, 5, g), maml.mse, meta_steps=6, meta_lr=1e-2,
                           seed=0, progress=False, snapshot_at=(0, 3, 6))
    snaps = hist.snapshots
    assert sorted(snaps) == [0, 3, 6]
    for k, v in start.items():
        assert torch.equal(snaps[0][k], v), "step 0 is the initialisation"
        assert torch.equal(snaps[6][k], dict(model.named_parameters())[k].detach()), "the last is the final model"
    assert any(not torch.equal(snaps[3][k], snaps[6][k]) for k in start), "snapshots are copies, not views"
