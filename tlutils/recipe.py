"""The one recipe type: everything besides data and seed that defines a training run, as a frozen dataclass.

Each method's recipe is a subclass with its own fields, defaults and docstring:
``tlutils.source.SourceRecipe`` (chapter 00's source model), ``tlutils.finetune.StrategyRecipe`` (the strategies of
chapters 01-03, reused by chapter 07), ``tlutils.adapt.AdaptationRecipe`` (chapters 04-05) and
``tlutils.lpft.PeftRecipe`` (chapter 08). What they share lives here:

- ``recipe.replace(**overrides)``: a copy with some fields changed (an unknown name is an error that lists the
  fields and suggests the closest one: a typo never trains the default silently);
- ``recipe.as_dict()``: the fields as a dict (to show in a table or store beside a checkpoint);
- ``recipe.cache_key(**context)``: the :func:`tlutils.cache.cache_key` of the fields (or of the ones a run reads,
  ``only=``) and of what else the artefact depends on (data, seed, :func:`tlutils.cache.code_fingerprint`);
- ``Recipe.for_profile(cfg, **overrides)``: the recipe of ``cfg``'s profile, from the class's ``PROFILES`` table
  (``{field: {"quick": ..., "full": ..., "smoke": ...}}``, read with ``cfg.pick``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any, ClassVar, Self

from tlutils.cache import cache_key


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Base of every method's recipe (a frozen dataclass: a recipe is a value, changed by :meth:`replace`).

    A subclass declares its fields with defaults and, optionally, ``PROFILES``: the fields whose value depends on
    the profile, ``{"steps": {"quick": 1000, "full": 10000, "smoke": 4}, ...}`` (``smoke`` may be left out: it then
    takes the ``full`` value, as ``cfg.pick`` does).
    """

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The recipe's field names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def _check_names(cls, names: Iterable[str], what: str) -> None:
        valid = cls.field_names()
        unknown = [n for n in names if n not in valid]
        if unknown:
            hints = [f"{n!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(n, valid, 1))
                     else repr(n) for n in unknown]
            raise TypeError(f"{cls.__name__} has no field {', '.join(hints)} ({what}); its fields are "
                            f"{', '.join(valid)}")

    def replace(self, **overrides) -> Self:
        """A copy with ``overrides`` applied; a name that is not a field raises TypeError naming the fields."""
        self._check_names(overrides, "in replace()")
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        """``{field: value}`` in declaration order (tuples stay tuples; JSON makes them lists)."""
        return dataclasses.asdict(self)

    def cache_key(self, *, only: Iterable[str] | None = None, length: int = 16, **context) -> str:
        """:func:`tlutils.cache.cache_key` of ``{"recipe": fields, **context}``: the fields named in ``only`` (all by
        default: a run that reads a few fields keys on those alone, so changing another keeps its cache), plus
        ``context``, what else the artefact depends on (code fingerprint, data, seed...)."""
        if "recipe" in context:
            raise TypeError("cache_key(recipe=...): the recipe's own fields go under 'recipe'; name the context "
                            "entry otherwise")
        fields = self.as_dict()
        if only is not None:
            only = list(only)
            self._check_names(only, "in cache_key(only=...)")
            fields = {name: fields[name] for name in only}
        return cache_key({"recipe": fields, **context}, length=length)

    @classmethod
    def for_profile(cls, cfg, **overrides) -> Self:
        """The recipe of ``cfg``'s profile (each field of ``PROFILES`` read with ``cfg.pick``), then ``overrides``."""
        cls._check_names(cls.PROFILES, f"in {cls.__name__}.PROFILES")
        return cls(**{name: cfg.pick(**choices) for name, choices in cls.PROFILES.items()}).replace(**overrides)


__all__ = ["Recipe"]
