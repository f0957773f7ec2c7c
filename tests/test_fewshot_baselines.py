"""Chapter 06's baselines: a fine-tuned head on frozen features, Prototypical Networks."""

from __future__ import annotations

import torch
from torch import nn

from tlutils import maml
from tlutils.data.episodes import EpisodeSampler, SinusoidTasks
from tlutils.fewshot_baselines import (
    finetune_head_curve,
    pretrain_joint,
    protonet_accuracy,
    protonet_train,
    prototype_logits,
)
from tlutils.train import History, fit


def test_finetune_head_starts_at_chance(tiny_episodes):
    torch.manual_seed(0)
    features = maml.conv4(3, hidden=4, running_stats=True)[:-1]
    _, tasks = tiny_episodes()
    curve = finetune_head_curve(features, tasks, steps=3, lr=0.5)
    assert curve.shape == (4, tasks.num_tasks)
    # a zero head predicts class 0 for every query: accuracy is exactly 1 / n_way
    torch.testing.assert_close(curve[0], torch.full((tasks.num_tasks,), 1 / 3))


def test_prototype_logits_are_negative_squared_distances_to_class_means():
    emb_s = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    y_s = torch.tensor([0, 0, 1])
    emb_q = torch.tensor([[1.0, 1.0]])
    logits = prototype_logits(emb_s, y_s, emb_q, 2)  # prototypes (1, 0) and (0, 4)
    torch.testing.assert_close(logits, torch.tensor([[-1.0, -10.0]]))


def test_protonet_learns_on_separable_episodes():
    gen = torch.Generator().manual_seed(0)
    # the class signal sits in 4 of 36 pixels; the other 32 are loud noise the embedding must learn to ignore
    centres = torch.zeros(12, 1, 6, 6)
    centres[:, 0, 0, :4] = torch.randn(12, 4, generator=gen)
    y = torch.arange(12).repeat_interleave(10)
    x = centres[y] + 0.1 * torch.randn(120, 1, 6, 6, generator=gen)
    x[:, 0, 1:] += 2 * torch.randn(120, 5, 6, generator=gen)
    sampler = EpisodeSampler(x, y, 3, 1, 3)
    torch.manual_seed(0)
    features = nn.Sequential(nn.Flatten(), nn.Linear(36, 16))
    tasks = sampler.sample(30, torch.Generator().manual_seed(1))
    before = protonet_accuracy(features, tasks)
    hist = protonet_train(features, lambda g: sampler.sample(8, g), meta_steps=60, lr=1e-2, progress=False)
    after = protonet_accuracy(features, tasks)
    loss = hist.column("loss", per="step")
    assert before.shape == (30,) and len(loss) == 60 and len(hist.column("acc", per="step")) == 60
    assert after.mean() >= before.mean() + 0.2, (before.mean(), after.mean())
    assert sum(loss[-10:]) < sum(loss[:10])


def test_every_training_loop_returns_one_history_shape(tiny_episodes):
    """fit, meta_train, pretrain_joint and protonet_train: a History with per-step rows, seconds and (fit) epochs."""
    torch.manual_seed(0)
    sines = SinusoidTasks()
    sample_sines = lambda g: sines.sample(4, 5, 5, g)  # noqa: E731
    sampler, _ = tiny_episodes()
    sample_episodes = lambda g: sampler.sample(2, g)  # noqa: E731
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    histories = {
        "fit": fit(nn.Linear(4, 3), (x, y), epochs=2, batch_size=8, progress=False),
        "meta_train": maml.meta_train(maml.sinusoid_mlp((8,)), sample_sines, maml.mse, meta_steps=3,
                                      progress=False, snapshot_at=(0, 3)),
        "pretrain_joint": pretrain_joint(maml.sinusoid_mlp((8,)), sample_sines, maml.mse, steps=3, progress=False),
        "protonet_train": protonet_train(nn.Sequential(nn.Flatten(), nn.Linear(144, 4)), sample_episodes,
                                         meta_steps=3, progress=False),
    }
    for name, hist in histories.items():
        assert isinstance(hist, History), name
        assert [r["step"] for r in hist.steps] == list(range(1, len(hist.steps) + 1)) and hist.steps, name
        assert hist.seconds > 0 and hist.last("loss", per="step") == hist.steps[-1]["loss"], name
    assert len(histories["fit"].epochs) == 2 and not histories["meta_train"].epochs
    assert sorted(histories["meta_train"].snapshots) == [0, 3] and not histories["fit"].snapshots
