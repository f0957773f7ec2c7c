"""Image domains behind one registry: ``load_domain(name, split, seed=..., device=..., **options)``.

Every domain comes back as a ``Domain``: ``x`` float32 (N, 3, 32, 32) with values in [0, 1]
(grayscale images replicated to three channels; no mean/std normalisation here, models do any
further normalisation) and ``y`` int64 class indices into ``classes``.

Built-in (offline) domains: ``glyphs``, ``mnist5k``, ``mnistm-lite``, ``syndigits``, ``digits8x8``.
Online (torchvision, ``download=True`` to fetch): ``mnist``, ``svhn``, ``usps``, ``cifar10``,
``omniglot``, ``mnistm``; offline they fail at once with ``DomainUnavailableError`` naming the built-in
alternative. Your own photos: ``load_domain("folder", split, root=PATH)`` (one subfolder per class).
Generated arrays are cached under ``data_dir()/"domains"`` with the policy of ``tlutils.cache`` (a sha256
checksum verified on load, a bad file reported and rebuilt, atomic writes, built once under a file lock).
"""

from tlutils.data import digits, folder, glyphs, online, syndigits  # noqa: F401  (importing registers the domains)
from tlutils.data.cache import cache_dir, clear_cache
from tlutils.data.domain import Domain, domain_summary
from tlutils.data.glyphs import glyph_alphabets
from tlutils.data.online import DomainUnavailableError
from tlutils.data.registry import domain_spec, list_domains, load_domain, online_options

__all__ = [
    "Domain",
    "DomainUnavailableError",
    "cache_dir",
    "clear_cache",
    "domain_spec",
    "domain_summary",
    "glyph_alphabets",
    "list_domains",
    "load_domain",
    "online_options",
]
