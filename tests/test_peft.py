"""Unit tests for tlutils.peft: LoRA starts at the pretrained model, merges exactly, saves only its factors;
BitFit and adapters train what they say; count_parameters counts it."""

import copy

import pytest
import torch
from torch import nn

from tests.helpers import tiny_model, toy_data
from tlutils.finetune import fit_one_cycle, tile
from tlutils.peft import (
    Adapter,
    LoRA,
    add_adapters,
    apply_lora,
    bitfit,
    checkpoint_bytes,
    count_parameters,
    lora_state_dict,
    merge_lora,
    trainable_parameters,
)


def _trained_lora(r=2):
    model = apply_lora(tiny_model(), r=r)
    x, y = toy_data()
    fit_one_cycle(model, tile((x, y), 96), [{"params": trainable_parameters(model), "lr": 1e-2}], epochs=2,
                  batch_size=16, seed=0, progress=False)
    return model.eval(), x


@pytest.mark.parametrize("base", [nn.Linear(6, 5), nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 8, 3, 2, 1, bias=False)])
def test_lora_starts_as_base_and_equals_w_plus_scaled_ba(base):
    torch.manual_seed(0)
    x = torch.randn(2, 6) if isinstance(base, nn.Linear) else torch.randn(2, 4, 7, 7)
    before = base(x).detach()
    layer = LoRA(copy.deepcopy(base), r=3, alpha=6)
    assert torch.equal(layer(x), before), "B = 0: the wrapped layer starts as the pretrained one"
    assert not layer.base.weight.requires_grad and layer.lora_A.requires_grad and layer.lora_B.requires_grad
    with torch.no_grad():
        layer.lora_B.normal_()
    w = base.weight + 2.0 * (layer.lora_B @ layer.lora_A).view_as(base.weight)
    ref = base._conv_forward(x, w, base.bias) if isinstance(base, nn.Conv2d) else nn.functional.linear(x, w, base.bias)
    torch.testing.assert_close(layer(x), ref)


def test_lora_rejects_bad_input():
    with pytest.raises(TypeError, match="nn.Linear or nn.Conv2d"):
        LoRA(nn.BatchNorm2d(3), r=2)
    with pytest.raises(ValueError, match="rank"):
        LoRA(nn.Linear(3, 3), r=0)


def test_apply_lora_trains_factors_and_head_only_and_merge_gives_same_outputs():
    model, x = _trained_lora()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(("lora_A", "lora_B")) or n.startswith("head.") for n in names)
    assert count_parameters(model) < 0.5 * count_parameters(model, trainable=False)
    assert any(float(m.lora_B.detach().abs().sum()) > 0 for m in model.modules() if isinstance(m, LoRA)), "B moved"
    with torch.no_grad():
        out = model(x)
        merged = merge_lora(copy.deepcopy(model)).eval()
        assert not any(isinstance(m, LoRA) for m in merged.modules())
        torch.testing.assert_close(merged(x), out, rtol=1e-4, atol=1e-5)


def test_lora_state_dict_holds_only_the_factors():
    model, _ = _trained_lora()
    state = lora_state_dict(model)
    assert state and all(k.endswith(("lora_A", "lora_B")) for k in state)
    assert sum(v.numel() for v in state.values()) == sum(
        p.numel() for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B")))
    with_head = lora_state_dict(model, also=("head",))
    assert set(with_head) - set(state) == {"head.weight", "head.bias"}
    assert checkpoint_bytes(state) < checkpoint_bytes(model.state_dict())


def test_bitfit_trains_biases_norm_affine_and_head():
    model = bitfit(tiny_model())
    for name, p in model.named_parameters():
        is_norm = any(name.startswith(n + ".") for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
        expected = name.startswith("head.") or name.endswith("bias") or is_norm
        assert p.requires_grad == expected, name
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    model.train()
    x, _ = toy_data()
    stats = [m.running_mean.clone() for m in bns]
    model(x)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, bns, strict=True)), "pretrained BN statistics"


def test_adapters_start_as_identity_and_only_they_and_the_head_train():
    model = tiny_model().eval()
    x, _ = toy_data(8)
    before = model(x).detach()
    add_adapters(model, reduction=2)
    model.eval()
    torch.testing.assert_close(model(x), before)
    adapters = [m for m in model.modules() if isinstance(m, Adapter)]
    assert len(adapters) == len(model.backbone.stages)
    expected = sum(p.numel() for a in adapters for p in a.parameters())
    expected += sum(p.numel() for p in model.head.parameters())
    assert count_parameters(model) == expected


def test_count_parameters_by_hand():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable=False) == 3 * 4 + 4 + 4 * 2 + 2
    assert count_parameters(model) == 4 + 4 * 2 + 2
