import pytest
import torch

from tlutils.models import (
    STAGES,
    GaninCNN,
    build_model,
    count_parameters,
    ganin_cnn,
    imagenet_weights_path,
    load_checkpoint,
    make_head,
    mlp,
    resnet_small,
    save_checkpoint,
    torchvision_resnet,
)


def test_resnet_small_stages_and_shapes():
    bb = resnet_small()
    assert bb.stage_names == list(STAGES)
    maps = bb.forward_stages(torch.rand(2, 3, 32, 32))
    assert [m.shape[1] for m in maps.values()] == [bb.stage_channels[s] for s in STAGES]
    assert maps["stage4"].shape[-1] == 2
    assert bb(torch.rand(2, 3, 32, 32)).shape == (2, bb.out_features)
    with pytest.raises(ValueError, match="unknown stage"):
        bb.forward_stages(torch.rand(1, 3, 32, 32), upto="stage9")


def test_heads():
    assert isinstance(make_head(8, 3), torch.nn.Linear)
    two = make_head(8, 3, hidden=16, dropout=0.2)
    assert [type(m).__name__ for m in two] == ["Linear", "ReLU", "Dropout", "Linear"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_adapter_has_same_stage_names(arch):
    bb = torchvision_resnet(arch)
    assert bb.stage_names == list(STAGES)
    out = bb(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, bb.out_features) == (1, 512 if arch == "resnet18" else 2048)


def test_imagenet_weights_offline_error_and_cached_load(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="notebook 00"):
        torchvision_resnet("resnet18", weights="imagenet")
    # a file in torchvision's cache format (a plain state dict) is loaded from the cache path
    import torchvision

    ref = torchvision.models.resnet18()
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    bb = torchvision_resnet("resnet18", weights="imagenet")
    assert torch.equal(bb.stages["stem"][0].weight, ref.conv1.weight)


def test_checkpoint_roundtrip(tmp_path):
    model = build_model("resnet_small", 7, head_hidden=16, widths=(8, 16, 16, 32))
    path = save_checkpoint(model, tmp_path / "m.pt", domain="glyphs", seed=3)
    loaded, meta = load_checkpoint(path)
    assert meta["domain"] == "glyphs" and meta["num_classes"] == 7 and meta["arch"] == "resnet_small"
    assert "torch" in meta["versions"]
    x = torch.rand(2, 3, 32, 32)
    model.eval(), loaded.eval()
    assert torch.allclose(model(x), loaded(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_shape_mismatch_names_layer(tmp_path):
    model = build_model("resnet_small", 7, widths=(8, 16, 16, 32))
    other = build_model("resnet_small", 5, widths=(8, 16, 16, 32))
    from tlutils.models import load_weights

    with pytest.raises(ValueError, match=r"head.weight: checkpoint \(7, 32\) vs model \(5, 32\)"):
        load_weights(other, model.state_dict())


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(build_model("resnet_small", 3, widths=(8, 8, 8, 8)), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable tlutils checkpoint"):
        load_checkpoint(path)


def test_unknown_arch():
    with pytest.raises(ValueError, match="resnet_small, resnet18, resnet50"):
        build_model("vgg", 3)


def test_count_parameters():
    model = build_model("resnet_small", 3, widths=(8, 8, 8, 8))
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 8 * 3 + 3


@pytest.mark.parametrize("batch_norm", [False, True])
def test_ganin_cnn_checkpoint_rebuilds_through_load_checkpoint(tmp_path, batch_norm):
    torch.manual_seed(0)
    model = ganin_cnn(10, batch_norm=batch_norm).eval()
    path = save_checkpoint(model, tmp_path / "ganin.pt")
    loaded, meta = load_checkpoint(path)
    assert meta["arch"] == "ganin_cnn" and type(loaded.backbone).__name__ == "GaninCNN"
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_ganin_cnn_shapes_and_stages(batch_norm):
    model = ganin_cnn(10, batch_norm=batch_norm)
    x = torch.rand(2, 3, 32, 32)
    assert isinstance(model.backbone, GaninCNN)
    assert model.backbone.out_features == 48 * 4 * 4
    assert model.features(x).shape == (2, 768)
    assert model(x).shape == (2, 10)
    maps = model.backbone.forward_stages(x)
    assert list(maps) == ["stem", "stage1"] and maps["stage1"].shape == (2, 48, 4, 4)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == (2 if batch_norm else 0)
    with pytest.raises(ValueError, match="crop"):
        GaninCNN(crop=40)


def test_mlp_widths():
    head = mlp(768, 10, (100, 100))
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [100, 100, 10]
    assert mlp(5, 1)(torch.rand(3, 5)).shape == (3, 1)
