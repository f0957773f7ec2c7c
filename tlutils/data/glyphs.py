"""``glyphs``: an Omniglot-like source domain drawn from the fonts bundled with matplotlib.

Each class is one character of one of 27 scripts or Unicode symbol blocks ("alphabets"). A class's
images are renders of the character in the bundled fonts that really contain it (checked against
each font's cmap; matplotlib's LastResortHE, whose cmap claims every code point but draws boxes, is
never used), with a random affine map and a mild elastic distortion applied in one batched
``grid_sample``. Digits and digit look-alikes are excluded (by Unicode category, by an explicit list
and by visual similarity to rendered and handwritten digits) so that pretraining on glyphs never sees
the digit targets of later chapters; near-empty renders and characters whose rendering duplicates
another class are dropped too. The class set depends only on the options, never on the seed; the
seed (and the split) choose fonts and distortions, so "train" and "test" are different renders of
the same classes.

The 27 alphabets have fixed roles (``ROLES``), split like Omniglot's background / evaluation sets:
17 "background" alphabets (chapter 00's source, MAML's meta-train), 4 meta-val and 6 meta-test.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tlutils.cache import code_fingerprint
from tlutils.data.cache import Arrays, cached
from tlutils.data.digits import DIGIT_CLASSES, mnist5k_arrays
from tlutils.data.registry import DomainSpec, register, single_threaded

MASTER_SIZE = 32
"""Side of the master images; the glyph is scaled so its longer side spans ``_BOX`` pixels, centred."""
_BOX = 24
_RENDER_PT = 40
"""Font size (pixels) at which masters are rasterised before being scaled into the box."""

# Unicode ranges (inclusive) of each alphabet. Order matters: it fixes class order and dedup priority.
ALPHABETS: dict[str, tuple[tuple[int, int], ...]] = {
    "latin": ((0x41, 0x5A), (0x61, 0x7A)),
    "latin-extended": ((0xC0, 0x24F),),
    "ipa": ((0x250, 0x2AF), (0x1D00, 0x1D7F)),
    "greek": ((0x370, 0x3FF),),
    "cyrillic": ((0x400, 0x4FF), (0xA640, 0xA69F)),
    "armenian": ((0x531, 0x58F),),
    "georgian": ((0x10A0, 0x10FF), (0x2D00, 0x2D2F)),
    "hebrew": ((0x5D0, 0x5F4),),
    "arabic": ((0x620, 0x64A), (0x66E, 0x6D3)),
    "nko": ((0x7CA, 0x7FF),),
    "lao": ((0xE80, 0xEFF),),
    "canadian-syllabics": ((0x1400, 0x167F),),
    "ogham": ((0x1680, 0x169F),),
    "tifinagh": ((0x2D30, 0x2D7F),),
    "lisu": ((0xA4D0, 0xA4FF),),
    "old-italic": ((0x10300, 0x1032F),),
    "braille": ((0x2800, 0x28FF),),
    "box-drawing": ((0x2500, 0x259F),),
    "geometric-shapes": ((0x25A0, 0x25FF), (0x2B00, 0x2BFF)),
    "arrows": ((0x2190, 0x21FF), (0x27F0, 0x27FF), (0x2900, 0x297F)),
    "math-operators": ((0x2200, 0x22FF), (0x2A00, 0x2AFF)),
    "math-misc": ((0x27C0, 0x27EF), (0x2980, 0x29FF)),
    "technical": ((0x2300, 0x23FF),),
    "symbols": ((0x2600, 0x26FF),),
    "dingbats": ((0x2700, 0x27BF),),
    "letterlike-currency": ((0x2100, 0x214F), (0x20A0, 0x20CF)),
    "yijing": ((0x4DC0, 0x4DFF), (0x1D300, 0x1D35F)),
}

# Fixed alphabet roles, disjoint like Omniglot's background/evaluation split. For MAML,
# meta-train = background and meta-val + meta-test partition evaluation.
_META_VAL = ("lisu", "old-italic", "dingbats", "yijing")
_META_TEST = ("armenian", "georgian", "nko", "tifinagh", "braille", "technical")
_EVALUATION = _META_VAL + _META_TEST
_BACKGROUND = tuple(a for a in ALPHABETS if a not in _EVALUATION)
ROLES: dict[str, tuple[str, ...]] = {
    "background": _BACKGROUND,
    "evaluation": tuple(a for a in ALPHABETS if a in _EVALUATION),
    "meta-train": _BACKGROUND,
    "meta-val": tuple(a for a in ALPHABETS if a in _META_VAL),
    "meta-test": tuple(a for a in ALPHABETS if a in _META_TEST),
}

# Characters that look like a Western digit 0-9 (in some font, upright or slightly rotated), on top of
# every Unicode number (categories Nd/Nl/No) and everything a visual check flags. Generous on purpose.
DIGIT_LOOKALIKES = set(
    "OoQDIlLiJjSsZzBbGgqTtYyAhE|!"  # Latin (A~4, h~4/b, y~4/9 in some hands, E~3 mirrored, t~7/+)
    "ΟοΘθΙιΒβΖζΣσςδϬϭϨϩϘϙϞϟϤϥƐɛƧƨƼƽƻƷʒǮǯȜȝɜɞʚȢȣɡɢɋɊƍƖɩɪʔʕ"  # Greek, Latin extended / IPA
    "ОоЗзЭэЧчБбЅѕІіЈјВвЄєӠӡӞӟҮүҶҷӴӵЬьЪъѲѳЮю"  # Cyrillic
    "ՕօՅՁՑՇՃ"  # Armenian
    "ჳჿႽ"  # Georgian
    "וזןיט"  # Hebrew (vav, zayin, final nun ~ 1; yod ~ ', tet ~ 6/8)
    "اٱأإآ١٥٧٨"  # Arabic alef forms ~ 1
    "ᛁᛙᚼ"  # runic-like verticals
    "│┃║╎╏┆┇┊┋⎸⎹⏐∣∥⌀∅○◯◦●⚪⚫⭕⬤◎◉⊙⊘⊖⊕⊗⦵⦶⦷⦸⦹∞ℓ℮℥ℨ℈ℤ℈ⅼⅠⅰ"  # symbols: bars, circles, infinity
)
# Letters named like a digit look-alike in scripts derived from Greek (Latin, Cyrillic, Armenian, ...),
# whatever their modifiers ("LATIN SMALL LETTER DOTLESS I", "CYRILLIC CAPITAL LETTER ZE WITH DESCENDER").
_LOOKALIKE_LETTER = re.compile(
    r"^(LATIN|GREEK|CYRILLIC|ARMENIAN|OLD ITALIC|LISU|MODIFIER)\b.*\bLETTER "
    r"(?:(?:SMALL|CAPITAL|DOTLESS|TURNED|REVERSED|SCRIPT|CLOSED|OPEN|BARRED|LONG|SIDEWAYS|INVERTED|BROKEN|"
    r"ARCHAIC|SQUAT|STRETCHED|BLACKLETTER)\s)*"
    r"(O|Q|D|I|L|S|Z|B|G|T|J|EZH|YOGH|OMICRON|THETA|IOTA|BETA|ZETA|SIGMA|FINAL SIGMA|ZE|CHE|BE|DZE|JE|VE|YI|"
    r"BYELORUSSIAN-UKRAINIAN I|E|OH|JA|CO|SHA|CHEH|DZHE|KOPPA|STIGMA|SAMPI|DIGAMMA)\b"
)
_DIGIT_WORDS = re.compile(
    r"\b(DIGIT|NUMBER|NUMERAL|FRACTION|ZERO|ONE|TWO|THREE|FOUR|FIVE|SIX|SEVEN|EIGHT|NINE)\b"
)
_FONT_DIR_NAME = ("fonts", "ttf")


def font_dir() -> Path:
    """matplotlib's bundled TTF directory (``mpl-data/fonts/ttf``)."""
    import matplotlib

    return Path(matplotlib.get_data_path()).joinpath(*_FONT_DIR_NAME)


def usable_font(file_name: str) -> bool:
    """Text fonts we draw from: DejaVu (not the tiny Display subsets), STIXGeneral, Computer Modern text.

    Never LastResortHE (claims every code point, draws boxes), nor STIX size/non-Unicode variants or the
    cmsy/cmex symbol fonts, whose cmaps map ASCII positions to unrelated TeX symbols.
    """
    if file_name.startswith("LastResort"):
        return False
    if file_name.startswith("DejaVu"):
        return "Display" not in file_name
    if file_name.startswith("STIXGeneral"):
        return True
    return file_name in {"cmb10.ttf", "cmmi10.ttf", "cmr10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf"}


@functools.lru_cache(maxsize=1)
def font_coverage() -> dict[str, frozenset[int]]:
    """``{font file: code points}`` for the usable fonts, read from each font's cmap with fontTools.

    Computer Modern faces are trusted for the ASCII letters only (elsewhere their BaKoMa cmaps follow
    TeX encodings, not Unicode).
    """
    from fontTools.ttLib import TTFont

    out = {}
    for path in sorted(font_dir().glob("*.ttf")):
        if not usable_font(path.name):
            continue
        cmap = set(TTFont(path, lazy=True).getBestCmap())
        if path.name.startswith("cm"):
            cmap = {c for c in cmap if chr(c).isascii() and chr(c).isalpha()}
        out[path.name] = frozenset(cmap)
    if not out:
        raise RuntimeError(f"no usable fonts found in {font_dir()}; is matplotlib installed correctly?")
    return out


def is_digit_like(ch: str) -> bool:
    """True for digits, numbers and the explicit look-alike list (the visual check is separate)."""
    if unicodedata.category(ch).startswith("N") or ch in DIGIT_LOOKALIKES:
        return True
    base = unicodedata.normalize("NFKD", ch)[:1]
    if base and (unicodedata.category(base).startswith("N") or base in DIGIT_LOOKALIKES):
        return True
    name = unicodedata.name(ch, "")
    return bool(_DIGIT_WORDS.search(name) or _LOOKALIKE_LETTER.search(name))


def _keep_codepoint(cp: int) -> bool:
    ch = chr(cp)
    cat = unicodedata.category(ch)
    if cat[0] not in "LS" and cat not in ("Po", "Ps", "Pe", "Pd", "Pi", "Pf"):
        return False  # marks, spaces, controls, unassigned, private use
    if unicodedata.decomposition(ch) and not unicodedata.decomposition(ch).startswith("<"):
        return False  # accented forms duplicate their base letter up to a small mark
    return not is_digit_like(ch)


def candidates(alphabet: str) -> list[str]:
    """Characters of ``alphabet`` that some usable font contains, after the category/digit filters."""
    cover = set().union(*font_coverage().values())
    return [
        chr(cp)
        for lo, hi in ALPHABETS[alphabet]
        for cp in range(lo, hi + 1)
        if cp in cover and _keep_codepoint(cp)
    ]


@functools.lru_cache(maxsize=64)
def _pil_font(file_name: str):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_dir() / file_name), _RENDER_PT)


CELL_ALPHABETS = ("braille", "box-drawing")
"""Alphabets whose glyphs are framed by the font's character cell, not their ink (a Braille dot or a
half line means something different at another place in the cell)."""


def render_master(ch: str, font_file: str, cell: bool = False) -> tuple[np.ndarray, float]:
    """Rasterise ``ch`` white-on-black, crop it, scale its longer side to the box and centre it.

    The crop is the ink's bounding box, or the character cell (advance x ascent+descent) when
    ``cell``. Returns the (32, 32) uint8 master and the ink extent (longer side of the ink box / font
    size), which flags near-empty glyphs (dots, marks).
    """
    from PIL import Image, ImageDraw

    font = _pil_font(font_file)
    left, top, right, bottom = font.getbbox(ch)
    empty = np.zeros((MASTER_SIZE, MASTER_SIZE), np.uint8)
    if right <= left or bottom <= top:
        return empty, 0.0
    ascent, descent = font.getmetrics()
    width = max(right, int(math.ceil(font.getlength(ch)))) + 4
    canvas = Image.new("L", (width + max(0, -left), ascent + descent + 4))
    ImageDraw.Draw(canvas).text((2 + max(0, -left), 2), ch, font=font, fill=255)
    ink = np.asarray(canvas)
    rows, cols = np.nonzero(ink > 40)
    if len(rows) == 0:
        return empty, 0.0
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / _RENDER_PT
    if cell:
        x0 = 2 + max(0, -left)
        ink = ink[2 : 2 + ascent + descent, x0 : x0 + max(1, int(round(font.getlength(ch))))]
    else:
        ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = ink.shape
    scale = _BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(
        Image.fromarray(ink).resize(
            (nw, nh), Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        )
    )
    out = empty.copy()
    t, lft = (MASTER_SIZE - nh) // 2, (MASTER_SIZE - nw) // 2
    out[t : t + nh, lft : lft + nw] = small
    return out, float(extent)


def _features(images: np.ndarray) -> np.ndarray:
    """Blurred, zero-mean, unit-norm vectors of (N, 32, 32) uint8 images, for shape similarity.

    Plain numpy on purpose: these are thousands of tiny operations, where torch's thread pool costs
    far more than the arithmetic.
    """
    x = np.asarray(images, dtype=np.float32) / 255.0
    k = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (2, 2)
        xp = np.pad(x, pad)
        n = x.shape[axis]
        x = sum(w * np.take(xp, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    x = x.reshape(len(x), -1)
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def _normalise_to_box(images: np.ndarray) -> np.ndarray:
    """Crop each (N, H, W) uint8 image to its ink and rescale it like a master (for digit templates)."""
    from PIL import Image

    out = np.zeros((len(images), MASTER_SIZE, MASTER_SIZE), np.uint8)
    for i, im in enumerate(images):
        rows, cols = np.nonzero(im > 40)
        if len(rows) == 0:
            continue
        ink = im[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        h, w = ink.shape
        scale = _BOX / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        small = np.asarray(Image.fromarray(ink).resize((nw, nh), Image.Resampling.BILINEAR))
        t, lft = (MASTER_SIZE - nh) // 2, (MASTER_SIZE - nw) // 2
        out[i, t : t + nh, lft : lft + nw] = small
    return out


_FONT_PREFERENCE = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf")


def fonts_for(ch: str) -> list[str]:
    """Usable fonts whose cmap contains ``ch``, the reference font first."""
    cover = font_coverage()
    have = [f for f in cover if ord(ch) in cover[f]]
    first = [f for f in _FONT_PREFERENCE if f in have]
    return first[:1] + [f for f in have if f not in first[:1]]


def _build_digit_templates() -> Arrays:

    digits = [(d, f) for d in "0123456789" for f in fonts_for(d)]
    printed = np.stack([render_master(d, f)[0] for d, f in digits])
    x, y = mnist5k_arrays()
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:30] for c in range(10)])
    images = np.concatenate([printed, _normalise_to_box(x[pick])])
    labels = np.concatenate([[int(d) for d, _ in digits], y[pick]]).astype(np.int64)
    return Arrays(images[:, None], labels, DIGIT_CLASSES, {"printed": len(printed), "handwritten": len(pick)})


@functools.lru_cache(maxsize=1)
def digit_templates() -> np.ndarray:
    """Features of digits 0-9 as printed (every usable font) and handwritten (300 mnist5k samples)."""
    fields = {"code": code_fingerprint(__name__), "fonts": sorted(font_coverage()), "box": _BOX, "pt": _RENDER_PT}
    with single_threaded():
        return _features(cached("digit-templates", "all", fields, _build_digit_templates).x[:, 0])


def digit_similarity(masters: np.ndarray) -> np.ndarray:
    """Highest correlation of each (N, 32, 32) master with any digit template (1 = identical shape)."""
    if len(masters) == 0:
        return np.zeros(0)
    return (_features(masters) @ digit_templates().T).max(1)


DIGIT_SIMILARITY_MAX = 0.75
"""Glyphs whose shape correlates above this with any printed or handwritten digit are excluded."""
DUPLICATE_SIMILARITY = 0.95
"""Two characters whose reference renders correlate above this are one class (the earlier is kept)."""
MIN_EXTENT = 0.3
"""Glyphs whose ink spans less than this fraction of the font size are near-empty (dots, marks)."""


def glyph_alphabets(role: str | list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Alphabet names for a role ("background", "evaluation", "meta-train", "meta-val", "meta-test"),
    ``None``/"all" for every alphabet, or a list of names (validated)."""
    if role is None or role == "all":
        return list(ALPHABETS)
    if isinstance(role, str):
        if role in ROLES:
            return list(ROLES[role])
        if role in ALPHABETS:
            return [role]
        raise ValueError(
            f"unknown glyph alphabet role {role!r}; valid roles: all, {', '.join(ROLES)}; "
            f"or a list of alphabets from: {', '.join(ALPHABETS)}"
        )
    names = list(role)
    unknown = [a for a in names if a not in ALPHABETS]
    if unknown or not names:
        raise ValueError(
            f"unknown glyph alphabet(s) {unknown or names!r}; valid alphabets: {', '.join(ALPHABETS)}"
        )
    return [a for a in ALPHABETS if a in names]  # canonical order, duplicates removed


def _build_reference() -> Arrays:
    """Every candidate character rendered in its reference font, with extent and digit similarity."""
    chars, alphabets, fonts, masters, extents = [], [], [], [], []
    for alphabet in ALPHABETS:
        for ch in candidates(alphabet):
            font = fonts_for(ch)[0]
            master, extent = render_master(ch, font, cell=alphabet in CELL_ALPHABETS)
            chars.append(ch), alphabets.append(alphabet), fonts.append(font)
            masters.append(master), extents.append(extent)
    masters = np.stack(masters)
    info = {
        "alphabet": alphabets,
        "font": fonts,
        "extent": [round(e, 4) for e in extents],
        "digit_similarity": [round(float(s), 4) for s in digit_similarity(masters)],
    }
    return Arrays(masters[:, None], np.arange(len(chars), dtype=np.int64), chars, info)


@functools.lru_cache(maxsize=1)
def reference_table() -> Arrays:
    """The reference renders of all candidates (built once, cached on disk and in memory)."""
    fields = {"code": code_fingerprint(__name__), "fonts": sorted(font_coverage()), "box": _BOX, "pt": _RENDER_PT}
    with single_threaded():
        return cached("glyph-reference", "all", fields, _build_reference)


@functools.lru_cache(maxsize=1)
def eligible_characters() -> dict[str, list[str]]:
    """Per alphabet, the candidates left after the empty, digit-like and duplicate filters, in a fixed
    pseudo-random order (so a class cap samples an alphabet evenly, independently of any seed)."""
    with single_threaded():
        return _eligible()


def _eligible() -> dict[str, list[str]]:
    ref = reference_table()
    ok = (np.array(ref.info["extent"]) >= MIN_EXTENT) & (
        np.array(ref.info["digit_similarity"]) <= DIGIT_SIMILARITY_MAX
    )
    idx = np.flatnonzero(ok)
    feats = _features(ref.x[idx, 0])
    dup = np.triu(feats @ feats.T > DUPLICATE_SIMILARITY, k=1)  # dup[i, j]: j repeats i
    keep = np.ones(len(idx), dtype=bool)
    # greedy in code point order: a character survives if no kept earlier one matches it
    for i in range(len(idx)):
        if keep[i]:
            keep[i + 1 :] &= ~dup[i, i + 1 :]
    kept = idx[keep]
    out: dict[str, list[str]] = {a: [] for a in ALPHABETS}
    for i in kept:
        out[ref.info["alphabet"][i]].append(ref.classes[i])
    for alphabet, chars in out.items():
        order = np.random.default_rng(zlib.crc32(alphabet.encode())).permutation(len(chars))
        out[alphabet] = [chars[j] for j in order]
    return out


def _class_masters(ch: str, alphabet: str) -> tuple[list[np.ndarray], list[str]] | None:
    """Masters of ``ch`` in the fonts that have it, minus renders that look like a digit or are near-empty.

    None when fewer than half of its fonts give a usable render (the character is then dropped).
    """
    fonts = fonts_for(ch)
    pairs = [render_master(ch, f, cell=alphabet in CELL_ALPHABETS) for f in fonts]
    masters = np.stack([m for m, _ in pairs])
    good = (digit_similarity(masters) <= DIGIT_SIMILARITY_MAX) & (
        np.array([e for _, e in pairs]) >= MIN_EXTENT
    )
    if good.sum() == 0 or good.sum() * 2 < len(fonts):
        return None
    return [masters[i] for i in np.flatnonzero(good)], [fonts[i] for i in np.flatnonzero(good)]


@functools.lru_cache(maxsize=8)
def select_classes(alphabets: tuple[str, ...], num_classes: int | None, classes_per_alphabet: int | None):
    """Choose classes round-robin over ``alphabets`` (balanced, capped) and render their masters.

    Returns (chars, alphabet per char, masters (P, 32, 32) uint8, class index per master, fonts per master).
    """
    pools = eligible_characters()
    pointer = {a: 0 for a in alphabets}
    chosen: dict[str, list[tuple[str, list[np.ndarray], list[str]]]] = {a: [] for a in alphabets}
    total = 0
    while num_classes is None or total < num_classes:
        open_ = [
            a
            for a in alphabets
            if pointer[a] < len(pools[a])
            and (classes_per_alphabet is None or len(chosen[a]) < classes_per_alphabet)
        ]
        if not open_:
            break
        alphabet = min(open_, key=lambda a: len(chosen[a]))
        while pointer[alphabet] < len(pools[alphabet]):
            ch = pools[alphabet][pointer[alphabet]]
            pointer[alphabet] += 1
            rendered = _class_masters(ch, alphabet)
            if rendered is not None:
                chosen[alphabet].append((ch, *rendered))
                total += 1
                break
    chars, alphabet_of, masters, owner, fonts = [], [], [], [], []
    for alphabet in alphabets:
        for ch, ms, fs in chosen[alphabet]:
            owner += [len(chars)] * len(ms)
            chars.append(ch), alphabet_of.append(alphabet)
            masters += ms
            fonts += fs
    return chars, alphabet_of, np.stack(masters), np.array(owner, dtype=np.int64), fonts


def random_warp(images: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random affine (rotation, scale, aspect, shear, translation) plus a smooth elastic field, batched.

    ``images`` (N, C, H, W) float; one ``affine_grid`` + ``grid_sample`` call, no per-pixel Python.
    ``strength`` scales every distortion (0 returns the images unchanged).
    """
    n = images.shape[0]
    if strength == 0 or n == 0:
        return images

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = u(-15, 15) * strength * math.pi / 180
    scale = torch.exp(u(-0.15, 0.1) * strength)
    aspect = torch.exp(u(-0.1, 0.1) * strength)
    shear = u(-0.2, 0.2) * strength
    shift = torch.stack([u(-0.1, 0.1), u(-0.1, 0.1)], 1) * strength
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    shear_m = torch.zeros(n, 2, 2)
    shear_m[:, 0, 0] = 1
    shear_m[:, 1, 1] = 1
    shear_m[:, 0, 1] = shear
    scale_m = torch.diag_embed(torch.stack([scale * aspect, scale / aspect], 1))
    forward = rot @ shear_m @ scale_m  # glyph -> output; the sampler needs output -> glyph
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -(inverse @ shift[:, :, None])], 2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    field = torch.randn(n, 2, 4, 4, generator=gen) * (0.03 * strength)
    field = F.interpolate(field, size=images.shape[-2:], mode="bicubic", align_corners=False)
    grid = grid + field.permute(0, 2, 3, 1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def split_generator(seed: int, split: str, salt: int) -> torch.Generator:
    """A CPU generator for (seed, split): different splits get independent streams."""
    entropy = np.random.SeedSequence([int(seed) % 2**32, zlib.crc32(split.encode()), salt]).generate_state(1)[
        0
    ]
    return torch.Generator().manual_seed(int(entropy))


def build_glyphs(
    split: str,
    seed: int,
    *,
    alphabets=None,
    num_classes=360,
    classes_per_alphabet=None,
    per_class=60,
    distortion=1.0,
) -> Arrays:
    """Render ``per_class`` distorted images of each selected glyph class.

    Options (via ``load_domain("glyphs", split, seed=..., **options)``):
        alphabets: None (all), a role ("background", "evaluation", "meta-train", "meta-val",
            "meta-test") or a list of alphabet names (``ALPHABETS``).
        num_classes: cap on the total number of classes, filled round-robin over the alphabets so
            they stay balanced (None: no cap). classes_per_alphabet: cap per alphabet (None: no cap).
        per_class: images per class. distortion: strength of the random affine + elastic warp
            (1 = default, 0 = undistorted masters in random fonts).
    The class set depends on the options only; ``seed`` and ``split`` choose fonts and warps.
    """
    for opt, value in (("num_classes", num_classes), ("classes_per_alphabet", classes_per_alphabet)):
        if value is not None and (int(value) != value or value < 1):
            raise ValueError(f"{opt} must be a positive integer or None, got {value!r}")
    if int(per_class) != per_class or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    if not 0 <= float(distortion) <= 3:
        raise ValueError(f"distortion must be in [0, 3] (1 = default strength), got {distortion!r}")
    names = glyph_alphabets(alphabets)
    chars, alphabet_of, masters, owner, fonts = select_classes(
        tuple(names), num_classes, classes_per_alphabet
    )
    gen = split_generator(seed, split, salt=1)
    counts = np.bincount(owner, minlength=len(chars))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    y = np.repeat(np.arange(len(chars), dtype=np.int64), int(per_class))
    y = y[torch.randperm(len(y), generator=gen).numpy()]
    pick = (
        torch.from_numpy(starts[y]) + (torch.rand(len(y), generator=gen) * torch.from_numpy(counts[y])).long()
    )
    master_t = torch.from_numpy(masters).float().div_(255.0)[:, None]
    out = np.empty((len(y), 1, 32, 32), dtype=np.uint8)
    for lo in range(0, len(y), 4096):
        chunk = random_warp(master_t[pick[lo : lo + 4096]], gen, float(distortion))
        out[lo : lo + 4096] = chunk.clamp_(0, 1).mul_(255).round_().to(torch.uint8).numpy()
    info = {
        "alphabet": alphabet_of,
        "alphabets": [a for a in names if a in set(alphabet_of)],
        "codepoints": [ord(c) for c in chars],
        "unicode_names": [unicodedata.name(c, f"U+{ord(c):04X}") for c in chars],
        "fonts_per_class": counts.tolist(),
        "fonts_used": sorted(set(fonts)),
    }
    return Arrays(out, y, chars, info)


register(
    DomainSpec(
        "glyphs",
        build_glyphs,
        ("train", "test"),
        {
            "alphabets": None,
            "num_classes": 360,
            "classes_per_alphabet": None,
            "per_class": 60,
            "distortion": 1.0,
        },
        description="characters of 27 scripts/symbol blocks from matplotlib's fonts, distorted; no digits",
    )
)
