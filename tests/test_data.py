"""Tests of ``tlutils.data``: the offline domains, the Domain container, the registry and the cache."""

from __future__ import annotations

import time
import unicodedata
import warnings

import numpy as np
import pytest
import torch

from tlutils.data import (
    Domain,
    DomainUnavailableError,
    cache_dir,
    clear_cache,
    digits,
    domain_spec,
    domain_summary,
    glyph_alphabets,
    glyphs,
    list_domains,
    load_domain,
)
from tlutils.data import cache as cache_mod

OFFLINE = ["glyphs", "mnist5k", "mnistm-lite", "syndigits", "digits8x8"]
ONLINE = ["mnist", "svhn", "usps", "cifar10", "omniglot", "mnistm"]
SMALL = {
    "glyphs": {"alphabets": ["latin", "greek", "braille", "arrows"], "num_classes": 12, "per_class": 4},
    "syndigits": {"size": 60},
}


def small(name: str, split: str = "train", **kwargs) -> Domain:
    return load_domain(name, split, **{**SMALL.get(name, {}), **kwargs})


def test_registry_lists_every_domain():
    assert set(OFFLINE + ONLINE) <= set(list_domains())
    assert set(list_domains("offline")) == set(OFFLINE) | {"folder"}  # "folder": your own images, no download
    assert set(list_domains("online")) == set(ONLINE)


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_domain_format(tmp_data, name):
    d = small(name)
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
    assert d.x.shape[1:] == (3, 32, 32) and d.y.shape == (len(d),) and len(d) > 0
    assert 0.0 <= d.x.min() and d.x.max() <= 1.0 and d.x.std() > 0.05
    assert d.y.min() >= 0 and d.y.max() < d.num_classes == len(d.classes)
    assert set(d.y.tolist()) == set(range(d.num_classes))  # every class present
    assert (d.name, d.split) == (name, "train")
    summary = domain_summary(d)
    assert summary["n"] == len(d) and sum(summary["per_class"].values()) == len(d)


def test_grayscale_domains_replicate_channels(tmp_data):
    for name in ("mnist5k", "digits8x8", "glyphs"):
        d = small(name)
        assert torch.equal(d.x[:, 0], d.x[:, 1]) and torch.equal(d.x[:, 0], d.x[:, 2])
    colour = small("mnistm-lite")
    assert not torch.equal(colour.x[:, 0], colour.x[:, 1])


def test_mnist5k_fixed_stratified_split(tmp_data):
    train, test = load_domain("mnist5k", "train"), load_domain("mnist5k", "test")
    assert len(train) == 4000 and len(test) == 1000
    assert torch.bincount(train.y).tolist() == [400] * 10 and torch.bincount(test.y).tolist() == [100] * 10
    assert torch.equal(load_domain("mnist5k", "train", seed=7, cache=False).x, train.x)  # seed-independent
    flat = {tuple(row) for row in (train.x[:, 0] * 255).round().to(torch.uint8).flatten(1).tolist()}
    overlap = sum(tuple(r) in flat for r in (test.x[:, 0] * 255).round().to(torch.uint8).flatten(1).tolist())
    assert overlap <= 2  # disjoint images (the real data may hold the odd exact duplicate)
    assert train.y[:50].unique().numel() == 10  # shuffled order: a prefix holds every class
    assert train.x[:, :, :2].max() == 0 and train.x[:, :, -2:].max() == 0  # 28 -> 32 zero padding


def test_mnistm_lite_keeps_mnist5k_split_and_labels(tmp_data):
    m, mm = load_domain("mnist5k", "test"), load_domain("mnistm-lite", "test")
    assert torch.equal(m.y, mm.y) and mm.x.shape == m.x.shape
    assert len(mm.info["photos"]) >= 10  # bundled photos at two scales
    digit = np.array([[[0, 255, 100]]], dtype=np.uint8)
    crop = np.array([[[[10, 200, 255], [10, 200, 255], [10, 200, 255]]]], dtype=np.uint8)
    assert digits.mnistm_blend(digit, crop).tolist() == [[[[10, 200, 255], [245, 55, 0], [90, 100, 155]]]]
    # inside strokes the photo is inverted: pixels change wherever the digit has ink
    ink = m.x[:, :1] > 0.9
    assert (mm.x - mm.x.roll(1, 0)).abs().mean() > 0.1 and ink.any()


def test_digits8x8_split(tmp_data):
    train, test = load_domain("digits8x8", "train"), load_domain("digits8x8", "test")
    assert len(train) + len(test) == 1797 and abs(len(test) / 1797 - 0.2) < 0.01
    assert torch.bincount(test.y).min() >= 34


def test_glyphs_never_use_digits_or_lastresort(tmp_data):
    assert not any(f.startswith("LastResort") for f in glyphs.font_coverage())
    assert not glyphs.usable_font("LastResortHE-Regular.ttf")
    pools = glyphs.eligible_characters()
    every = [ch for chars in pools.values() for ch in chars]
    assert len(every) == len(set(every)) > 1000
    for ch in every:
        assert ch not in "0123456789" and not unicodedata.category(ch).startswith("N"), ch
        assert not glyphs.is_digit_like(ch), ch
    for ch in "0123456789OolISsZzBbgqGT٣۳०१३":  # digits and look-alikes in several scripts
        assert glyphs.is_digit_like(ch), ch
    d = small("glyphs")
    assert not any(f.startswith("LastResort") for f in d.info["fonts_used"])
    assert all(
        glyphs.digit_similarity(glyphs.select_classes(("latin",), 5, None)[2]) <= glyphs.DIGIT_SIMILARITY_MAX
    )


def test_glyph_classes_carry_alphabets_and_respect_caps(tmp_data):
    d = load_domain(
        "glyphs",
        alphabets=["latin", "braille", "arrows"],
        classes_per_alphabet=3,
        per_class=2,
        num_classes=None,
    )
    assert d.num_classes == 9 and d.info["alphabet"] == ["latin"] * 3 + ["braille"] * 3 + ["arrows"] * 3
    assert len(d) == 18 and torch.bincount(d.y).tolist() == [2] * 9
    assert len(d.classes) == len(set(d.classes))
    capped = load_domain("glyphs", alphabets="background", num_classes=20, per_class=1)
    assert capped.num_classes == 20 and set(capped.info["alphabet"]) <= set(glyph_alphabets("background"))


def test_glyph_alphabet_roles_are_disjoint():
    bg, ev = set(glyph_alphabets("background")), set(glyph_alphabets("evaluation"))
    assert bg and ev and not bg & ev and bg | ev == set(glyphs.ALPHABETS)
    train, val, test = (set(glyph_alphabets(r)) for r in ("meta-train", "meta-val", "meta-test"))
    assert train and val and test and not (train & val or train & test or val & test)
    assert len(glyphs.ALPHABETS) >= 20
    with pytest.raises(ValueError, match="meta-test"):
        glyph_alphabets("meta-testing")
    with pytest.raises(ValueError, match="latin"):
        glyph_alphabets(["klingon"])


def test_glyph_splits_are_different_renders_of_the_same_classes(tmp_data):
    train, test = small("glyphs", "train"), small("glyphs", "test")
    assert train.classes == test.classes and train.info["alphabet"] == test.info["alphabet"]
    assert not torch.equal(train.x, test.x)


@pytest.mark.parametrize("name", ["glyphs", "syndigits", "mnistm-lite"])
def test_seeded_domains_are_deterministic(tmp_data, name):
    a = small(name, seed=3, cache=False)
    b = small(name, seed=3, cache=False)
    c = small(name, seed=4, cache=False)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_per_class_budgets():
    d = small("syndigits", cache=False)
    sub = d.per_class(3, seed=0)
    assert len(sub) == 30 and torch.bincount(sub.y).tolist() == [3] * 10
    assert torch.equal(sub.x, d.per_class(3, seed=0).x)
    assert not torch.equal(d.per_class_index(3, seed=0), d.per_class_index(3, seed=1))
    idx = d.per_class_index(6, seed=0)
    assert len(set(idx.tolist())) == 60  # without replacement
    assert sub.info["per_class"] == 3 and "per_class" not in d.info
    with pytest.raises(ValueError, match="fewer than 7"):
        d.per_class(7)
    with pytest.raises(ValueError, match="positive integer"):
        d.per_class(0)


def test_split_validation_is_fixed_stratified_and_disjoint():
    d = small("syndigits", cache=False)
    rest, val = d.split_validation(2, seed=0)
    assert len(val) == 20 and torch.bincount(val.y).tolist() == [2] * 10
    assert len(rest) == len(d) - 20 and val.split.endswith("-val")
    pairs = {(tuple(x.flatten()[:64].tolist()), int(y)) for x, y in zip(rest.x, rest.y, strict=True)}
    assert not any((tuple(x.flatten()[:64].tolist()), int(y)) in pairs for x, y in zip(val.x, val.y, strict=True))
    again_rest, again_val = d.split_validation(2, seed=0)
    assert torch.equal(again_val.x, val.x) and torch.equal(again_rest.y, rest.y)


def test_subset_and_to():
    d = small("syndigits", cache=False)
    assert torch.equal(d.subset([0, 2]).x, d.x[[0, 2]])
    mask = d.y == 3
    assert len(d.subset(mask)) == int(mask.sum()) and (d.subset(mask).y == 3).all()
    assert len(d.subset(slice(0, 5))) == 5
    assert d.to("cpu").x.device.type == "cpu" and d.to(None) is d
    assert load_domain("digits8x8", device="cpu").x.device.type == "cpu"
    with pytest.raises(ValueError, match="shape"):
        Domain(torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long), ["a"], "toy", "train")


def _only_file(name: str):
    files = sorted(cache_dir().glob(f"{name}-*.npz"))
    assert len(files) == 1, files
    return files[0]


def test_cache_hit_returns_identical_data(tmp_data):
    first = small("syndigits")
    path = _only_file("syndigits")
    stamp = path.stat().st_mtime_ns
    second = small("syndigits")
    assert (
        torch.equal(first.x, second.x) and torch.equal(first.y, second.y) and first.classes == second.classes
    )
    assert path.stat().st_mtime_ns == stamp  # read, not rewritten
    assert first.info == second.info
    assert clear_cache("syndigits") == 1 and not list(cache_dir().glob("syndigits-*"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_corrupted_cache_is_detected_and_rebuilt(tmp_data, damage):
    fresh = small("syndigits")
    path = _only_file("syndigits")
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "empty":
        blob = b""
    else:
        blob = b"PK\x03\x04 not a real zip" * 10
    path.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="invalid"):
        again = small("syndigits")
    assert torch.equal(again.x, fresh.x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small("syndigits")  # the rebuilt file is valid again


def test_checksum_catches_silent_array_changes(tmp_data):
    """A well-formed file whose arrays changed (e.g. rewritten by hand) fails the embedded sha256."""
    small("syndigits")
    path = _only_file("syndigits")
    with np.load(path) as z:
        entries = {k: z[k] for k in z.files}
    entries["x"] = entries["x"].copy()
    entries["x"][0, 0, 0, 0] ^= 1
    np.savez_compressed(path, **entries)
    with pytest.warns(UserWarning, match="checksum"):
        small("syndigits")


def test_mismatched_cache_file_is_not_used(tmp_data):
    small("syndigits", seed=1)
    other = small("syndigits", seed=2)
    path1, path2 = sorted(cache_dir().glob("syndigits-*.npz"), key=lambda p: p.stat().st_mtime_ns)
    path2.write_bytes(path1.read_bytes())  # seed 1's arrays under seed 2's name
    with pytest.warns(UserWarning, match="key mismatch"):
        again = small("syndigits", seed=2)
    assert torch.equal(again.x, other.x)


def test_killed_write_is_never_read_as_valid(tmp_data, monkeypatch):
    fresh = small("syndigits", cache=False)
    # 1) a leftover temp file from a killed writer sits next to where the real file goes
    key = cache_mod.cache_key(
        {"name": "syndigits", "split": "train", **_fields("syndigits", SMALL["syndigits"])}
    )
    final = cache_mod.cache_path("syndigits", "train", key)
    (final.parent / f".{final.name}.abc123.tmp").write_bytes(b"PK\x03\x04partial")
    assert torch.equal(small("syndigits").x, fresh.x)
    # 2) a writer interrupted half-way leaves neither a final file nor a temp file behind
    final.unlink()

    def dies_half_way(f, **arrays):
        f.write(b"PK\x03\x04" + b"\0" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "savez_compressed", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        small("syndigits")
    assert not final.exists()
    assert not [p for p in final.parent.glob(".*.tmp") if "abc123" not in p.name]
    monkeypatch.undo()
    assert torch.equal(small("syndigits").x, fresh.x)


def _fields(name: str, options: dict) -> dict:
    from tlutils.data.registry import builder_code, resolve_options

    spec = domain_spec(name)
    opts = resolve_options(spec, options)
    return {"code": builder_code(spec), "options": opts, "seed": 0 if spec.uses_seed else None}


def test_bad_calls_get_clear_errors(tmp_data):
    with pytest.raises(
        ValueError, match="valid names are: .*mnist5k.*glyphs|valid names are: .*glyphs.*mnist5k"
    ):
        load_domain("mnist-5k")
    with pytest.raises(ValueError, match="valid splits are: train, test"):
        load_domain("mnist5k", "validation")
    with pytest.raises(ValueError, match="valid splits are: background, evaluation"):
        load_domain("omniglot", "train")
    with pytest.raises(TypeError, match="valid options: size=None"):
        load_domain("syndigits", n=10)
    with pytest.raises(TypeError, match="none"):
        load_domain("mnist5k", per_class=3)
    with pytest.raises(ValueError, match="per_class must be a positive integer"):
        load_domain("glyphs", per_class=0)
    with pytest.raises(ValueError, match="valid alphabets"):
        load_domain("glyphs", alphabets=["latin", "elvish"])


@pytest.mark.parametrize(
    ("name", "alternative"),
    [
        ("mnist", "mnist5k"),
        ("svhn", "syndigits"),
        ("usps", "digits8x8"),
        ("omniglot", "glyphs"),
        ("cifar10", "no offline alternative"),
    ],
)
def test_online_domains_fail_fast_offline(tmp_data, name, alternative):
    split = "background" if name == "omniglot" else "train"
    start = time.perf_counter()
    with pytest.raises(DomainUnavailableError) as err:
        load_domain(name, split)
    assert time.perf_counter() - start < 2.0  # no network wait
    message = str(err.value)
    assert alternative in message and "download=True" in message and str(tmp_data / "torchvision") in message
    assert isinstance(err.value, FileNotFoundError)


def test_glyph_alphabet_counts_quoted_in_the_text():
    """README, chapters 00 and 06 and the glyphs docstring quote these counts."""
    from tlutils.data.glyphs import ALPHABETS, ROLES

    assert len(ALPHABETS) == 27
    assert (len(ROLES["background"]), len(ROLES["meta-val"]), len(ROLES["meta-test"])) == (17, 4, 6)
