"""Profiles, data directory, device and seeding: the one place a run is configured.

A notebook calls ``cfg = tlutils.setup(PROFILE, SEED)`` once; every size then comes from
``cfg.pick(quick=..., full=...)`` so the two profiles sit side by side where they are used.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PROFILES = ("quick", "full")
"""quick: minutes on a laptop CPU. full: GPU scale, closer to the papers' settings."""

REPO_ROOT = Path(__file__).resolve().parent.parent

SMOKE_STEPS = 2
"""Under ``TLUTILS_SMOKE=1``: the most optimisation steps per epoch (``fit``) and meta-steps (``maml``)."""

SMOKE_PER_CLASS = 50
"""Under ``TLUTILS_SMOKE=1``: the most examples per class ``load_domain`` returns (a seeded subset)."""

_UNSET = object()


def smoke_enabled() -> bool:
    """True when ``$TLUTILS_SMOKE`` is ``1``: the smoke scale that proves code paths run and measures nothing.

    It cuts every training loop to ``SMOKE_STEPS`` steps per epoch and every domain split to
    ``SMOKE_PER_CLASS`` examples per class, turns on bf16 autocast on the CPU,
    never downloads (``Setup.download`` is False) and accepts files without torchvision's md5
    (``Setup.verify`` is False), so the full profile runs offline on the tiny files of ``tlutils.course.smoke``.
    """
    return os.environ.get("TLUTILS_SMOKE", "0").strip() == "1"


def smoke_cap(n: int) -> int:
    """``n``, or at most ``SMOKE_STEPS`` under ``TLUTILS_SMOKE=1`` (a loop's step count at smoke scale)."""
    return min(n, SMOKE_STEPS) if smoke_enabled() else n


def resolve_profile(profile: str | None = None) -> str:
    """Return the profile name: the argument, else ``$TLUTILS_PROFILE``, else ``"quick"``."""
    name = profile if profile is not None else os.environ.get("TLUTILS_PROFILE", "quick")
    name = str(name).strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r}; valid profiles are {', '.join(PROFILES)} "
            "(set PROFILE in the notebook's parameters cell or the TLUTILS_PROFILE variable)"
        )
    return name


def data_dir() -> Path:
    """Directory of generated domains, feature caches and checkpoints (``$TLUTILS_DATA`` or ``<repo>/data``)."""
    path = Path(os.environ.get("TLUTILS_DATA", REPO_ROOT / "data")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def get_device(prefer: str | None = None) -> torch.device:
    """Pick a device: ``prefer`` if given (error if unavailable), else cuda > mps > cpu.

    ``$TLUTILS_DEVICE`` is used when ``prefer`` is None, so CI or a user can pin a device.
    """
    prefer = prefer or os.environ.get("TLUTILS_DEVICE") or None
    if prefer is not None:
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {prefer!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use device='cpu', or unset TLUTILS_DEVICE to pick the best available device"
            )
        if dev.type == "mps" and not (torch.backends.mps.is_available()):
            raise RuntimeError(f"device {prefer!r} was requested but MPS is not available; use device='cpu'")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"unsupported device {prefer!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (all devices); return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def progress_enabled(progress: bool | None) -> bool:
    """Progress bars are on unless ``progress=False`` or ``$TLUTILS_PROGRESS=0`` (the runner sets it)."""
    if progress is not None:
        return progress
    return os.environ.get("TLUTILS_PROGRESS", "1") != "0"


def set_cpu_threads() -> int:
    """Use the physical cores for intra-op work (``$TLUTILS_THREADS`` overrides); return the count."""
    n = int(os.environ.get("TLUTILS_THREADS", 0)) or (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


@dataclass(frozen=True)
class Setup:
    """What ``setup`` resolved: profile, seed, device and data dir, plus ``pick`` for sizes."""

    profile: str
    seed: int
    device: torch.device
    data_dir: Path
    smoke: bool = False
    """``TLUTILS_SMOKE=1``: tiny local files, a handful of steps (see ``smoke_enabled``)."""

    def pick(self, *, quick, full, smoke=_UNSET):
        """Return the value for the active profile: ``cfg.pick(quick=3, full=30)``.

        ``smoke``, when given, replaces ``full`` at smoke scale (data and evaluation sizes; step counts
        are cut by the training loops themselves).
        """
        if self.profile == "quick":
            return quick
        return smoke if (self.smoke and smoke is not _UNSET) else full

    @property
    def download(self) -> bool:
        """Whether online files may be downloaded: in the full profile only, never at smoke scale.

        Pass it on: ``load_domain("cifar10", "train", download=cfg.download, verify=cfg.verify)``,
        ``imagenet_resnet("resnet18", download=cfg.download)``. Under torchrun only rank 0 downloads.
        """
        return self.profile == "full" and not self.smoke

    @property
    def verify(self) -> bool:
        """Whether online files must pass torchvision's md5 checks (False at smoke scale: its files are fakes)."""
        return not self.smoke

    def __str__(self) -> str:
        smoke = " smoke" if self.smoke else ""
        return f"profile={self.profile}{smoke} seed={self.seed} device={self.device} data_dir={self.data_dir}"


def setup(profile: str | None = None, seed: int = 0, device: str | None = None) -> Setup:
    """Resolve profile, device and data dir, seed everything, and print one line saying so."""
    cfg = Setup(resolve_profile(profile), int(seed), get_device(device), data_dir(), smoke_enabled())
    if cfg.device.type == "cpu":
        set_cpu_threads()
    seed_everything(cfg.seed)
    print(f"tlutils: {cfg}")
    return cfg
