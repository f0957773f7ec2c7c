"""Knowledge distillation and keeping an old task: the methods of chapter 07.

* ``kd_loss``: Hinton, Vinyals & Dean (2015). A student learns from a teacher's softened outputs,

      loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y),

  where the cross-entropy covers only the labelled examples of a batch (label ``UNLABELLED`` = -1
  marks the others). The ``T^2`` keeps the soft term's gradient the same size whatever ``T`` is.
* ``distil``: train a student with that loss on images whose teacher logits were computed once.
* ``MultiHead``: one shared backbone with a head per task (``"source"``, ``"target"``).
* ``multitask`` (joint training on both tasks) and ``learning_without_forgetting`` (Li & Hoiem 2016:
  fine-tune on the target while distilling the old head's own outputs on the target images), the
  two remedies for the forgetting of sequential fine-tuning (chapter 02).

Training goes through ``tlutils.train.fit`` with a ``step_fn``; the examples of a training set carry
their row number as "label", so a step can look up the row's teacher logits and true label.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlutils.finetune import StrategyRecipe, tile
from tlutils.models import Classifier, make_head, resnet_small
from tlutils.schedules import LRSchedule, one_cycle
from tlutils.train import Stream, fit, predict

UNLABELLED = -1
"""Label of an example whose class the student may not see (it only gets the teacher's outputs)."""


# ----------------------------------------------------------------------------- the loss


def soft_targets(logits: Tensor, T: float) -> Tensor:
    """The temperature-softened class probabilities ``softmax(z / T)``."""
    return F.softmax(logits / T, dim=1)


def distillation_term(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, averaged over the batch (no gradient to the teacher)."""
    if T <= 0:
        raise ValueError(f"temperature T must be positive, got {T}")
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return T**2 * kl


def labelled_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the examples whose label is not ``UNLABELLED`` (0 when there are none)."""
    known = labels != UNLABELLED
    if not known.any():
        return logits.sum() * 0.0  # keeps the graph, contributes nothing
    return F.cross_entropy(logits[known], labels[known])


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None, *,
            T: float = 4.0, alpha: float = 0.9) -> Tensor:
    """Hinton et al.'s loss: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    ``labels=None`` (or all ``UNLABELLED``) leaves the soft term only. ``alpha=0`` is plain cross-entropy.
    Chapter 07, section 1 (``notebooks/07_distillation_multitask.ipynb``, "One distillation run") shows this source.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = distillation_term(student_logits, teacher_logits, T)
    if labels is None:
        return alpha * soft
    return alpha * soft + (1 - alpha) * labelled_cross_entropy(student_logits, labels)


# ----------------------------------------------------------------------------- students


def distillation_splits(train, k: int, val_per_class: int, seed: int = 0):
    """``(labelled, val, unlabelled)`` Domains from ``train``: ``k`` labels per class (``train.per_class(k, seed)``,
    the subset chapter 02 fine-tunes on), ``val_per_class`` held-out validation images per class from the
    rest, and everything left as the unlabelled pool (its labels stay in the Domain but are never used)."""
    labelled_index = train.per_class_index(k, seed)
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[labelled_index] = False
    rest = train.subset(rest.to(train.x.device))
    val_index = rest.per_class_index(val_per_class, seed)
    pool = torch.ones(len(rest), dtype=torch.bool)
    pool[val_index] = False
    return train.subset(labelled_index), rest.subset(val_index), rest.subset(pool.to(train.x.device))


def transfer_set(labelled, unlabelled) -> tuple[Tensor, Tensor]:
    """Images ``x`` of both sets and labels ``y`` with ``UNLABELLED`` for every image of ``unlabelled``."""
    hidden = torch.full((len(unlabelled),), UNLABELLED, dtype=labelled.y.dtype, device=labelled.y.device)
    return torch.cat([labelled.x, unlabelled.x]), torch.cat([labelled.y, hidden])



def small_student(num_classes: int, widths: tuple[int, ...] = (6, 12, 24, 48)) -> Classifier:
    """The teacher's architecture (``resnet_small``) at a quarter of the width: ~16x fewer parameters."""
    backbone = resnet_small(widths=widths)
    return Classifier(backbone, make_head(backbone.out_features, num_classes))


def repeat_to(n: int, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Repeat the rows of each tensor cyclically to exactly ``n`` rows (equal-sized training sets give equal steps)."""
    if not tensors or len(tensors[0]) == 0:
        raise ValueError("repeat_to needs at least one non-empty tensor")
    index = torch.arange(n, device=tensors[0].device) % len(tensors[0])
    return tuple(t[index] for t in tensors)


class DistilStep:
    """``step_fn`` for ``fit``: the batch is ``(images, teacher_logits, labels)``; ``kd_loss`` at ``T``, ``alpha``.

    Chapter 07, section 1 ("One distillation run") shows this source.
    """

    def __init__(self, *, T: float, alpha: float):
        self.T, self.alpha = T, alpha

    def __call__(self, model: nn.Module, batch, state) -> dict:
        x, z_teacher, y = batch
        z = model(x)
        loss = kd_loss(z.float(), z_teacher.float(), y, T=self.T, alpha=self.alpha)
        with torch.no_grad():
            agree = (z.argmax(1) == z_teacher.argmax(1)).float().mean()
        return {"loss": loss, "teacher_agreement": agree}


def distil(student: nn.Module, x: Tensor, teacher_logits: Tensor, labels: Tensor, *, epochs: int,
           T: float = 4.0, alpha: float = 0.9, lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
           device=None, progress: bool | None = False):
    """Train ``student`` on images ``x`` with ``kd_loss`` (AdamW, one-cycle rate); returns fit's ``History``.

    ``teacher_logits`` and ``labels`` (``UNLABELLED`` where unknown) have one row per image. ``alpha=0``
    trains on the labels only, ignoring the teacher. The number of steps is ``epochs * len(x) // batch_size``.
    Chapter 07, section 1 ("One distillation run") calls it once.
    """
    if not len(x) == len(teacher_logits) == len(labels):
        raise ValueError(f"x, teacher_logits and labels need one row per image: {len(x)}, "
                         f"{len(teacher_logits)}, {len(labels)}")
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    data = (x, teacher_logits.to(x.device), labels.to(x.device))
    return fit(student, data, epochs=epochs, optimizer=opt, callbacks=[LRSchedule(one_cycle)],
               batch_size=batch_size, step_fn=DistilStep(T=T, alpha=alpha),
               device=device, seed=seed, progress=progress, desc=f"distil T={T} alpha={alpha}")


@torch.no_grad()
def inference_ms(model: nn.Module, x: Tensor, *, repeats: int = 5) -> float:
    """Median wall time in milliseconds of one forward pass over ``x`` (eval mode, after one warm-up pass)."""
    model.eval()
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


# ----------------------------------------------------------------------------- keeping the source task


class MultiHead(nn.Module):
    """A shared ``backbone`` and one head per task.

    ``forward(x, task)`` gives that task's logits. ``forward(x, ("target", "source"))`` gives a tuple of logits,
    one per task, all from one backbone pass; with ``sizes`` the backbone's output is split into consecutive
    chunks, one per task (a multi-task step's batches go through the backbone together). One forward per step
    is what lets DDP synchronise every head's gradient.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], default: str = "target"):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.default = default

    def forward(self, x: Tensor, task: str | tuple[str, ...] | None = None,
                sizes: tuple[int, ...] | None = None) -> Tensor | tuple[Tensor, ...]:
        if task is None or isinstance(task, str):
            return self.heads[task or self.default](self.backbone(x))
        feats = self.backbone(x)
        parts = feats.split(list(sizes)) if sizes is not None else [feats] * len(task)
        if len(parts) != len(task):
            raise ValueError(f"sizes {sizes} split the batch into {len(parts)} parts for {len(task)} tasks")
        return tuple(self.heads[t](f) for t, f in zip(task, parts, strict=True))

    def classifier(self, task: str) -> Classifier:
        """A ``Classifier`` view (shared weights, no copy) of one task, for ``evaluate`` / ``accuracy``."""
        return Classifier(self.backbone, self.heads[task])


def two_task_model(source: Classifier, num_classes: int, seed: int = 0) -> MultiHead:
    """A copy of the source model with its head kept as ``"source"`` and a new ``"target"`` head."""
    torch.manual_seed(seed)
    backbone = copy.deepcopy(source.backbone)
    return MultiHead(backbone, {"source": copy.deepcopy(source.head),
                                "target": make_head(backbone.out_features, num_classes)})


class MultiTaskStep:
    """``step_fn`` on the streams ``{"target": (x, y), "source": (x, y)}`` (source drawn with replacement).

    loss = CE(target head, y_target) + weight * CE(source head, y_source). Both batches go through the
    backbone together (one forward of the model), so batch norm sees (and keeps statistics of) both domains.
    """

    def __init__(self, *, weight: float = 1.0):
        self.weight = weight

    def __call__(self, model: MultiHead, batch: dict, state) -> dict:
        (x_t, y_t), (x_s, y_s) = batch["target"], batch["source"]
        z_t, z_s = model(torch.cat([x_t, x_s]), ("target", "source"), (len(x_t), len(x_s)))
        target_loss = F.cross_entropy(z_t.float(), y_t)
        source_loss = F.cross_entropy(z_s.float(), y_s)
        return {"loss": target_loss + self.weight * source_loss, "target_loss": target_loss.detach(),
                "source_loss": source_loss.detach()}


class LwFStep:
    """``step_fn``: the batch is ``(x, y, old_logits)`` of target images, ``old_logits`` the source head's
    outputs on them recorded before fine-tuning started.

    loss = CE(target head, y) + weight * T^2 * KL(old_T || source head_T) on the same target images (both heads
    in one forward of the model).
    Chapter 07, section 3 ("One LwF run") shows this source; its "under the hood" cell writes one step by hand.
    """

    def __init__(self, *, T: float = 2.0, weight: float = 1.0):
        self.T, self.weight = T, weight

    def __call__(self, model: MultiHead, batch, state) -> dict:
        x, y, old_logits = batch
        z_new, z_old = model(x, ("target", "source"))
        new_loss = F.cross_entropy(z_new.float(), y)
        old_loss = distillation_term(z_old.float(), old_logits, self.T)
        return {"loss": new_loss + self.weight * old_loss, "target_loss": new_loss.detach(),
                "old_task_loss": old_loss.detach()}


def _fit_recipe(model: MultiHead, data, step_fn, recipe: StrategyRecipe, seed: int, device, desc: str) -> None:
    """Chapter 02's fine-tuning schedule: ``recipe.epochs`` at peak rate ``recipe.lr_finetune``, one-cycle."""
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr_finetune, weight_decay=recipe.weight_decay)
    fit(model, data, epochs=recipe.epochs, optimizer=opt, callbacks=[LRSchedule(one_cycle)],
        batch_size=recipe.batch_size, step_fn=step_fn, device=device, seed=seed, progress=False, desc=desc)
    model.eval()


def multitask(source: Classifier, target, source_train, *, recipe: StrategyRecipe = StrategyRecipe(),
              weight: float = 1.0, seed: int = 0, device=None) -> MultiHead:
    """Train the source backbone jointly on labelled ``target`` and on ``source_train`` (the old task's data).

    Same steps and rates as chapter 02's fine-tuning (``recipe``); each step also sees a source batch.
    """
    model = two_task_model(source, target.num_classes, seed)
    x, y = tile((target.x, target.y), recipe.min_epoch)
    streams = {"target": (x, y), "source": Stream((source_train.x, source_train.y), replacement=True, seed=seed)}
    _fit_recipe(model, streams, MultiTaskStep(weight=weight), recipe, seed, device, "multi-task")
    return model


def learning_without_forgetting(source: Classifier, target, *, recipe: StrategyRecipe = StrategyRecipe(),
                                T: float = 2.0, weight: float = 1.0, seed: int = 0, device=None) -> MultiHead:
    """Li & Hoiem (2016): fine-tune on labelled ``target`` while the source head keeps its own outputs on them.

    No source images are needed: the old head's logits on the target images, recorded before training,
    are the distillation targets. Same steps and rates as chapter 02's fine-tuning (``recipe``).
    Chapter 07, section 3 ("One LwF run") calls it once.
    """
    model = two_task_model(source, target.num_classes, seed)
    old_logits = predict(model.classifier("source"), target, device=device)
    rows = torch.arange(len(target), device=target.x.device)
    x, rows = tile((target.x, rows), recipe.min_epoch)
    data = (x, target.y.to(x.device)[rows], old_logits.to(x.device)[rows])
    _fit_recipe(model, data, LwFStep(T=T, weight=weight), recipe, seed, device, "LwF")
    return model
