"""Chapter 06's baselines: a fine-tuned head on frozen features, Prototypical Networks."""

from __future__ import annotations

import torch
from torch import nn

from tlutils import maml
from tlutils.data.episodes import EpisodeSampler
from tlutils.fewshot_baselines import finetune_head_curve, protonet_accuracy, protonet_train, prototype_logits


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
    assert before.shape == (30,) and len(hist["loss"]) == 60
    assert after.mean() >= before.mean() + 0.2, (before.mean(), after.mean())
    assert sum(hist["loss"][-10:]) < sum(hist["loss"][:10])
