"""Backbones with named stages, heads, and checkpoints that carry their own description.

Every backbone exposes the same stage names (``stem, stage1, stage2, stage3, stage4``) so that
freezing, feature probing and discriminative learning rates work on any of them: the small
ResNet for 32x32 images used offline, and torchvision's ResNet-18/50 (ImageNet weights when online).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.atomic import atomic_write

STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convs with a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Backbone(nn.Module):
    """A feature extractor made of named stages, ending in global average pooling.

    ``stages`` is an ordered ``nn.ModuleDict``; ``forward`` returns pooled features of size
    ``out_features``; ``forward_stages`` returns every stage's feature map (for probes and MMD).
    """

    def __init__(self, stages: OrderedDict[str, nn.Module], stage_channels: dict[str, int], arch: str, **config):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.stage_channels = dict(stage_channels)
        self.out_features = self.stage_channels[list(self.stages)[-1]]
        self.arch = arch
        self.config = dict(config)

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward_stages(self, x: torch.Tensor, upto: str | None = None) -> dict[str, torch.Tensor]:
        """Feature maps after each stage (until ``upto`` inclusive)."""
        if upto is not None and upto not in self.stages:
            raise ValueError(f"unknown stage {upto!r}; stages are {self.stage_names}")
        maps = {}
        for name, stage in self.stages.items():
            x = stage(x)
            maps[name] = x
            if name == upto:
                break
        return maps


def resnet_small(widths: tuple[int, ...] = (24, 48, 96, 192), blocks: tuple[int, ...] = (1, 1, 1, 1)) -> Backbone:
    """A ResNet for 32x32 inputs: a 3x3 stem, then four stages of basic blocks that each halve the
    resolution (32 -> 16 -> 8 -> 4 -> 2).

    With the default widths it has about 0.75M parameters: small enough to pretrain in minutes on a
    laptop CPU, deep enough that its stages learn a general-to-specific hierarchy.
    """
    if len(widths) != 4 or len(blocks) != 4:
        raise ValueError(f"resnet_small needs 4 widths and 4 block counts, got widths={widths}, blocks={blocks}")
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    stages["stem"] = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
    channels = {"stem": widths[0]}
    c_in = widths[0]
    for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
        layers = [BasicBlock(c_in if j == 0 else width, width, stride=(2 if j == 0 else 1)) for j in range(n)]
        stages[f"stage{i + 1}"] = nn.Sequential(*layers)
        channels[f"stage{i + 1}"] = width
        c_in = width
    return Backbone(stages, channels, "resnet_small", widths=list(widths), blocks=list(blocks))


IMAGENET_WEIGHTS = {
    "resnet18": ("ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V2"),
}
"""The ImageNet-1k weights each torchvision arch loads (ResNet-50's V2: torchvision's newer, stronger recipe)."""
WEIGHTS_PAGE = "https://pytorch.org/vision/stable/models.html"


def _imagenet_enum(arch: str):
    from torchvision import models as tvm

    cls, member = IMAGENET_WEIGHTS[arch]
    return getattr(getattr(tvm, cls), member)


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision caches the ImageNet weights of ``arch`` (under ``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_imagenet_enum(arch).url).name


def torchvision_resnet(arch: str = "resnet18", weights: str | None = None, download: bool = False) -> Backbone:
    """torchvision's ResNet-18/50 with the project's stage names (stem = conv1+bn1+relu+maxpool).

    ``weights="imagenet"`` loads the ImageNet-1k weights (``IMAGENET_WEIGHTS``) from torchvision's cache;
    when they are not cached and ``download`` is False the call fails at once, naming the file, the
    download page and the offline alternative. Inputs must be prepared as the weights expect:
    ``tlutils.imagenet.imagenet_resnet`` adds that step.
    """
    from torchvision import models as tvm

    if arch not in IMAGENET_WEIGHTS:
        raise ValueError(f"unknown torchvision arch {arch!r}; choose one of {sorted(IMAGENET_WEIGHTS)}")
    net = getattr(tvm, arch)(weights=None)
    if weights is not None:
        if weights != "imagenet":
            raise ValueError(f"weights must be None or 'imagenet', got {weights!r}")
        path = imagenet_weights_path(arch)
        wenum = _imagenet_enum(arch)
        if not path.exists() and not download:
            raise FileNotFoundError(
                f"ImageNet weights for {arch} ({'.'.join(IMAGENET_WEIGHTS[arch])}) are not cached at {path} and "
                f"downloading is off. With internet, pass download=True (the full profile does) or fetch "
                f"{wenum.url} (listed on {WEIGHTS_PAGE}) into that folder; offline, use the glyph-pretrained "
                f"backbone of notebook 00 (tlutils.source.load_source_model) instead."
            )
        state = (
            wenum.get_state_dict(progress=False, check_hash=False)
            if not path.exists()
            else torch.load(path, map_location="cpu", weights_only=True)
        )
        load_weights(net, state)
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        stage1=net.layer1,
        stage2=net.layer2,
        stage3=net.layer3,
        stage4=net.layer4,
    )
    expansion = 4 if arch == "resnet50" else 1
    channels = {
        "stem": 64,
        "stage1": 64 * expansion,
        "stage2": 128 * expansion,
        "stage3": 256 * expansion,
        "stage4": 512 * expansion,
    }
    return Backbone(stages, channels, arch, pretrained=weights)


def make_head(in_features: int, num_classes: int, hidden: int | None = None, dropout: float = 0.5) -> nn.Module:
    """A new task head: Linear, or Linear-ReLU-Dropout-Linear when ``hidden`` is given."""
    if hidden is None:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


class Classifier(nn.Module):
    """``backbone`` (features) + ``head`` (task): the split every fine-tuning strategy acts on."""

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class GaninCNN(Backbone):
    """DANN's MNIST feature extractor (Ganin et al. 2016): conv5x5(32)-ReLU-pool, conv5x5(48)-ReLU-pool, flattened.

    Like the paper it looks at the central ``crop`` x ``crop`` pixels (28: the 32 x 32 domains are 28 x 28
    digits padded by 2) and keeps the spatial layout: 48 x 4 x 4 = 768 features. Stages are named ``stem``
    and ``stage1``; inputs in [0, 1] are mapped to [-1, 1]. ``batch_norm=True`` (chapters 04-05's recipe) puts
    a BatchNorm after each convolution, as widely used PyTorch DANN implementations do: fed one domain at a
    time, it normalises each domain by its own batch statistics, which removes most of the low-level shift
    (colour, contrast) before the adaptation loss sees the features.
    """

    def __init__(self, widths: tuple[int, int] = (32, 48), crop: int = 28, batch_norm: bool = False):
        if not 16 <= crop <= 32:
            raise ValueError(
                f"crop must lie in [16, 32] (two 5x5 conv + pool blocks on 32 x 32 inputs), got {crop}"
            )
        c1, c2 = widths

        def block(c_in: int, c_out: int) -> nn.Sequential:
            norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
            return nn.Sequential(nn.Conv2d(c_in, c_out, 5), *norm, nn.ReLU(), nn.MaxPool2d(2))

        stages = OrderedDict(stem=block(3, c1), stage1=block(c1, c2))
        super().__init__(stages, {"stem": c1, "stage1": c2}, "ganin_cnn", widths=list(widths), crop=crop,
                         batch_norm=batch_norm)
        side = ((crop - 4) // 2 - 4) // 2
        self.crop = crop
        self.out_features = c2 * side * side

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        top = (x.shape[-2] - self.crop) // 2
        left = (x.shape[-1] - self.crop) // 2
        if top < 0 or left < 0:
            raise ValueError(f"inputs of size {tuple(x.shape[-2:])} are smaller than the crop {self.crop}")
        return x[..., top : top + self.crop, left : left + self.crop] * 2.0 - 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare(x)
        for stage in self.stages.values():
            x = stage(x)
        return torch.flatten(x, 1)

    def forward_stages(self, x: torch.Tensor, upto: str | None = None) -> dict[str, torch.Tensor]:
        return super().forward_stages(self._prepare(x), upto)


def mlp(in_features: int, out_features: int, hidden: tuple[int, ...] = ()) -> nn.Sequential:
    """Linear-ReLU per hidden width, then a Linear to ``out_features`` (DANN's label and domain heads)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def ganin_cnn(
    num_classes: int = 10, widths: tuple[int, int] = (32, 48), crop: int = 28, batch_norm: bool = False
) -> Classifier:
    """DANN's MNIST network as a ``Classifier``: ``GaninCNN`` + the paper's label head fc100-ReLU-fc100-ReLU-fc."""
    backbone = GaninCNN(widths, crop, batch_norm)
    return Classifier(backbone, mlp(backbone.out_features, num_classes, (100, 100)))


ARCHS = ("resnet_small", "resnet18", "resnet50", "ganin_cnn")


def build_backbone(arch: str, **kwargs) -> Backbone:
    """Build a backbone by name (one of ``ARCHS``)."""
    if arch == "resnet_small":
        return resnet_small(**kwargs)
    if arch in ("resnet18", "resnet50"):
        return torchvision_resnet(arch, **kwargs)
    if arch == "ganin_cnn":  # chapters 04-05's small digit network (Ganin et al. 2016)
        return GaninCNN(**kwargs)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def build_model(arch: str, num_classes: int, head_hidden: int | None = None, **backbone_kwargs) -> Classifier:
    """A ``Classifier`` with a fresh head on a backbone built by name (``ganin_cnn`` gets its paper's head)."""
    if arch == "ganin_cnn":
        return ganin_cnn(num_classes, **backbone_kwargs)
    backbone = build_backbone(arch, **backbone_kwargs)
    return Classifier(backbone, make_head(backbone.out_features, num_classes, head_hidden))


def load_weights(module: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
    """``load_state_dict`` with an error that names each mismatched layer and both shapes."""
    own = module.state_dict()
    bad = [
        f"  {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    if bad:
        raise ValueError(
            "checkpoint does not fit the model; mismatched shapes:\n"
            + "\n".join(bad)
            + "\nBuild the model with the checkpoint's architecture/number of classes, "
            "or load only the backbone (module.backbone) and attach a new head."
        )
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint does not fit the model: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


def _versions() -> dict[str, str]:
    import torchvision

    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def checkpoint_metadata(model: Classifier, **metadata) -> dict:
    """What a checkpoint records beside the weights: architecture, backbone config, number of classes, head
    shape, versions, and any keyword given (domain, classes, profile, seed, metrics...), as plain JSON types."""
    head_hidden = model.head[0].out_features if isinstance(model.head, nn.Sequential) else None
    num_classes = model.head[-1].out_features if isinstance(model.head, nn.Sequential) else model.head.out_features
    meta = {
        "arch": model.backbone.arch,
        "backbone_config": model.backbone.config,
        "num_classes": num_classes,
        "head_hidden": head_hidden,
        "versions": _versions(),
        **metadata,
    }
    return json.loads(json.dumps(meta, default=str))  # plain types only: loadable with weights_only=True


def write_checkpoint(model: Classifier, f: BinaryIO, **metadata) -> None:
    """Write the weights and :func:`checkpoint_metadata` (what is needed to rebuild the model) to the file ``f``."""
    torch.save({"metadata": checkpoint_metadata(model, **metadata), "state_dict": model.state_dict()}, f)


def save_checkpoint(model: Classifier, path: str | os.PathLike, **metadata) -> Path:
    """:func:`write_checkpoint` to ``path`` atomically (temp file + rename); returns ``path``."""
    return atomic_write(path, lambda f: write_checkpoint(model, f, **metadata))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Rebuild the model a checkpoint describes and load its weights; returns ``(model in eval mode, metadata)``."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        meta, state = blob["metadata"], blob["state_dict"]
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated or foreign file
        raise ValueError(f"{path} is not a readable tlutils checkpoint ({exc}); delete it and rebuild it") from exc
    arch = meta["arch"]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.get("backbone_config", {}).items()}
    kwargs.pop("pretrained", None)
    model = build_model(arch, meta["num_classes"], meta.get("head_hidden"), **kwargs)
    load_weights(model, state)
    return model.eval(), meta  # eval mode: using it must not move batch-norm statistics (fit sets train mode)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
