"""Unit tests for tlutils.features: extraction per stage, the feature cache and its key, probes, CKA."""

import pytest
import torch

from tlutils.features import (
    Features,
    cached_features,
    clear_memory_cache,
    extract_features,
    feature_key,
    linear_cka,
    sklearn_probe,
    train_linear_head,
)
from tlutils.models import build_model
from tlutils.train import accuracy


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("resnet_small", 3, widths=(4, 4, 8, 8))


def toy_domain(n: int = 30, seed: int = 0):
    from tlutils.data.domain import Domain

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.25
    return Domain(x, y, ["a", "b", "c"], "toy", "train")


def blobs(n: int = 150, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, d, generator=g) * 4
    return Features(centres[y] + torch.randn(n, d, generator=g), y, ["a", "b", "c"], "stage4", "blobs")


def test_last_stage_features_equal_the_backbone_output():
    model, data = tiny_model(), toy_domain()
    model.eval()
    with torch.no_grad():
        expected = model.backbone(data.x)
    assert torch.allclose(extract_features(model, data), expected, atol=1e-6)


@pytest.mark.parametrize("stage,grid,dim", [("stem", 1, 4), ("stage3", 2, 32), ("stage4", 1, 8)])
def test_stage_features_shape(stage, grid, dim):
    feats = extract_features(tiny_model(), toy_domain(), stage=stage, grid=grid)
    assert feats.shape == (30, dim)


def test_unknown_stage_names_the_stages():
    with pytest.raises(ValueError, match="stage9.*stem"):
        extract_features(tiny_model(), toy_domain(), stage="stage9")


def test_cache_serves_memory_then_disk(tmp_data):
    model, data = tiny_model(), toy_domain()
    first = cached_features(model, data, stage="stage3")
    assert first.info["source"] == "computed" and first.classes == ["a", "b", "c"]
    hit = cached_features(model, data, stage="stage3")
    assert hit.info["source"] == "memory" and hit.info["seconds"] < first.info["seconds"]
    clear_memory_cache()
    again = cached_features(model, data, stage="stage3")
    assert again.info["source"] == "disk"
    assert torch.equal(again.x, first.x) and torch.equal(again.y, data.y)
    assert list((tmp_data / "features").glob("toy-train-stage3-*.pt"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other key", "other labels"])
def test_a_bad_feature_file_is_reported_deleted_and_rebuilt(tmp_data, damage):
    model, data = tiny_model(), toy_domain()
    clear_memory_cache()  # earlier tests cached these very features in memory
    first = cached_features(model, data, stage="stage3")
    (path,) = (tmp_data / "features").glob("toy-train-stage3-*.pt")
    if damage == "garbage":
        path.write_bytes(b"not a tensor file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        blob = torch.load(path, weights_only=True)
        if damage == "other key":
            blob["key"] = "toy-train-stage3-0000"
        else:
            blob["y"] = blob["y"].flip(0)
        torch.save(blob, path)
    clear_memory_cache()
    with pytest.warns(UserWarning, match=r"feature cache file .* is invalid .*deleting and rebuilding"):
        again = cached_features(model, data, stage="stage3")
    assert again.info["source"] == "computed" and torch.equal(again.x, first.x)
    clear_memory_cache()
    assert cached_features(model, data, stage="stage3").info["source"] == "disk"  # the rebuilt file is valid


def test_refresh_recomputes_and_rewrites(tmp_data):
    model, data = tiny_model(), toy_domain()
    first = cached_features(model, data)
    again = cached_features(model, data, refresh=True)
    assert again.info["source"] == "computed" and torch.equal(again.x, first.x)


def test_cache_key_changes_with_weights_data_and_stage():
    model, data = tiny_model(), toy_domain()
    key = feature_key(model, data, "stage4")
    assert key == feature_key(tiny_model(), toy_domain(), "stage4"), "same weights + data = same key"
    assert key != feature_key(model, data, "stage3")
    assert key != feature_key(model, data, "stage4", grid=2)
    assert key != feature_key(tiny_model(seed=1), data, "stage4")
    assert key != feature_key(model, data.subset(range(10)), "stage4")
    with torch.no_grad():
        model.backbone.stages["stem"][1].running_mean += 1  # a buffer is part of the checkpoint too
    assert key != feature_key(model, data, "stage4")


def test_cache_key_notices_in_place_changes_to_the_data():
    model, data = tiny_model(), toy_domain()
    key = feature_key(model, data, "stage4")
    assert feature_key(model, data, "stage4") == key
    data.x[0, 0, 0, 0] += 0.5
    assert feature_key(model, data, "stage4") != key, "a memoised data hash must not survive an in-place edit"


def test_features_subset_follows_domain_order(tmp_data):
    data = toy_domain()
    feats = cached_features(tiny_model(), data)
    index = data.per_class_index(2, seed=0)
    assert torch.equal(feats.subset(index).y, data.subset(index).y)


def test_linear_head_on_features_learns_separable_blobs():
    train, test = blobs(seed=0), blobs(seed=0)
    head, history = train_linear_head(train, epochs=30, lr=5e-2, batch_size=32)
    assert accuracy(head, test) > 0.95
    assert len(history.epochs) == 30


def test_linear_head_rejects_images():
    with pytest.raises(ValueError, match="cached_features"):
        train_linear_head(toy_domain())


@pytest.mark.parametrize("kind", ["logreg", "svm"])
def test_sklearn_probes(kind):
    result = sklearn_probe(blobs(seed=0), blobs(seed=0), kind=kind)
    assert result["acc"] > 0.95 and result["train_acc"] > 0.95
    with pytest.raises(ValueError, match="unknown probe"):
        sklearn_probe(blobs(), blobs(), kind="forest")


def test_linear_cka_invariances():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(a, a) == pytest.approx(1.0)
    assert linear_cka(a, 3 * a @ q + 1) == pytest.approx(1.0), "invariant to rotation, scale and shift"
    assert linear_cka(a, torch.randn(200, 16, generator=g)) < 0.3
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(a, a[:10])


def test_rbf_svm_probe_separates_a_ring():
    """A kernel SVM fits what no linear probe can: a class inside a ring of the other."""
    g = torch.Generator().manual_seed(0)
    angle = 2 * torch.pi * torch.rand(400, generator=g)
    radius = torch.where(torch.arange(400) % 2 == 0, 0.5, 2.0) + 0.1 * torch.randn(400, generator=g)
    x = torch.stack([radius * angle.cos(), radius * angle.sin()], 1)
    y = (torch.arange(400) % 2).long()
    train, test = (x[:300], y[:300]), (x[300:], y[300:])
    assert sklearn_probe(train, test, kind="rbf_svm")["acc"] > 0.95
    assert sklearn_probe(train, test, kind="logreg")["acc"] < 0.8
