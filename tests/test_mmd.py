"""Unit tests for tlutils.mmd: estimators against hand-computed values, invariants, the permutation test."""

import math

import pytest
import torch
from torch import nn

from tlutils.adapt import AdaptationRecipe, fit_recipe
from tlutils.dan import head_activations, train_dan
from tlutils.mmd import (
    GaussianKernel,
    MMDLoss,
    class_centroid_distance,
    class_separation,
    dan_scales,
    gaussian_mmd2,
    inter_centroid_distance,
    median_bandwidth,
    mmd2,
    mmd2_from_gram,
    multi_kernel,
    permutation_null,
    permutation_test,
)
from tlutils.models import Classifier

ESTIMATORS = ("unbiased", "biased", "linear")


def k(d: float, sigma: float = 1.0) -> float:
    """The documented convention: exp(-d^2 / (2 sigma^2))."""
    return math.exp(-(d**2) / (2 * sigma**2))


# x = {0, 1}, y = {2, 4} on the line, sigma = 1: every kernel value is k(|a - b|).
X = torch.tensor([[0.0], [1.0]])
Y = torch.tensor([[2.0], [4.0]])
CROSS = (k(2) + k(4) + k(1) + k(3)) / 4


def test_unbiased_matches_hand_computation():
    expected = k(1) + k(2) - 2 * CROSS  # off-diagonal means: one pair on each side
    assert mmd2(X, Y, kernel=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_biased_matches_hand_computation():
    expected = (2 + 2 * k(1)) / 4 + (2 + 2 * k(2)) / 4 - 2 * CROSS
    assert mmd2(X, Y, kernel=1.0, estimator="biased").item() == pytest.approx(expected, rel=1e-6)


def test_linear_matches_hand_computation():
    # one pair: h = k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1) = k(1) + k(2) - k(4) - k(1)
    expected = k(2) - k(4)
    assert mmd2(X, Y, kernel=1.0, estimator="linear").item() == pytest.approx(expected, rel=1e-6)


def test_bandwidth_convention_and_multi_kernel_mean():
    kern = GaussianKernel(sigma=2.0, scales=(1.0, 4.0))  # sigma_j = 2 and 4
    value = kern.gram(X, Y, kern.sigmas(torch.cat([X, Y])))[0, 0].item()
    assert value == pytest.approx((k(2, 2.0) + k(2, 4.0)) / 2, rel=1e-6)
    assert dan_scales() == tuple(2.0**e for e in range(-8, 9, 2))
    assert len(multi_kernel(-2, 2, 1).scales) == 5


def test_median_bandwidth_value_detached_and_scale_equivariant():
    z = torch.tensor([[0.0], [1.0], [3.0]], requires_grad=True)  # distances 1, 2, 3 -> median 2
    sigma = median_bandwidth(z)
    assert sigma.item() == pytest.approx(2.0) and not sigma.requires_grad
    w = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    assert median_bandwidth(5 * w).item() == pytest.approx(5 * median_bandwidth(w).item(), rel=1e-5)
    assert median_bandwidth(torch.ones(4, 2)).item() == 1.0  # degenerate: all identical


def test_closed_form_gaussian_mmd2_matches_a_large_sample():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2000, 2, generator=g)
    y = 1.5 * torch.randn(2000, 2, generator=g) + torch.tensor([0.6, 0.8])  # ||shift|| = 1
    exact = gaussian_mmd2(1.0, 2, sigma=1.2, scale_y=1.5)
    assert mmd2(x, y, kernel=1.2).item() == pytest.approx(exact, abs=0.015)  # sd ~0.004 at n = 2000
    assert gaussian_mmd2(0.0, 5, sigma=1.0) == 0.0


def test_from_gram_agrees_with_direct_estimators():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, generator=g), torch.randn(40, 3, generator=g) + 0.5
    kern = GaussianKernel(sigma=1.3)
    z = torch.cat([x, y])
    gram = kern.gram(z, z, kern.sigmas(z))
    for est in ESTIMATORS:
        assert mmd2_from_gram(gram, 40, est).item() == pytest.approx(mmd2(x, y, kern, est).item(), abs=1e-6)


def test_unbiased_ignores_the_kernel_diagonal_biased_does_not():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(30, 4, generator=g)
    kern = GaussianKernel()
    gram = kern.gram(z, z, kern.sigmas(z))
    changed = gram.clone()
    changed.diagonal().add_(torch.rand(30, generator=g) + 0.5)
    assert mmd2_from_gram(changed, 12).item() == pytest.approx(mmd2_from_gram(gram, 12).item(), abs=1e-6)
    assert mmd2_from_gram(changed, 12, "biased").item() != pytest.approx(
        mmd2_from_gram(gram, 12, "biased").item()
    )


def test_biased_nonnegative_zero_on_identical_and_unbiased_can_be_negative():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        x, y = torch.randn(25, 3, generator=g), torch.randn(20, 3, generator=g)
        assert mmd2(x, y, estimator="biased").item() >= -1e-7
    x = torch.randn(25, 3, generator=g)
    assert mmd2(x, x.clone(), estimator="biased").item() == pytest.approx(0.0, abs=1e-6)
    # identical samples: the U-statistic drops k(x_i, x_i) = 1 from the within terms only, so it is < 0
    assert mmd2(x, x.clone()).item() < 0


def test_symmetry():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(30, 5, generator=g), torch.randn(30, 5, generator=g) * 1.5
    for est in ESTIMATORS:
        assert mmd2(x, y, estimator=est).item() == pytest.approx(mmd2(y, x, estimator=est).item(), abs=1e-6)


def test_images_are_flattened_and_half_precision_promoted():
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(10, 3, 4, 4, generator=g), torch.rand(12, 3, 4, 4, generator=g)
    assert mmd2(x, y).item() == pytest.approx(mmd2(x.flatten(1), y.flatten(1)).item())
    assert mmd2(x.half(), y.half()).dtype == torch.float32


def test_permutation_null_equals_recomputing_per_permutation():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(12, 3, generator=g), torch.randn(10, 3, generator=g) + 0.3
    kern = GaussianKernel(sigma=1.1)
    z = torch.cat([x, y])
    gram = kern.gram(z, z, kern.sigmas(z))
    for est in ("unbiased", "biased"):
        _, null = permutation_null(gram, 12, n_permutations=25, estimator=est, seed=7, batch_size=25)
        orders = torch.rand(25, 22, generator=torch.Generator().manual_seed(7)).argsort(1)
        loop = torch.stack([mmd2(z[o[:12]], z[o[12:]], kern, est) for o in orders])
        torch.testing.assert_close(null, loop, atol=1e-6, rtol=1e-5)


def test_p_values_in_range_seeded_and_detect_shift_not_null():
    g = torch.Generator().manual_seed(8)
    x, same, shifted = (torch.randn(60, 5, generator=g) for _ in range(3))
    shifted = shifted + 0.8
    for est in ESTIMATORS:
        _, p_null = permutation_test(x, same, 200, estimator=est, seed=0)
        _, p_alt = permutation_test(x, shifted, 200, estimator=est, seed=0)
        assert 0 < p_null <= 1 and 0 < p_alt <= 1
        assert p_alt < 0.05 < p_null, f"{est}: p under shift {p_alt}, p under null {p_null}"
        assert p_alt >= 1 / 201  # the +1 in numerator and denominator: p is never 0
    assert permutation_test(x, same, 100, seed=3) == permutation_test(x, same, 100, seed=3)


def test_mmd_loss_is_differentiable_with_detached_bandwidth():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(16, 4, generator=g, requires_grad=True)
    y = torch.randn(16, 4, generator=g) + 1.0
    loss = MMDLoss()(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    fixed = GaussianKernel(sigma=median_bandwidth(torch.cat([x, y])).item(), scales=dan_scales())
    (grad_fixed,) = torch.autograd.grad(mmd2(x, y, fixed), x)
    torch.testing.assert_close(grad, grad_fixed)  # no gradient flows through the median
    assert MMDLoss(estimator="linear")(x[:16], y[:10]).dim() == 0  # unequal batches are cut for "linear"


def test_class_centroid_distance_zero_when_aligned():
    g = torch.Generator().manual_seed(10)
    feats, labels = torch.randn(40, 3, generator=g), torch.arange(40) % 4
    assert class_centroid_distance(feats, labels, feats, labels) == pytest.approx(0.0, abs=1e-6)
    assert class_centroid_distance(feats, labels, feats + 10, labels) > 1


def test_class_separation_hand_value_and_scale_free():
    # two classes at 0 and 4 on a line, points +-1 around each: between = 4, within = 1
    feats = torch.tensor([[-1.0], [1.0], [3.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert class_separation(feats, labels) == pytest.approx(4.0)
    assert class_separation(7 * feats, labels) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mmd2(torch.randn(5, 3), torch.randn(5, 4)), "same feature size"),
        (lambda: mmd2(torch.randn(5, 3), torch.randn(4, 3), estimator="linear"), "equal sizes"),
        (lambda: mmd2(torch.randn(5, 3), torch.randn(5, 3), estimator="quadratic"), "unknown estimator"),
        (lambda: mmd2(torch.randn(5), torch.randn(5)), "unsqueeze"),
        (lambda: mmd2(torch.randn(1, 3), torch.randn(5, 3)), ">= 2 samples"),
        (lambda: GaussianKernel(sigma=0.0), "sigma must be > 0"),
        (lambda: permutation_test(torch.randn(5, 3), torch.randn(5, 3), 0), "n_permutations"),
    ],
)
def test_bad_input_errors_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_kernel_type():
    with pytest.raises(TypeError, match="GaussianKernel"):
        mmd2(torch.randn(5, 3), torch.randn(5, 3), kernel="rbf")


def _tiny_classifier(seed: int) -> Classifier:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU())
    return Classifier(backbone, nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)))


def test_head_activations_are_the_relu_outputs_and_logits():
    net = _tiny_classifier(0)
    feats = net.features(torch.rand(5, 3, 2, 2))
    logits, acts = head_activations(net.head, feats)
    torch.testing.assert_close(logits, net.head(feats))
    assert [a.shape[1] for a in acts] == [6, 3]


def test_dan_trains_and_with_zero_weight_is_the_source_only_run():
    g = torch.Generator().manual_seed(12)
    source = (torch.rand(32, 3, 2, 2, generator=g), torch.randint(0, 3, (32,), generator=g))
    target = torch.rand(20, 3, 2, 2, generator=g) + 0.5
    recipe = AdaptationRecipe(steps=8, batch_size=8)
    dan = _tiny_classifier(0)
    history = train_dan(dan, source, target, recipe, weight=1.0, seed=0, progress=False)
    assert math.isfinite(history.last("train_mmd")) and history.last("train_lambda") > 0
    zero, plain = _tiny_classifier(0), _tiny_classifier(0)
    train_dan(zero, source, target, recipe, weight=0.0, seed=0, progress=False)
    fit_recipe(plain, source, recipe, seed=0, progress=False)
    for a, b in zip(zero.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # same batches, same optimiser: only the MMD term differs


def test_inter_centroid_distance_by_hand_and_its_scale():
    feats = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # centroids (1, 0) and (0, 5); their mean (0.5, 2.5); squared distances 0.25 + 6.25 = 6.5 each
    assert inter_centroid_distance(feats, labels) == pytest.approx(6.5)
    assert inter_centroid_distance(3 * feats, labels) == pytest.approx(9 * 6.5)  # units of features squared
    assert class_separation(3 * feats, labels) == pytest.approx(class_separation(feats, labels))  # scale-free
    with pytest.raises(ValueError, match="2 classes"):
        inter_centroid_distance(feats, torch.zeros(4, dtype=torch.long))
