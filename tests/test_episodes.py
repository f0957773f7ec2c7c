"""Few-shot tasks: the sinusoid protocol, N-way K-shot episode samplers, glyph episodes split by alphabet."""

from __future__ import annotations

import math

import pytest
import torch

from tlutils.data.episodes import EpisodeSampler, SinusoidTasks, glyph_episodes
from tlutils.data.glyphs import glyph_alphabets


def test_sinusoid_tasks_follow_the_paper_protocol():
    tasks = SinusoidTasks().sample(500, 5, 7, torch.Generator().manual_seed(1))
    amp, phase = tasks.info["amplitude"], tasks.info["phase"]
    assert tasks.x_support.shape == (500, 5, 1) and tasks.x_query.shape == (500, 7, 1)
    assert 0.1 <= amp.min() and amp.max() <= 5.0 and 0 <= phase.min() and phase.max() <= math.pi
    x = torch.cat([tasks.x_support, tasks.x_query], 1)
    assert -5 <= x.min() and x.max() <= 5
    expected = amp.view(-1, 1, 1) * torch.sin(tasks.x_support - phase.view(-1, 1, 1))
    torch.testing.assert_close(tasks.y_support, expected)
    again = SinusoidTasks().sample(500, 5, 7, torch.Generator().manual_seed(1))
    assert torch.equal(again.y_query, tasks.y_query)
    with pytest.raises(ValueError, match="low < high"):
        SinusoidTasks(amplitude=(5.0, 0.1))


def test_episode_sampler_labels_and_disjoint_support_query(tiny_episodes):
    sampler, tasks = tiny_episodes(num_tasks=5, n_way=3, k_shot=2, k_query=3)
    assert tasks.x_support.shape == (5, 6, 1, 12, 12) and tasks.x_query.shape == (5, 9, 1, 12, 12)
    assert tasks.y_support[0].tolist() == [0, 0, 1, 1, 2, 2]
    for t in range(5):
        s = {tuple(v.flatten().tolist()) for v in tasks.x_support[t]}
        q = {tuple(v.flatten().tolist()) for v in tasks.x_query[t]}
        assert not s & q, "support and query share an image"
    with pytest.raises(ValueError, match="lower n_way"):
        EpisodeSampler(sampler.x, torch.arange(12).repeat_interleave(8), 13, 2, 3)
    rot_sampler, rot_tasks = tiny_episodes(num_tasks=6, n_way=5, rotations=True)
    assert rot_sampler.num_classes == 48 and rot_tasks.info["rotation"].max() <= 3
    labels = torch.arange(12).repeat_interleave(8)
    for t in range(6):  # each support image is an image of its class, turned by its rotation
        for j in range(5):
            c, r = rot_tasks.info["classes"][t, j], int(rot_tasks.info["rotation"][t, j])
            turned = torch.rot90(rot_sampler.x[labels == c], r, dims=(-2, -1))
            img = rot_tasks.x_support[t, 2 * j]
            assert any(torch.equal(img, u) for u in turned)


def test_glyph_episodes_never_mix_meta_train_and_meta_test_alphabets(tmp_data):
    # one small domain holding background and evaluation scripts: each role must keep only its own
    opts = dict(alphabets=["latin", "greek", "arrows", "braille", "technical"], num_classes=15, per_class=3)
    samplers = {role: glyph_episodes(role, 3, 1, 1, **opts) for role in ("meta-train", "meta-test")}
    found = {role: set(s.info["alphabet"]) for role, s in samplers.items()}
    assert found["meta-train"] and found["meta-test"] and not found["meta-train"] & found["meta-test"]
    gen = torch.Generator().manual_seed(0)
    for role, sampler in samplers.items():
        assert found[role] <= set(glyph_alphabets(role))
        episodes = sampler.sample(10, gen)
        drawn = {sampler.info["alphabet"][c] for c in episodes.info["classes"].flatten().tolist()}
        assert drawn <= set(glyph_alphabets(role)), f"{role} episode drew alphabets {drawn}"
        assert episodes.x_support.shape[2:] == (1, 28, 28)


def test_balanced_sampler_gives_each_alphabet_the_same_share():
    x = torch.rand(40 * 4, 1, 8, 8)
    y = torch.arange(40).repeat_interleave(4)
    alphabet = ["big"] * 36 + ["small"] * 4  # 90 % of the classes in one alphabet
    gen = torch.Generator().manual_seed(0)
    plain = EpisodeSampler(x, y, 1, 1, 1, info={"alphabet": alphabet}).sample(2000, gen)
    fair = EpisodeSampler(x, y, 1, 1, 1, info={"alphabet": alphabet}, balance="alphabet").sample(2000, gen)
    share = lambda t: sum(alphabet[c] == "small" for c in t.info["classes"].flatten().tolist()) / 2000  # noqa: E731
    assert share(plain) == pytest.approx(0.1, abs=0.03)
    assert share(fair) == pytest.approx(0.5, abs=0.04)
    with pytest.raises(ValueError, match="balance"):
        EpisodeSampler(x, y, 1, 1, 1, info={"alphabet": alphabet}, balance="class")
