"""Online domains read from miniature files written in the real on-disk formats torchvision expects.

Nothing here touches the network: the tests write a handful of images as MNIST idx files, an SVHN
``.mat``, USPS bz2 libsvm text, CIFAR-10 pickled batches and Omniglot PNG folders under a temporary
``TLUTILS_DATA``, then load them through ``load_domain``. SVHN, CIFAR-10 and Omniglot are checked by
md5 in torchvision, which made-up files cannot pass, so those load with ``verify=False`` (which swaps
only the integrity check for an existence check) and the md5 path is tested to fail with a hint.
"""

from __future__ import annotations

import bz2
import pickle
import struct

import numpy as np
import pytest
import torch

from tlutils.data import DomainUnavailableError, load_domain

RNG = np.random.default_rng(0)


def _idx(path, array: np.ndarray) -> None:
    magic = 0x0800 + array.ndim  # 0x08: unsigned byte
    path.write_bytes(
        struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


@pytest.fixture
def tv_root(tmp_data):
    root = tmp_data / "torchvision"
    root.mkdir(parents=True)
    return root


def test_mnist_idx_files(tv_root):
    raw = tv_root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = {s: RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 6), ("t10k", 4))}
    labels = {s: RNG.integers(0, 10, len(images[s]), dtype=np.uint8) for s in images}
    for s in images:
        _idx(raw / f"{s}-images-idx3-ubyte", images[s])
        _idx(raw / f"{s}-labels-idx1-ubyte", labels[s])
    d = load_domain("mnist", "test")
    assert d.x.shape == (4, 3, 32, 32) and d.y.tolist() == labels["t10k"].tolist()
    assert torch.equal(
        (d.x[:, 0, 2:30, 2:30] * 255).round().to(torch.uint8), torch.from_numpy(images["t10k"])
    )
    assert d.x[:, :, :2].max() == 0 and torch.equal(d.x[:, 0], d.x[:, 2])
    assert d.classes == [str(i) for i in range(10)]
    assert len(load_domain("mnist", "train")) == 6


def test_svhn_mat_file(tv_root):
    from scipy.io import savemat

    x = RNG.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)  # SVHN stores zero as 10
    savemat(tv_root / "train_32x32.mat", {"X": x, "y": y})
    d = load_domain("svhn", "train", verify=False)
    assert d.y.tolist() == [0, 1, 2, 0, 9]
    expected = torch.from_numpy(x.transpose(3, 2, 0, 1).copy())
    assert torch.equal((d.x * 255).round().to(torch.uint8), expected)
    with pytest.raises(RuntimeError, match="verify=False"):
        load_domain("svhn", "train", verify=True, cache=False)  # made-up file fails torchvision's md5


def test_usps_bz2_libsvm(tv_root):
    values = RNG.uniform(-1, 1, (3, 256)).round(4)
    labels = [1, 5, 10]  # libsvm labels 1..10 are digits 0..9
    lines = [
        f"{lab} " + " ".join(f"{j + 1}:{v}" for j, v in enumerate(row))
        for lab, row in zip(labels, values, strict=True)
    ]
    with bz2.open(tv_root / "usps.t.bz2", "wt") as f:
        f.write("\n".join(lines) + "\n")
    d = load_domain("usps", "test")
    assert d.y.tolist() == [0, 4, 9] and d.x.shape == (3, 3, 32, 32)
    pixels = torch.from_numpy(((values + 1) / 2 * 255).astype(np.uint8).reshape(3, 1, 16, 16)).float() / 255
    expected = torch.nn.functional.interpolate(pixels, size=(32, 32), mode="bilinear", align_corners=False)
    assert (d.x[:, :1] - expected).abs().max() <= 0.5 / 255 + 1e-6  # 16x16 upsampled bilinearly
    with pytest.raises(DomainUnavailableError, match="digits8x8"):
        load_domain("usps", "train")


def test_cifar10_pickled_batches(tv_root):
    folder = tv_root / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {
            "data": RNG.integers(0, 256, (2, 3072), dtype=np.uint8),
            "labels": [int(RNG.integers(10)), 3],
        }
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    d = load_domain("cifar10", "train", verify=False)
    assert len(d) == 10 and d.classes == names
    first = torch.from_numpy(batches["data_batch_1"]["data"][0].reshape(3, 32, 32))
    assert torch.equal((d.x[0] * 255).round().to(torch.uint8), first)
    test = load_domain("cifar10", "test", verify=False)
    assert test.y.tolist() == batches["test_batch"]["labels"]
    with pytest.raises(RuntimeError, match="verify=False"):
        load_domain("cifar10", "train", cache=False)


def test_omniglot_png_folders(tv_root):
    from PIL import Image

    base = tv_root / "omniglot-py" / "images_background"
    chars = [("Alpha", "character01"), ("Alpha", "character02"), ("Beta", "character01")]
    for alphabet, char in chars:
        (base / alphabet / char).mkdir(parents=True)
        for k in range(2):
            img = np.full((105, 105), 255, np.uint8)  # white paper ...
            img[20:85, 50:56] = 0  # ... with a black stroke
            Image.fromarray(img).convert("1").save(base / alphabet / char / f"{k:04d}_{k + 1:02d}.png")
    with pytest.raises(DomainUnavailableError, match="verify=False"):
        load_domain("omniglot", "background")  # extracted folders but no zip to check
    d = load_domain("omniglot", "background", verify=False)
    assert d.classes == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    assert d.info["alphabet"] == ["Alpha", "Alpha", "Beta"] and d.info["alphabets"] == ["Alpha", "Beta"]
    assert torch.bincount(d.y).tolist() == [2, 2, 2] and d.x.shape == (6, 3, 32, 32)
    assert d.x[:, :, 16, 16].min() > 0.5 and d.x[:, :, 2, 2].max() == 0  # strokes bright on black
    with pytest.raises(DomainUnavailableError, match="images_evaluation"):
        load_domain("omniglot", "evaluation", verify=False)


def test_converted_online_domain_is_cached(tv_root, monkeypatch):
    from tlutils.data import online

    raw = tv_root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for s, n in (("train", 3), ("t10k", 2)):
        _idx(raw / f"{s}-images-idx3-ubyte", RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{s}-labels-idx1-ubyte", RNG.integers(0, 10, n, dtype=np.uint8))
    first = load_domain("mnist", "train")

    def no_torchvision():
        raise AssertionError("the cached conversion should be used")

    monkeypatch.setattr(online, "_tv", no_torchvision)
    assert torch.equal(load_domain("mnist", "train", download=False).x, first.x)


def test_mnistm_blends_mnist_with_bsds500_photos(tv_root, tmp_data):
    from PIL import Image

    raw = tv_root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    digits = np.zeros((3, 28, 28), dtype=np.uint8)
    digits[:, 10:18, 12:16] = 255  # a bar: white strokes on black
    for s in ("train", "t10k"):
        _idx(raw / f"{s}-images-idx3-ubyte", digits)
        _idx(raw / f"{s}-labels-idx1-ubyte", np.array([3, 1, 4], dtype=np.uint8))
    with pytest.raises(DomainUnavailableError, match="BSDS500.*mnistm-lite"):
        load_domain("mnistm", "test")
    photos = tmp_data / "bsds500" / "images" / "train"
    photos.mkdir(parents=True)
    colours = [(200, 40, 90), (10, 120, 250)]  # flat photos: every crop of photo k is colour k
    for k, colour in enumerate(colours):
        Image.fromarray(np.full((40, 48, 3), colour, dtype=np.uint8)).save(photos / f"{k}.png")
    d = load_domain("mnistm", "test", seed=0)
    assert d.x.shape == (3, 3, 32, 32) and d.y.tolist() == [3, 1, 4] and d.info["photos"] == 2
    # |photo - digit|: off the stroke the pixel is the photo, on the white stroke it is 255 - photo
    pixels = (d.x * 255).round().to(torch.int64)
    for img in pixels:
        off, on = img[:, 4, 4].tolist(), img[:, 14, 15].tolist()
        assert tuple(off) in colours and on == [255 - c for c in off]
    assert torch.equal(load_domain("mnistm", "test", seed=0).x, d.x), "same seed, same crops"
    assert not torch.equal(load_domain("mnistm", "test", seed=1).x, d.x), "the seed picks photo and crop"
