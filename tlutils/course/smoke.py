"""The smoke scale of the full profile: tiny local files in the real on-disk formats, then the runner.

    python -m tlutils.course.smoke prepare DIR           # write the fake files; print the environment to use
    python -m tlutils.course.smoke run DIR [--only 00 02]  # prepare, then run the full profile at smoke scale

``prepare`` writes, under ``DIR/data`` (used as ``TLUTILS_DATA``) and ``DIR/torch`` (``TORCH_HOME``):
CIFAR-10 python pickles, MNIST idx files, SVHN ``.mat`` files, Omniglot's extracted folders of PNGs,
"BSDS500" photos for MNIST-M, an image folder of two classes (crops of photos bundled with
scikit-image), and ResNet-18/50 state dicts with random weights under torchvision's cache file names.
The pixels are noise or photo crops and the weights are random: the run proves that every full-profile
cell executes (downloads off, md5 checks off, a handful of steps per loop, bf16 autocast on the CPU),
and measures nothing. ``run`` writes to ``runs/smoke/full/``, never over ``runs/quick`` or ``runs/full``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

from tlutils.config import REPO_ROOT
from tlutils.models import IMAGENET_WEIGHTS
from tlutils.results import MIME

SMOKE_RUNS_DIR = REPO_ROOT / "runs" / "smoke"
SMOKE_CHAPTERS = ("00", "01", "02", "03", "04", "05", "06", "07", "08", "09")
"""Chapters the smoke test runs (all of them)."""
FOLDER_CLASSES = {"cat": "chelsea", "rocket": "rocket"}
"""The fake image folder: class name -> scikit-image photo its images are cropped from."""


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def write_cifar10(root: Path, per_batch: int = 8, test: int = 20) -> None:
    """``root/cifar-10-batches-py``: five train batches, a test batch and ``batches.meta`` (python pickles)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng("cifar10")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for fname, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        batch = {"batch_label": fname, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in np.arange(n) % 10], "filenames": [f"{fname}_{i}.png" for i in range(n)]}
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)


def _idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, train: int = 60, test: int = 20) -> None:
    """``root/MNIST/raw``: the four idx files (uncompressed, as torchvision leaves them after extracting)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = _rng("mnist")
    for prefix, n in (("train", train), ("t10k", test)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def write_svhn(root: Path, train: int = 40, test: int = 20) -> None:
    """``root/{train,test}_32x32.mat``: ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) with 10 for the digit 0."""
    import scipy.io as sio

    root.mkdir(parents=True, exist_ok=True)
    rng = _rng("svhn")
    for split, n in (("train", train), ("test", test)):
        y = (np.arange(n) % 10).reshape(n, 1)
        y[y == 0] = 10
        sio.savemat(root / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": y})


def write_omniglot(root: Path, alphabets: int = 2, characters: int = 3, drawings: int = 4) -> None:
    """``root/omniglot-py/images_{background,evaluation}/<Alphabet>/characterNN/*.png``: 105x105 greyscale."""
    from PIL import Image

    rng = _rng("omniglot")
    for split in ("background", "evaluation"):
        for a in range(alphabets):
            for c in range(characters):
                alphabet = root / "omniglot-py" / f"images_{split}" / f"{split.title()}_Script_{a}"
                folder = alphabet / f"character{c + 1:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                for d in range(drawings):
                    ink = rng.random((105, 105)) < 0.1
                    Image.fromarray(np.where(ink, 0, 255).astype(np.uint8), "L").convert("1").save(
                        folder / f"{a:02d}{c:02d}_{d + 1:02d}.png")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    return np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]


def write_photos(folder: Path, photo: str, n: int, side: int = 96, ext: str = ".jpg") -> None:
    """``n`` random square crops (``side`` px, some flipped) of a scikit-image photo, saved as JPEG/PNG files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    img, rng = _photo(photo), _rng(photo)
    for i in range(n):
        s = int(side * (1 + (i % 3) / 2))  # mixed sizes, as real folders have
        top, left = rng.integers(img.shape[0] - s), rng.integers(img.shape[1] - s)
        crop = img[top : top + s, left : left + s]
        Image.fromarray(crop[:, ::-1] if i % 2 else crop).save(folder / f"{photo}_{i:02d}{ext}")


def write_imagenet_weights(torch_home: Path) -> list[Path]:
    """Random-weight ResNet-18/50 state dicts under torchvision's cache names in ``torch_home/hub/checkpoints``."""
    import torch
    from torchvision import models as tvm


    out = []
    for arch, (cls, member) in IMAGENET_WEIGHTS.items():
        path = torch_home / "hub" / "checkpoints" / Path(getattr(getattr(tvm, cls), member).url).name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            torch.manual_seed(0)
            torch.save(getattr(tvm, arch)(weights=None).state_dict(), path)
        out.append(path)
    return out


def prepare(directory: str | os.PathLike) -> dict[str, str]:
    """Write every fake file under ``directory``; return the environment of a smoke run that uses them."""
    base = Path(directory).expanduser().resolve()
    data, torch_home = base / "data", base / "torch"
    tv = data / "torchvision"
    write_cifar10(tv)
    write_mnist(tv)
    write_svhn(tv)
    write_omniglot(tv)
    write_photos(data / "bsds500", "astronaut", 3, side=120)
    for name, photo in FOLDER_CLASSES.items():
        write_photos(data / "image_folder" / name, photo, 6, side=64, ext=".jpg" if name == "cat" else ".png")
    write_imagenet_weights(torch_home)
    return {"TLUTILS_DATA": str(data), "TORCH_HOME": str(torch_home), "TLUTILS_SMOKE": "1"}


FULL_BRANCH = 'cfg.profile == "full"'


def unexecuted_full_cells(notebook: str | os.PathLike) -> list[str]:
    """Cells of an executed notebook that did not run, or full-profile branches that recorded nothing.

    A full-profile branch is a code cell containing ``cfg.profile == "full"``; by convention each ends
    with a ``record(...)``, so a branch that returns early or skips (a missing file, a forgotten switch)
    shows up here. Returns one line per offending cell, empty when all ran.
    """
    import nbformat


    nb = nbformat.read(str(notebook), as_version=4)
    problems = []
    for k, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        first = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
        if cell.get("execution_count") is None:
            problems.append(f"code cell {k} ({first!r}) was not executed")
        elif FULL_BRANCH in cell.source and not any(MIME in o.get("data", {}) for o in cell.get("outputs", [])):
            problems.append(f"code cell {k} ({first!r}) is a full-profile branch that recorded nothing (skipped?)")
    return problems


def run(directory: str | os.PathLike, only: list[str] | None = None, runs_dir: Path = SMOKE_RUNS_DIR) -> int:
    """Prepare the files, then run the full profile (``tlutils.course.run``) at smoke scale; return its exit code."""
    env = {**os.environ, **prepare(directory)}
    cmd = [sys.executable, "-m", "tlutils.course.run", "--profile", "full", "--runs-dir", str(runs_dir)]
    return subprocess.call(cmd + (["--only", *only] if only else []), env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlutils.course.smoke", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the fake files and print the environment to use")
    p.add_argument("directory", type=Path)
    r = sub.add_parser("run", help="prepare, then run the chapters in the full profile at smoke scale")
    r.add_argument("directory", type=Path)
    r.add_argument("--only", nargs="+", metavar="NN", default=list(SMOKE_CHAPTERS))
    r.add_argument("--runs-dir", type=Path, default=SMOKE_RUNS_DIR)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        for k, v in prepare(args.directory).items():
            print(f"export {k}={v}")
        return 0
    return run(args.directory, args.only, args.runs_dir)


if __name__ == "__main__":
    sys.exit(main())
