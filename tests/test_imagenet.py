"""The one ImageNet input wrapper, and that notebooks 02/03 and the DDP script feed the network alike."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torchvision

from tlutils.config import REPO_ROOT, Setup
from tlutils.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetInput, imagenet_resnet, with_imagenet_input
from tlutils.models import imagenet_weights_path, torchvision_resnet


def test_imagenet_input_matches_torchvision_transforms():
    from torchvision.transforms import v2

    x = torch.rand(4, 3, 32, 32)
    ours = ImageNetInput(224)(x)
    ref = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(v2.Resize(224, antialias=True)(x))
    assert ours.shape == (4, 3, 224, 224)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_imagenet_input_normalises_constant_images_and_rejects_grayscale():
    x = torch.full((1, 3, 8, 8), 0.5)
    out = ImageNetInput(8)(x)
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[0, :, 0, 0], expected)
    with pytest.raises(ValueError, match="RGB"):
        ImageNetInput(8)(torch.rand(1, 1, 8, 8))


def test_wrapper_keeps_stage_names_and_is_added_once():
    bb = with_imagenet_input(torchvision_resnet("resnet18"), 64)
    assert bb.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert isinstance(bb.stages["stem"][0], ImageNetInput) and bb.stages["stem"][0].size == 64
    assert bb(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    with pytest.raises(ValueError, match="already"):
        with_imagenet_input(bb)


def test_resnet50_uses_v2_weights_and_offline_error_names_page(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert imagenet_weights_path("resnet50").name == "resnet50-11ad3fa6.pth"  # IMAGENET1K_V2
    with pytest.raises(FileNotFoundError, match="pytorch.org/vision") as err:
        imagenet_resnet("resnet50", download=False)
    assert "resnet50-11ad3fa6.pth" in str(err.value) and "load_source_model" in str(err.value)


def _stem_input(backbone, x: torch.Tensor) -> torch.Tensor:
    """The tensor the pretrained conv1 receives (after the wrapper)."""
    seen = []
    handle = backbone.stages["stem"][1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    backbone.eval()
    with torch.no_grad():
        backbone(x)
    handle.remove()
    return seen[0]


def test_script_and_notebooks_feed_the_network_the_same_tensors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TLUTILS_DATA", str(tmp_path / "data"))
    from tlutils.course.smoke import write_cifar10

    write_cifar10(tmp_path / "data" / "torchvision")
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)

    spec = importlib.util.spec_from_file_location("ddp_finetune", REPO_ROOT / "scripts" / "ddp_finetune.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = Setup("full", 0, torch.device("cpu"), tmp_path / "data", smoke=True)  # verify=False for the fake files
    model, train, _ = script.load_task(cfg, download=False)
    x = train.x[:4]
    from_script = _stem_input(model.backbone, x)
    from_notebooks = _stem_input(imagenet_resnet("resnet18"), x)  # what cells 02/03 build
    assert from_script.shape[-2:] == from_notebooks.shape[-2:] and torch.equal(from_script, from_notebooks)

    # and the notebooks' full-profile cells do build their networks with that wrapper, not a copy of it
    for name in ("02_full_fine_tuning", "03_staged_unfreezing"):
        cells = json.loads((REPO_ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        full = ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and 'cfg.profile == "full"' in
                "".join(c["source"])]
        assert full and all("imagenet_resnet(" in src and "Normalize" not in src for src in full), name
