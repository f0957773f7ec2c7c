"""Parameter-efficient fine-tuning (chapter 08): LoRA, BitFit, bottleneck adapters, and counting what trains.

Each method starts from a ``Classifier`` with a new head (``tlutils.finetune.with_new_head``), freezes the
backbone with ``tlutils.finetune.freeze`` (weights fixed, batch norms on their pretrained running statistics)
and then makes a small set of parameters trainable; the head always trains. At the start every method computes
exactly the pretrained model's features: LoRA's ``B`` and the adapters' up-projections start at zero.

* LoRA (Hu et al. 2021): ``W x`` becomes ``(W + (alpha / r) B A) x`` with ``W`` frozen, ``A`` (r x d_in) and
  ``B`` (d_out x r) trained; after training ``merge_lora`` folds ``(alpha / r) B A`` into ``W``.
* BitFit (Ben Zaken et al. 2022): only the biases (and the normalisation layers' affine parameters) train.
* Adapters (Houlsby et al. 2019): a residual bottleneck ``x + up(relu(down(x)))`` after each backbone stage.
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.finetune import HEAD, freeze

LORA_FACTORS = ("lora_A", "lora_B")


class LoRA(nn.Module):
    """A frozen ``nn.Linear`` or ``nn.Conv2d`` plus a trainable low-rank update (chapter 08, section 1: read the code).

    The effective weight is ``W + (alpha / r) * (B @ A).view_as(W)``: ``A`` has shape ``(r, fan_in)`` and
    ``B`` ``(out, r)``, where ``fan_in`` is ``in_features`` (linear) or ``in_channels / groups * kh * kw``
    (convolution). ``A`` starts like a layer's default init, ``B`` at zero, so the wrapped layer first
    computes exactly what the pretrained one did.
    """

    def __init__(self, base: nn.Linear | nn.Conv2d, r: int, alpha: float | None = None):
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"LoRA wraps nn.Linear or nn.Conv2d, got {type(base).__name__}")
        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        self.base, self.r = base, int(r)
        self.alpha = float(alpha if alpha is not None else r)
        for p in base.parameters():
            p.requires_grad_(False)
        out, fan_in = base.weight.shape[0], base.weight[0].numel()
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, fan_in, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A`` in the shape of the base weight."""
        return (self.scale * (self.lora_B @ self.lora_A)).view_as(self.base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base.weight + self.delta_weight()
        if isinstance(self.base, nn.Linear):
            return F.linear(x, weight, self.base.bias)
        return self.base._conv_forward(x, weight, self.base.bias)

    def merged(self) -> nn.Linear | nn.Conv2d:
        """The base layer with the update folded into its weight (no extra cost at inference)."""
        with torch.no_grad():
            self.base.weight.add_(self.delta_weight())
        return self.base


def _replace(model: nn.Module, make, skip: tuple[str, ...]) -> int:
    """Replace every submodule ``m`` for which ``make(m)`` is not None (outside ``skip`` prefixes)."""
    n = 0
    for name, module in list(model.named_modules()):
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if any(full == s or full.startswith(s + ".") for s in skip):
                continue
            new = make(child)
            if new is not None:
                setattr(module, child_name, new)
                n += 1
    return n


def apply_lora(model: nn.Module, r: int, alpha: float | None = None) -> nn.Module:
    """Freeze ``model``'s backbone and wrap each of its ``nn.Linear``/``nn.Conv2d`` in ``LoRA`` (in place).

    The head stays fully trainable (a new task needs a new head). Returns ``model``.
    """
    freeze(model)
    n = _replace(model, lambda m: LoRA(m, r, alpha) if isinstance(m, (nn.Linear, nn.Conv2d)) else None, (HEAD,))
    if n == 0:
        raise ValueError("apply_lora found no nn.Linear or nn.Conv2d in the backbone to wrap")
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every ``LoRA`` update into its base weight and unwrap it (in place); returns ``model``."""
    _replace(model, lambda m: m.merged() if isinstance(m, LoRA) else None, ())
    return model


def lora_state_dict(model: nn.Module, also: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The LoRA factors only (``...lora_A``, ``...lora_B``), plus every entry under the prefixes ``also``
    (e.g. ``("head",)``): what a task checkpoint must store when the pretrained weights are shared."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] in LORA_FACTORS or any(k.startswith(p + ".") for p in also)}


def bitfit(model: nn.Module) -> nn.Module:
    """BitFit: freeze the backbone, then let its biases and normalisation affine parameters train (in place).

    The batch norms keep their pretrained running statistics (``freeze`` holds them in eval mode); only their
    scale and shift move. Returns ``model``.
    """
    freeze(model)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    for module in model.backbone.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, norms):
                p.requires_grad_(True)
    return model


class Adapter(nn.Module):
    """Bottleneck adapter for feature maps: ``x + up(relu(down(x)))`` with 1x1 convolutions.

    ``up`` starts at zero, so the adapter starts as the identity (Houlsby et al. 2019's near-identity init).
    """

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.down = nn.Conv2d(channels, bottleneck, 1)
        self.up = nn.Conv2d(bottleneck, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(x)))


def add_adapters(model: nn.Module, reduction: int = 8) -> nn.Module:
    """Freeze the backbone and put a trainable ``Adapter`` (``channels // reduction`` wide) after each stage.

    Each stage becomes ``nn.Sequential(stage, adapter)``, so stage names (and ``freeze``) still apply.
    """
    freeze(model)
    backbone = model.backbone
    device = next(backbone.parameters()).device
    for name in list(backbone.stages):
        c = backbone.stage_channels[name]
        backbone.stages[name] = nn.Sequential(backbone.stages[name], Adapter(c, max(1, c // reduction)).to(device))
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad``: what the optimizer gets."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module, trainable: bool = True) -> int:
    """Number of trainable parameters (``trainable=False``: all of them)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def checkpoint_bytes(state: dict[str, torch.Tensor]) -> int:
    """Size in bytes of ``torch.save(state)``: what a checkpoint of this state dict costs on disk."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes
