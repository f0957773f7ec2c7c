"""The image-folder domain: your own photos (class-per-subfolder) as a ``Domain``, and its bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tlutils.course.smoke import write_photos
from tlutils.data import load_domain


@pytest.fixture
def photo_folder(tmp_path, tmp_data):
    """root/cat (JPEG crops of skimage's chelsea, three sizes) and root/coffee (PNG crops of skimage's coffee)."""
    root = tmp_path / "photos"
    write_photos(root / "cat", "chelsea", 10, side=40, ext=".jpg")
    write_photos(root / "coffee", "coffee", 5, side=50, ext=".png")
    return root


def test_folder_domain_splits_classes_and_format(photo_folder):
    train = load_domain("folder", "train", root=str(photo_folder))
    test = load_domain("folder", "test", root=str(photo_folder))
    assert train.classes == test.classes == ["cat", "coffee"]
    assert train.x.shape[1:] == (3, 32, 32) and train.x.dtype == torch.float32
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0 and float(train.x.std()) > 0.05
    # 20% of each class is test (at least one), the rest train: 10 -> 8 + 2, 5 -> 4 + 1
    assert torch.bincount(train.y).tolist() == [8, 4] and torch.bincount(test.y).tolist() == [2, 1]
    assert train.info["skipped"] == 0
    # no image in both splits
    flat_train, flat_test = train.x.flatten(1), test.x.flatten(1)
    assert not any(torch.equal(a, b) for a in flat_test for b in flat_train)
    # the split is fixed: a second load (from the cache) and an uncached rebuild agree
    again = load_domain("folder", "test", root=str(photo_folder), cache=False)
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)


def test_unreadable_files_are_skipped_and_counted(photo_folder):
    (photo_folder / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photo_folder / "coffee" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        train = load_domain("folder", "train", root=str(photo_folder))
    assert train.info["skipped"] == 2 and len(train) == 12


def test_cache_follows_the_folder_contents(photo_folder):
    before = len(load_domain("folder", "train", root=str(photo_folder)))
    write_photos(photo_folder / "coffee", "astronaut", 5, side=60, ext=".jpg")
    assert len(load_domain("folder", "train", root=str(photo_folder))) == before + 4


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist"),
        ("empty", "no class subfolders"),
        ("one_class", "one class"),
        ("too_few", "at least two"),
    ],
)
def test_bad_folders_fail_with_a_clear_message(tmp_path, tmp_data, layout, message):
    root = tmp_path / "photos"
    if layout != "missing":
        root.mkdir()
    if layout == "empty":
        (root / "cat").mkdir()  # a class folder with no files
    if layout == "one_class":
        write_photos(root / "cat", "chelsea", 4, side=40)
    if layout == "too_few":
        write_photos(root / "cat", "chelsea", 4, side=40)
        write_photos(root / "dog", "coffee", 1, side=40)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_domain("folder", "train", root=str(root))


def test_root_is_required(tmp_data):
    with pytest.raises(TypeError, match="root=PATH"):
        load_domain("folder", "train")


def test_mixed_sizes_and_modes_are_centre_cropped(tmp_path, tmp_data):
    from PIL import Image

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for cls, mode in (("wide", "RGB"), ("grey", "L")):
        os.makedirs(root / cls)
        for i, size in enumerate([(300, 100), (50, 120), (33, 33)]):
            shape = size[::-1] + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")
    train = load_domain("folder", "train", root=str(root))
    assert train.x.shape[1:] == (3, 32, 32) and train.classes == ["grey", "wide"]
    grey = train.x[train.y == 0]
    assert torch.equal(grey[:, 0], grey[:, 1])  # greyscale replicated to three channels
