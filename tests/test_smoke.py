"""Smoke scale of the full profile: the switch, the fake files in torchvision's formats, and the CI run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tlutils.config import REPO_ROOT, SMOKE_PER_CLASS, SMOKE_STEPS, Setup, setup
from tlutils.course.smoke import SMOKE_CHAPTERS, prepare, unexecuted_full_cells

SMOKE_RUNS = REPO_ROOT / "runs" / "smoke"


def test_switches_by_profile_and_smoke(monkeypatch):
    monkeypatch.delenv("TLUTILS_SMOKE", raising=False)
    quick, full = setup("quick"), setup("full")
    assert not quick.download and quick.verify and not quick.smoke
    assert full.download and full.verify and full.pick(quick=1, full=2, smoke=3) == 2
    assert quick.pick(quick=1, full=2, smoke=3) == 1
    monkeypatch.setenv("TLUTILS_SMOKE", "1")
    smoke = setup("full", device="cpu")
    assert smoke.smoke and not smoke.download and not smoke.verify
    assert smoke.pick(quick=1, full=2, smoke=3) == 3 and smoke.pick(quick=1, full=2) == 2
    assert setup("quick").pick(quick=1, full=2, smoke=3) == 1  # smoke never changes quick's sizes


def test_smoke_caps_steps_subsets_domains_and_uses_cpu_bf16(monkeypatch, tmp_data):
    from tlutils.data import load_domain
    from tlutils.train import fit

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            out = self.lin(x.flatten(1))
            seen.append(out.dtype)
            return out

    full = load_domain("mnist5k", "test")  # 100 per class
    monkeypatch.setenv("TLUTILS_SMOKE", "1")
    small = load_domain("mnist5k", "test")
    assert len(small) < len(full) and torch.bincount(small.y).max() <= SMOKE_PER_CLASS
    history = fit(Probe(), small, epochs=3, batch_size=8, device="cpu", progress=False)
    assert len(history.epochs) == 3 and len(history.steps) == 3 * SMOKE_STEPS
    assert torch.bfloat16 in seen  # the mixed-precision path ran on the CPU


def test_prepare_writes_files_torchvision_reads(tmp_path, monkeypatch):
    env = prepare(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from tlutils.data import load_domain
    from tlutils.imagenet import imagenet_resnet

    cfg = Setup("full", 0, torch.device("cpu"), tmp_path / "data", smoke=True)
    sizes = {}
    for name, split in (("cifar10", "train"), ("cifar10", "test"), ("mnist", "train"), ("svhn", "test"),
                        ("omniglot", "background"), ("omniglot", "evaluation"), ("mnistm", "train")):
        dom = load_domain(name, split, download=cfg.download, verify=cfg.verify)
        sizes[name, split] = len(dom)
        assert dom.x.shape[1:] == (3, 32, 32) and dom.num_classes > 1
    assert sizes["cifar10", "train"] == 40 and sizes["mnist", "train"] == 60
    folder = load_domain("folder", "train", root=str(tmp_path / "data" / "image_folder"))
    assert folder.classes == ["cat", "rocket"]
    for arch, width in (("resnet18", 512), ("resnet50", 2048)):
        assert imagenet_resnet(arch, download=False)(torch.rand(1, 3, 32, 32)).shape == (1, width)


@pytest.mark.notebooks
def test_full_profile_smoke_run(tmp_path_factory):
    """``TLUTILS_SMOKE=1 python -m tlutils.course.run --profile full`` on fake files: every chapter green, no skipped
    full-profile branch. Results go to runs/smoke/full/, never over runs/quick or runs/full."""
    files = tmp_path_factory.mktemp("smoke")
    chapters = list(SMOKE_CHAPTERS)
    proc = subprocess.run([sys.executable, "-m", "tlutils.course.smoke", "run", str(files), "--only", *chapters,
                           "--runs-dir", str(SMOKE_RUNS)], cwd=REPO_ROOT, capture_output=True, text=True)
    print(proc.stdout[-4000:])
    print(proc.stderr[-4000:], file=sys.stderr)
    results = json.loads((SMOKE_RUNS / "full" / "results.json").read_text())
    status = results["_run"]["status"]
    assert proc.returncode == 0 and all(s == "ok" for s in status.values()), status
    assert len(status) == len(chapters)
    problems = {nb.stem: unexecuted_full_cells(nb) for nb in sorted((SMOKE_RUNS / "full").glob("*.ipynb"))}
    assert not any(problems.values()), problems
    for metric in ("target_acc.cifar10.resnet18_finetune", "target_acc.folder.resnet18_finetune"):
        assert metric in results["02_full_fine_tuning"]
    assert "target_acc.cifar10.resnet50_staged" in results["03_staged_unfreezing"]
    for method in ("head", "bitfit", "lora", "adapter", "full", "lpft"):
        assert f"peft.cifar10.resnet18.acc.{method}" in results["08_lpft_peft"]


def test_online_options_only_for_online_domains():
    from tlutils.data import online_options

    assert online_options("mnist", download=True, verify=False) == {"download": True, "verify": False}
    assert online_options("mnist5k", download=True) == {}
