"""Your own photos as a domain: ``load_domain("folder", split, root=PATH)``.

``root`` holds one subfolder per class (``root/cat/*.jpg``, ``root/dog/*.jpg``: torchvision's
``ImageFolder`` layout); the class names are the subfolder names, sorted. Each image is converted to
RGB, centre-cropped to a square (so mixed sizes and aspect ratios are fine) and resized to 32x32 like
every ``Domain``. Each class is split into train/test by a fixed seed (``split_seed``), so the two
splits never share an image. Files that cannot be read as images are skipped and counted
(``domain.info["skipped"]``, plus a warning), never a crash. The result is cached like any domain,
keyed by the folder's file names, sizes and modification times, so editing the folder rebuilds it.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from tlutils.data.cache import Arrays
from tlutils.data.registry import DomainSpec, register

SIZE = 32


def _class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist; make one subfolder per class with the images inside "
            f"({root}/cat/*.jpg, {root}/dog/*.jpg, ...) and pass root=that folder"
        )
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def fingerprint(root: str | Path) -> str:
    """Hash of every file's relative path, size and modification time under ``root`` (the cache key's part)."""
    root = Path(root).expanduser()
    h = hashlib.sha256()
    for d in _class_dirs(root):
        for p in _files(d):
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def read_image(path: Path, size: int = SIZE) -> np.ndarray | None:
    """RGB uint8 ``(3, size, size)``: centre square crop, antialiased resize; None when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def build_folder(split: str, seed: int, *, root: str | None = None, test_fraction: float = 0.2,
                 split_seed: int = 0) -> Arrays:
    """Read ``root``'s class subfolders; return the ``split`` part (``test_fraction`` of each class is test)."""
    if not root:
        raise TypeError("load_domain('folder', ...) needs root=PATH: a folder with one subfolder per class")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    root_path = Path(root).expanduser()
    dirs = [d for d in _class_dirs(root_path) if _files(d)]
    if not dirs:
        raise ValueError(
            f"image folder {root_path} has no class subfolders with files in them; expected "
            f"{root_path}/<class name>/<image files>, one subfolder per class"
        )
    if len(dirs) < 2:
        raise ValueError(
            f"image folder {root_path} has one class ({dirs[0].name!r}); classification needs at least two "
            "class subfolders"
        )
    rng = np.random.default_rng(split_seed)
    xs, ys, skipped = [], [], []
    for label, d in enumerate(dirs):
        images = []
        for p in _files(d):
            img = read_image(p)
            if img is None:
                skipped.append(str(p.relative_to(root_path)))
                continue
            images.append(img)
        if len(images) < 2:
            raise ValueError(
                f"class {d.name!r} in {root_path} has {len(images)} readable image(s); each class needs at least "
                "two (one for train, one for test)"
            )
        order = rng.permutation(len(images))
        n_test = min(len(images) - 1, max(1, round(test_fraction * len(images))))
        chosen = order[:n_test] if split == "test" else order[n_test:]
        xs.extend(images[i] for i in sorted(chosen))
        ys.extend([label] * len(chosen))
    if skipped:
        shown = ", ".join(skipped[:3]) + (f" (+{len(skipped) - 3} more)" if len(skipped) > 3 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable file(s) under {root_path}: {shown}", stacklevel=2)
    info = {"source": f"image folder {root_path}", "root": str(root_path), "skipped": len(skipped),
            "skipped_files": skipped[:20], "test_fraction": test_fraction, "split_seed": split_seed}
    return Arrays(np.stack(xs), np.asarray(ys, dtype=np.int64), [d.name for d in dirs], info)


register(
    DomainSpec(
        "folder",
        build_folder,
        ("train", "test"),
        {"root": None, "test_fraction": 0.2, "split_seed": 0},
        uses_seed=False,  # the split is fixed by split_seed, whatever load_domain's seed
        online=False,
        fingerprint=lambda opts: fingerprint(opts["root"]) if opts.get("root") else "",
        description="your own photos: root=PATH with one subfolder per class, centre-cropped to 32x32",
    )
)
