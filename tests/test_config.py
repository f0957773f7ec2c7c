import pytest
import torch

import tlutils
from tlutils.config import data_dir, get_device, resolve_profile, seed_everything


def test_profile_resolution(monkeypatch):
    monkeypatch.delenv("TLUTILS_PROFILE", raising=False)
    assert resolve_profile() == "quick"
    assert resolve_profile("FULL") == "full"
    monkeypatch.setenv("TLUTILS_PROFILE", "full")
    assert resolve_profile(None) == "full"
    assert resolve_profile("quick") == "quick"  # the explicit switch wins over the environment


def test_unknown_profile_lists_valid_names():
    with pytest.raises(ValueError, match="quick, full"):
        resolve_profile("fast")


def test_data_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TLUTILS_DATA", str(tmp_path / "d"))
    assert data_dir() == tmp_path / "d" and (tmp_path / "d").is_dir()


def test_cuda_requested_but_absent_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        get_device("cuda")


def test_device_order_prefers_cuda(monkeypatch):
    monkeypatch.delenv("TLUTILS_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_device().type == "cpu"


def test_seeding_is_reproducible():
    seed_everything(3)
    a = torch.rand(4)
    seed_everything(3)
    assert torch.equal(a, torch.rand(4))


def test_setup_and_pick(tmp_data):
    cfg = tlutils.setup("quick", seed=1, device="cpu")
    assert cfg.pick(quick=1, full=2) == 1 and cfg.data_dir == tmp_data
    assert tlutils.setup("full", device="cpu").pick(quick=1, full=2) == 2
