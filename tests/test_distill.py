"""tlutils.distill: the KD loss against a hand computation, its T^2 scaling, the students and the two-head models."""

import math

import pytest
import torch
import torch.nn.functional as F

from tlutils import distill
from tlutils.data.domain import Domain
from tlutils.finetune import StrategyRecipe
from tlutils.models import Classifier, build_model, count_parameters, make_head, resnet_small
from tlutils.train import accuracy


def logits(seed: int = 0, n: int = 16, c: int = 5, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, c, generator=g, dtype=torch.float64), scale * torch.randn(n, c, generator=g,
                                                                                          dtype=torch.float64)


def kd_by_hand(z_s, z_t, y, T, alpha) -> float:
    """Independent computation with Python floats: per example, sum_i p_t log(p_t / p_s), then the mean."""
    kl, ce, n_labelled = 0.0, 0.0, 0
    for row_s, row_t, label in zip(z_s.tolist(), z_t.tolist(), y.tolist(), strict=True):
        e_s = [math.exp(v / T) for v in row_s]
        e_t = [math.exp(v / T) for v in row_t]
        p_s = [v / sum(e_s) for v in e_s]
        p_t = [v / sum(e_t) for v in e_t]
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        if label != distill.UNLABELLED:
            e1 = [math.exp(v) for v in row_s]
            ce += -math.log(e1[label] / sum(e1))
            n_labelled += 1
    soft = T**2 * kl / len(y)
    hard = ce / n_labelled if n_labelled else 0.0
    return alpha * soft + (1 - alpha) * hard


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_kd_loss_matches_a_hand_computation(T, alpha):
    z_s, z_t = logits()
    y = torch.tensor([0, 1, 2, 3, 4, -1, -1, 0, 1, 2, -1, 3, 4, 0, 1, -1])
    got = distill.kd_loss(z_s, z_t, y, T=T, alpha=alpha).item()
    assert got == pytest.approx(kd_by_hand(z_s, z_t, y, T, alpha), rel=1e-9, abs=1e-12)


def test_alpha_zero_is_cross_entropy_and_ignores_the_teacher():
    z_s, z_t = logits(1)
    y = torch.arange(16) % 5
    assert torch.allclose(distill.kd_loss(z_s, z_t, y, T=4.0, alpha=0.0), F.cross_entropy(z_s, y))
    assert torch.allclose(distill.kd_loss(z_s, -z_t, y, T=4.0, alpha=0.0), F.cross_entropy(z_s, y))


def test_alpha_one_or_no_labels_is_the_soft_term_only():
    z_s, z_t = logits(2)
    soft = distill.distillation_term(z_s, z_t, 3.0)
    assert torch.allclose(distill.kd_loss(z_s, z_t, None, T=3.0, alpha=1.0), soft)
    all_unlabelled = torch.full((16,), distill.UNLABELLED)
    assert torch.allclose(distill.kd_loss(z_s, z_t, all_unlabelled, T=3.0, alpha=0.5), 0.5 * soft)


def test_soft_term_is_zero_when_student_equals_teacher_and_positive_otherwise():
    z_s, z_t = logits(3)
    assert distill.distillation_term(z_t.clone(), z_t, 2.0).item() == pytest.approx(0.0, abs=1e-12)
    assert distill.distillation_term(z_s, z_t, 2.0).item() > 0


def test_t_squared_keeps_the_gradient_size_independent_of_temperature():
    """d(KL)/dz_s = (p_s - p_t) / T (per example, / batch), which shrinks like 1/T^2 for large T; T^2 undoes it."""
    z_s, z_t = logits(4, scale=1.0)
    z_s, z_t = z_s - z_s.mean(1, keepdim=True), z_t - z_t.mean(1, keepdim=True)  # zero-mean logits, as Hinton assumes
    norms = {}
    for T in (1.0, 8.0, 16.0, 32.0):
        z = z_s.clone().requires_grad_(True)
        distill.distillation_term(z, z_t, T).backward()
        norms[T] = z.grad.norm().item()
        # the closed form: T^2 * (p_s - p_t) / (T * N)
        expected = T * (F.softmax(z_s / T, 1) - F.softmax(z_t / T, 1)) / len(z_s)
        assert torch.allclose(z.grad, expected, atol=1e-12)
    assert norms[32.0] / norms[16.0] == pytest.approx(1.0, abs=0.02)
    # the high-temperature limit: (z_s - z_t) / (C * N)
    limit = ((z_s - z_t) / (z_s.shape[1] * len(z_s))).norm().item()
    assert norms[32.0] == pytest.approx(limit, rel=0.01)
    # without T^2 the gradient would be 1/T^2 as large: 256x smaller at T=16 than the T^2 version
    z = z_s.clone().requires_grad_(True)
    (distill.distillation_term(z, z_t, 16.0) / 16.0**2).backward()
    assert z.grad.norm().item() == pytest.approx(norms[16.0] / 256, rel=1e-9)


def test_no_gradient_reaches_the_teacher():
    z_s, z_t = logits(5)
    z_t.requires_grad_(True)
    z_s.requires_grad_(True)
    distill.kd_loss(z_s, z_t, torch.arange(16) % 5, T=2.0).backward()
    assert z_t.grad is None and z_s.grad is not None


def test_kd_loss_rejects_bad_settings():
    z_s, z_t = logits(6)
    with pytest.raises(ValueError, match="alpha"):
        distill.kd_loss(z_s, z_t, None, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        distill.kd_loss(z_s, z_t, None, T=0.0)


def test_student_is_more_than_ten_times_smaller_than_the_teacher():
    teacher = build_model("resnet_small", 10)
    student = distill.small_student(10)
    assert count_parameters(teacher) >= 10 * count_parameters(student)
    assert student(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_repeat_to_gives_exactly_n_rows_cyclically():
    a, b = torch.arange(3), torch.arange(3) * 10
    ra, rb = distill.repeat_to(7, a, b)
    assert ra.tolist() == [0, 1, 2, 0, 1, 2, 0] and rb.tolist() == [0, 10, 20, 0, 10, 20, 0]


def toy_domain(n_per_class: int = 12, classes: int = 3, seed: int = 0) -> Domain:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.rand(len(y), 3, 32, 32, generator=g) * 0.2
    for c in range(classes):  # class c: a bright horizontal band at a different height
        x[y == c, :, 4 + 9 * c: 10 + 9 * c, :] += 0.8
    return Domain(x=x, y=y, classes=[str(c) for c in range(classes)], name="toy", split="train")


def test_distillation_splits_are_disjoint_and_sized():
    d = toy_domain()
    lab, val, unl = distill.distillation_splits(d, k=2, val_per_class=3, seed=1)
    assert (len(lab), len(val), len(unl)) == (6, 9, len(d) - 15)
    rows = lambda s: {tuple(r.flatten()[:64].tolist()) for r in s.x}  # noqa: E731 (images identify rows here)
    assert not (rows(lab) & rows(val)) and not (rows(lab) & rows(unl)) and not (rows(val) & rows(unl))
    assert torch.equal(lab.x, d.per_class(2, 1).x), "the labelled subset is chapter 02's per_class(k, seed)"
    x, y = distill.transfer_set(lab, unl)
    assert len(x) == len(lab) + len(unl) and (y[len(lab):] == distill.UNLABELLED).all()
    assert torch.equal(y[: len(lab)], lab.y)


def test_distil_teaches_a_student_from_teacher_logits_alone(one_thread):
    """With every image unlabelled, the student can only learn from the teacher's logits; it must match them."""
    torch.manual_seed(0)
    d = toy_domain(n_per_class=20)
    teacher_logits = 4.0 * F.one_hot(d.y, 3).double().float()
    labels = torch.full_like(d.y, distill.UNLABELLED)
    student = Classifier(resnet_small(widths=(4, 8, 8, 8)), make_head(8, 3))
    history = distill.distil(student, d.x, teacher_logits, labels, epochs=12, T=2.0, alpha=1.0, lr=1e-2,
                             batch_size=20, seed=0)
    assert len(history.steps) == 12 * 3
    assert accuracy(student, d) >= 0.9


def test_multihead_views_share_weights():
    backbone = resnet_small(widths=(4, 8, 8, 8))
    model = distill.MultiHead(backbone, {"source": make_head(8, 4), "target": make_head(8, 3)})
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    assert model(x).shape == (2, 3) and model(x, "source").shape == (2, 4)
    assert model.classifier("source").backbone is backbone
    assert torch.equal(model.classifier("target")(x), model(x))


def small_source(classes: int = 4) -> Classifier:
    torch.manual_seed(0)
    return Classifier(resnet_small(widths=(4, 8, 8, 8)), make_head(8, classes)).eval()


def test_lwf_step_is_cross_entropy_plus_distillation_of_the_recorded_outputs():
    model = distill.two_task_model(small_source(), 3, seed=0)
    d = toy_domain(n_per_class=4)
    old = torch.randn(len(d), 4)
    out = distill.LwFStep(T=2.0, weight=0.5)(model, (d.x, d.y, old), None)
    feats = model.backbone(d.x)
    expected = F.cross_entropy(model.heads["target"](feats), d.y) + 0.5 * distill.distillation_term(
        model.heads["source"](feats), old, 2.0)
    assert torch.allclose(out["loss"], expected, atol=1e-6)


def test_multitask_step_sums_both_tasks_losses_from_one_forward():
    model = distill.two_task_model(small_source(), 3, seed=0)
    src = toy_domain(n_per_class=5, classes=4, seed=1)
    d = toy_domain(n_per_class=2)
    out = distill.MultiTaskStep()(model, {"target": (d.x, d.y), "source": (src.x[:6], src.y[:6])}, None)
    assert set(out) == {"loss", "target_loss", "source_loss"}
    assert torch.allclose(out["loss"], out["target_loss"] + out["source_loss"])
    with torch.no_grad():
        z_t, z_s = model(torch.cat([d.x, src.x[:6]]), ("target", "source"), (len(d.x), 6))
    assert z_t.shape == (len(d.x), 3) and z_s.shape == (6, 4)


def test_multitask_and_lwf_train_both_heads_and_leave_the_source_alone(one_thread):
    source = small_source()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    target = toy_domain(n_per_class=4)
    src = toy_domain(n_per_class=5, classes=4, seed=1)
    recipe = StrategyRecipe(epochs=1, batch_size=8, min_epoch=16)
    for model in (distill.multitask(source, target, src, recipe=recipe, seed=0),
                  distill.learning_without_forgetting(source, target, recipe=recipe, seed=0)):
        assert not model.training
        assert not torch.equal(model.heads["source"].weight, source.head.weight), "the old head trains too"
        assert model(target.x).shape == (len(target), 3)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in before.items()), "the source model is not modified"


def test_inference_ms_is_positive():
    assert distill.inference_ms(distill.small_student(10), torch.rand(4, 3, 32, 32), repeats=3) > 0
