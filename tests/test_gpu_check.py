"""scripts/gpu_check.py: says so and exits 0 without CUDA; its measuring code runs (on the CPU here)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tlutils.config import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the no-CUDA message does not apply")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert _script().main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_all_four_settings_measure_on_cpu(capsys):
    assert _script().main(["--device", "cpu", "--steps", "1", "--batch-size", "2", "--size", "48"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "images/s" in line]
    assert len(lines) == 4 and any("bf16" in line and "channels_last" in line for line in lines)
