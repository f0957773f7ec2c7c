"""The baselines chapter 06 measures MAML against, on the same tasks and the same evaluation.

- ``pretrain_joint``: Finn et al.'s "pretrained on all tasks" regressor, trained on every point of
  the sampled tasks without adaptation, then fine-tuned at test time with ``maml.adapt``.
- ``finetune_head_curve``: a new linear head per episode on frozen, supervised-pretrained features.
- Prototypical Networks (Snell et al., NeurIPS 2017): an embedding trained episodically; a query
  goes to the class whose mean support embedding is nearest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlutils.config import smoke_cap
from tlutils.data.episodes import TaskBatch
from tlutils.maml import LossFn, accuracy_of_logits, adaptation_curve, parameters_of
from tlutils.train import History, LoopProgress


def pretrain_joint(
    model: nn.Module,
    sample_tasks: Callable[[torch.Generator], TaskBatch],
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
    desc: str = "pretrain",
) -> History:
    """The paper's "pretrained on all tasks" baseline: plain regression on every point of the sampled tasks.

    No adaptation during training; at test time the model is fine-tuned with ``maml.adapt`` like MAML.
    Returns a ``tlutils.train.History`` with the per-step ``loss`` in ``steps``, like ``maml.meta_train``.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = History()
    steps = smoke_cap(steps)  # a handful under TLUTILS_SMOKE=1
    with LoopProgress(history, steps, desc, progress) as bar:
        for step in range(1, steps + 1):
            t = sample_tasks(gen).to(device)
            x = torch.cat([t.x_support, t.x_query], 1).flatten(0, 1)
            y = torch.cat([t.y_support, t.y_query], 1).flatten(0, 1)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.steps.append({"step": step, "loss": loss.item()})
            bar.tick(loss=history.steps[-1]["loss"])
    return history


@torch.no_grad()
def embed_tasks(features: nn.Module, tasks: TaskBatch, batch_size: int = 1024) -> TaskBatch:
    """Replace each image of ``tasks`` by its feature vector under the frozen ``features`` (eval mode)."""
    was_training = features.training
    features.eval()
    device = next(features.parameters()).device

    def embed(x: Tensor) -> Tensor:
        flat = x.flatten(0, 1).to(device)
        out = torch.cat([features(flat[i: i + batch_size]) for i in range(0, len(flat), batch_size)])
        return out.view(*x.shape[:2], -1).float()

    out = TaskBatch(embed(tasks.x_support), tasks.y_support.to(device), embed(tasks.x_query),
                    tasks.y_query.to(device), tasks.info)
    features.train(was_training)
    return out


def finetune_head_curve(
    features: nn.Module,
    tasks: TaskBatch,
    *,
    steps: int = 100,
    lr: float = 0.1,
    num_classes: int | None = None,
) -> Tensor:
    """Fine-tuning baseline: a new linear head per episode, trained by gradient descent on frozen features.

    The head starts at zero (every class equally likely) and takes ``steps`` full-batch steps of
    cross-entropy on the support set; returns query accuracy ``(steps + 1, T)`` like ``adaptation_curve``.
    """
    feats = embed_tasks(features, tasks)
    num_classes = num_classes or int(tasks.y_support.max().item()) + 1
    head = nn.Linear(feats.x_support.shape[-1], num_classes).to(feats.x_support.device)
    zeros = {k: torch.zeros_like(v) for k, v in parameters_of(head).items()}
    return adaptation_curve(head, zeros, feats, F.cross_entropy, steps=steps, inner_lr=lr,
                            metric_fn=accuracy_of_logits, chunk_size=256)


def prototype_logits(emb_support: Tensor, y_support: Tensor, emb_query: Tensor, n_way: int) -> Tensor:
    """Prototypical Networks' classifier (Snell et al., NeurIPS 2017) for one episode.

    Each class's prototype is the mean embedding of its support examples; a query's logit for a
    class is minus its squared Euclidean distance to the prototype. Embeddings ``(n, D)``.
    """
    one_hot = F.one_hot(y_support, n_way).to(emb_support.dtype)  # (n_support, n_way)
    protos = one_hot.T @ emb_support / one_hot.sum(0).unsqueeze(1)  # (n_way, D)
    return -torch.cdist(emb_query, protos).pow(2)


def protonet_loss(features: nn.Module, tasks: TaskBatch) -> tuple[Tensor, Tensor]:
    """Mean query cross-entropy and accuracy of the prototype classifier over a batch of episodes.

    Support and query images of all episodes go through ``features`` in one batch per set.
    """
    n_way = int(tasks.y_support.max().item()) + 1
    t, ns = tasks.y_support.shape
    nq = tasks.y_query.shape[1]
    emb_s = features(tasks.x_support.flatten(0, 1)).view(t, ns, -1)
    emb_q = features(tasks.x_query.flatten(0, 1)).view(t, nq, -1)
    logits = torch.stack([prototype_logits(emb_s[i], tasks.y_support[i], emb_q[i], n_way) for i in range(t)])
    loss = F.cross_entropy(logits.flatten(0, 1), tasks.y_query.flatten())
    acc = accuracy_of_logits(logits, tasks.y_query)
    return loss, acc


def protonet_train(
    features: nn.Module,
    sample_tasks: Callable[[torch.Generator], TaskBatch],
    *,
    meta_steps: int,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
    desc: str = "protonet",
) -> History:
    """Train an embedding ``features`` episodically with the prototypical loss (Adam, one update per batch).

    Returns a ``tlutils.train.History`` with per-step ``loss`` and ``acc`` in ``steps``, like ``meta_train``.
    """
    meta_steps = smoke_cap(meta_steps)  # a handful under TLUTILS_SMOKE=1
    gen = torch.Generator().manual_seed(seed)
    device = next(features.parameters()).device
    optimizer = torch.optim.Adam(features.parameters(), lr=lr)
    features.train()
    history = History()
    with LoopProgress(history, meta_steps, desc, progress) as bar:
        for step in range(1, meta_steps + 1):
            loss, acc = protonet_loss(features, sample_tasks(gen).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.steps.append({"step": step, "loss": loss.item(), "acc": acc.item()})
            bar.tick(**history.steps[-1])
    return history


@torch.no_grad()
def protonet_accuracy(features: nn.Module, tasks: TaskBatch) -> Tensor:
    """Query accuracy of the prototype classifier per episode ``(T,)`` (features in eval mode)."""
    feats = embed_tasks(features, tasks)
    n_way = int(tasks.y_support.max().item()) + 1
    return torch.stack([
        accuracy_of_logits(prototype_logits(feats.x_support[i], feats.y_support[i], feats.x_query[i], n_way),
                           feats.y_query[i])
        for i in range(feats.num_tasks)
    ]).cpu()
