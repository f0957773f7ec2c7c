"""MAML on torch.func: meta-gradients vs explicit unrolling, vmap vs a loop, batch norm, task samplers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlutils import maml


def _tiny_tasks(num_tasks: int = 3, seed: int = 0) -> maml.TaskBatch:
    return maml.SinusoidTasks().sample(num_tasks, 4, 6, torch.Generator().manual_seed(seed))


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


def _double(tasks: maml.TaskBatch) -> maml.TaskBatch:
    return maml.TaskBatch(*(t.double() for t in tasks.task(slice(None))))


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


def _tiny_episodes(num_tasks=4, n_way=3, k_shot=2, k_query=3, rotations=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(12 * 8, 1, 12, 12, generator=gen)
    y = torch.arange(12).repeat_interleave(8)
    sampler = maml.EpisodeSampler(x, y, n_way, k_shot, k_query, rotations=rotations)
    return sampler, sampler.sample(num_tasks, gen)


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_per_task_loop(first_order):
    torch.manual_seed(0)
    model = maml.conv4(3, hidden=4)
    _, tasks = _tiny_episodes()
    params = maml.parameters_of(model)
    kw = dict(steps=2, inner_lr=0.1, first_order=first_order)
    g_vmap, l_vmap, o_vmap = maml.meta_gradient(model, params, tasks, F.cross_entropy, vectorize=True, **kw)
    g_loop, l_loop, o_loop = maml.meta_gradient(model, params, tasks, F.cross_entropy, vectorize=False, **kw)
    torch.testing.assert_close(l_vmap, l_loop, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(o_vmap, o_loop, rtol=1e-4, atol=1e-5)
    for name in g_loop:
        torch.testing.assert_close(g_vmap[name], g_loop[name], rtol=1e-3, atol=1e-5)


def test_batch_norm_keeps_no_running_statistics():
    torch.manual_seed(0)
    model = maml.conv4(3, hidden=4)
    assert not list(model.buffers()), "conv4 for MAML must have no running-statistics buffers"
    _, tasks = _tiny_episodes()
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


def test_batch_stat_norm_matches_fused_batch_norm_and_fused_is_refused_under_second_order_vmap():
    x = torch.randn(6, 4, 5, 5)
    ours, fused = maml.BatchStatNorm(4), nn.BatchNorm2d(4, track_running_stats=False)
    with torch.no_grad():
        ours.weight.uniform_(), ours.bias.normal_()
    fused.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), fused(x))

    model = nn.Sequential(nn.Conv2d(1, 4, 3), fused, nn.Flatten(), nn.LazyLinear(3))
    _, tasks = _tiny_episodes()
    model(tasks.x_support[0])
    with pytest.raises(ValueError, match="functorch#534"):
        maml.meta_gradient(model, maml.parameters_of(model), tasks, F.cross_entropy)
    maml.meta_gradient(model, maml.parameters_of(model), tasks, F.cross_entropy, first_order=True)


def test_sinusoid_tasks_follow_the_paper_protocol():
    tasks = maml.SinusoidTasks().sample(500, 5, 7, torch.Generator().manual_seed(1))
    amp, phase = tasks.info["amplitude"], tasks.info["phase"]
    assert tasks.x_support.shape == (500, 5, 1) and tasks.x_query.shape == (500, 7, 1)
    assert 0.1 <= amp.min() and amp.max() <= 5.0 and 0 <= phase.min() and phase.max() <= math.pi
    x = torch.cat([tasks.x_support, tasks.x_query], 1)
    assert -5 <= x.min() and x.max() <= 5
    expected = amp.view(-1, 1, 1) * torch.sin(tasks.x_support - phase.view(-1, 1, 1))
    torch.testing.assert_close(tasks.y_support, expected)
    again = maml.SinusoidTasks().sample(500, 5, 7, torch.Generator().manual_seed(1))
    assert torch.equal(again.y_query, tasks.y_query)
    with pytest.raises(ValueError, match="low < high"):
        maml.SinusoidTasks(amplitude=(5.0, 0.1))


def test_episode_sampler_labels_and_disjoint_support_query():
    sampler, tasks = _tiny_episodes(num_tasks=5, n_way=3, k_shot=2, k_query=3)
    assert tasks.x_support.shape == (5, 6, 1, 12, 12) and tasks.x_query.shape == (5, 9, 1, 12, 12)
    assert tasks.y_support[0].tolist() == [0, 0, 1, 1, 2, 2]
    for t in range(5):
        s = {tuple(v.flatten().tolist()) for v in tasks.x_support[t]}
        q = {tuple(v.flatten().tolist()) for v in tasks.x_query[t]}
        assert not s & q, "support and query share an image"
    with pytest.raises(ValueError, match="lower n_way"):
        maml.EpisodeSampler(sampler.x, torch.arange(12).repeat_interleave(8), 13, 2, 3)
    rot_sampler, rot_tasks = _tiny_episodes(num_tasks=6, n_way=5, rotations=True)
    assert rot_sampler.num_classes == 48 and rot_tasks.info["rotation"].max() <= 3
    labels = torch.arange(12).repeat_interleave(8)
    for t in range(6):  # each support image is an image of its class, turned by its rotation
        for j in range(5):
            c, r = rot_tasks.info["classes"][t, j], int(rot_tasks.info["rotation"][t, j])
            turned = torch.rot90(rot_sampler.x[labels == c], r, dims=(-2, -1))
            img = rot_tasks.x_support[t, 2 * j]
            assert any(torch.equal(img, u) for u in turned)


def test_glyph_episodes_never_mix_meta_train_and_meta_test_alphabets(tmp_data):
    from tlutils.data.glyphs import glyph_alphabets

    # one small domain holding background and evaluation scripts: each role must keep only its own
    opts = dict(alphabets=["latin", "greek", "arrows", "braille", "technical"], num_classes=15, per_class=3)
    samplers = {role: maml.glyph_episodes(role, 3, 1, 1, **opts) for role in ("meta-train", "meta-test")}
    found = {role: set(s.info["alphabet"]) for role, s in samplers.items()}
    assert found["meta-train"] and found["meta-test"] and not found["meta-train"] & found["meta-test"]
    gen = torch.Generator().manual_seed(0)
    for role, sampler in samplers.items():
        assert found[role] <= set(glyph_alphabets(role))
        episodes = sampler.sample(10, gen)
        drawn = {sampler.info["alphabet"][c] for c in episodes.info["classes"].flatten().tolist()}
        assert drawn <= set(glyph_alphabets(role)), f"{role} episode drew alphabets {drawn}"
        assert episodes.x_support.shape[2:] == (1, 28, 28)


def test_meta_training_is_deterministic_and_learns():
    def run():
        torch.manual_seed(0)
        model = maml.sinusoid_mlp(hidden=(16, 16))
        sampler = maml.SinusoidTasks()
        hist = maml.meta_train(model, lambda g: sampler.sample(10, 5, 5, g), maml.mse, meta_steps=40,
                               meta_lr=3e-3, steps=1, inner_lr=0.01, seed=3, progress=False)
        return model, hist

    (m1, h1), (m2, h2) = run(), run()
    assert h1["loss"] == h2["loss"]
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert sum(h1["loss"][-10:]) < sum(h1["loss"][:10])


def test_adaptation_curve_starts_at_the_unadapted_loss_and_descends():
    torch.manual_seed(0)
    model = maml.sinusoid_mlp()
    tasks = maml.SinusoidTasks().sample(16, 10, 20, torch.Generator().manual_seed(0))
    params = maml.parameters_of(model)
    curve = maml.adaptation_curve(model, params, tasks, maml.mse, steps=5, inner_lr=0.01)
    assert curve.shape == (6, 16)
    with torch.no_grad():
        direct = torch.stack([F.mse_loss(model(tasks.x_query[i]), tasks.y_query[i]) for i in range(16)])
    torch.testing.assert_close(curve[0], direct)
    assert curve[-1].mean() < curve[0].mean()


def test_finetune_head_starts_at_chance():
    torch.manual_seed(0)
    features = maml.conv4(3, hidden=4, running_stats=True)[:-1]
    _, tasks = _tiny_episodes()
    curve = maml.finetune_head_curve(features, tasks, steps=3, lr=0.5)
    assert curve.shape == (4, tasks.num_tasks)
    # a zero head predicts class 0 for every query: accuracy is exactly 1 / n_way
    torch.testing.assert_close(curve[0], torch.full((tasks.num_tasks,), 1 / 3))


def test_mean_ci():
    values = torch.tensor([0.0, 1.0] * 50)
    mean, half = maml.mean_ci(values)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(1.959964 * values.std().item() / 10, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        maml.mean_ci([1.0])


def test_measure_step_reports_time_and_memory():
    out = maml.measure_step(lambda: torch.ones(256, 1024).sum(), repeats=1)
    assert out["seconds"] > 0 and out["peak_mb"] >= 0.9


def test_meta_train_snapshots_are_copies_at_the_requested_steps():
    torch.manual_seed(0)
    model = maml.sinusoid_mlp(hidden=(8, 8))
    start = maml.parameters_of(model)
    start = {k: v.clone() for k, v in start.items()}
    sampler = maml.SinusoidTasks()
    hist = maml.meta_train(model, lambda g: sampler.sample(4, 5, 5, g), maml.mse, meta_steps=6, meta_lr=1e-2,
                           seed=0, progress=False, snapshot_at=(0, 3, 6))
    snaps = hist["snapshots"]
    assert sorted(snaps) == [0, 3, 6]
    for k, v in start.items():
        assert torch.equal(snaps[0][k], v), "step 0 is the initialisation"
        assert torch.equal(snaps[6][k], dict(model.named_parameters())[k].detach()), "the last is the final model"
    assert any(not torch.equal(snaps[3][k], snaps[6][k]) for k in start), "snapshots are copies, not views"


def test_balanced_sampler_gives_each_alphabet_the_same_share():
    x = torch.rand(40 * 4, 1, 8, 8)
    y = torch.arange(40).repeat_interleave(4)
    alphabet = ["big"] * 36 + ["small"] * 4  # 90 % of the classes in one alphabet
    gen = torch.Generator().manual_seed(0)
    plain = maml.EpisodeSampler(x, y, 1, 1, 1, info={"alphabet": alphabet}).sample(2000, gen)
    fair = maml.EpisodeSampler(x, y, 1, 1, 1, info={"alphabet": alphabet}, balance="alphabet").sample(2000, gen)
    share = lambda t: sum(alphabet[c] == "small" for c in t.info["classes"].flatten().tolist()) / 2000  # noqa: E731
    assert share(plain) == pytest.approx(0.1, abs=0.03)
    assert share(fair) == pytest.approx(0.5, abs=0.04)
    with pytest.raises(ValueError, match="balance"):
        maml.EpisodeSampler(x, y, 1, 1, 1, info={"alphabet": alphabet}, balance="class")


def test_prototype_logits_are_negative_squared_distances_to_class_means():
    emb_s = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    y_s = torch.tensor([0, 0, 1])
    emb_q = torch.tensor([[1.0, 1.0]])
    logits = maml.prototype_logits(emb_s, y_s, emb_q, 2)  # prototypes (1, 0) and (0, 4)
    torch.testing.assert_close(logits, torch.tensor([[-1.0, -10.0]]))


def test_protonet_learns_on_separable_episodes():
    gen = torch.Generator().manual_seed(0)
    # the class signal sits in 4 of 36 pixels; the other 32 are loud noise the embedding must learn to ignore
    centres = torch.zeros(12, 1, 6, 6)
    centres[:, 0, 0, :4] = torch.randn(12, 4, generator=gen)
    y = torch.arange(12).repeat_interleave(10)
    x = centres[y] + 0.1 * torch.randn(120, 1, 6, 6, generator=gen)
    x[:, 0, 1:] += 2 * torch.randn(120, 5, 6, generator=gen)
    sampler = maml.EpisodeSampler(x, y, 3, 1, 3)
    torch.manual_seed(0)
    features = nn.Sequential(nn.Flatten(), nn.Linear(36, 16))
    tasks = sampler.sample(30, torch.Generator().manual_seed(1))
    before = maml.protonet_accuracy(features, tasks)
    hist = maml.protonet_train(features, lambda g: sampler.sample(8, g), meta_steps=60, lr=1e-2, progress=False)
    after = maml.protonet_accuracy(features, tasks)
    assert before.shape == (30,) and len(hist["loss"]) == 60
    assert after.mean() >= before.mean() + 0.2, (before.mean(), after.mean())
    assert sum(hist["loss"][-10:]) < sum(hist["loss"][:10])
