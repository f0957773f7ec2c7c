"""The one recipe type: replace with a clear error, as_dict, cache keys, per-profile construction."""

from dataclasses import FrozenInstanceError, dataclass
from types import SimpleNamespace
from typing import ClassVar

import pytest

from tlutils.adapt import AdaptationRecipe
from tlutils.cache import cache_key
from tlutils.finetune import StrategyRecipe
from tlutils.lpft import PeftRecipe
from tlutils.recipe import Recipe
from tlutils.source import SourceRecipe


@dataclass(frozen=True)
class Toy(Recipe):
    PROFILES: ClassVar[dict] = {"steps": {"quick": 10, "full": 100, "smoke": 2}}

    steps: int = 5
    lr: float = 0.1
    hidden: tuple[int, ...] = (8,)


def cfg(profile: str, smoke: bool = False):
    def pick(*, quick, full, **kw):
        if profile == "quick":
            return quick
        return kw["smoke"] if smoke and "smoke" in kw else full
    return SimpleNamespace(pick=pick, seed=7)


def test_every_methods_recipe_is_one_type():
    for cls in (AdaptationRecipe, StrategyRecipe, SourceRecipe, PeftRecipe):
        assert issubclass(cls, Recipe) and cls.__doc__ and cls().replace() == cls()


def test_replace_copies_and_names_unknown_fields():
    toy = Toy()
    assert toy.replace(lr=0.5) == Toy(lr=0.5) and toy.lr == 0.1
    with pytest.raises(FrozenInstanceError):
        toy.lr = 1.0
    with pytest.raises(TypeError, match=r"Toy has no field 'stpes' \(did you mean 'steps'\?\).*fields are steps, lr"):
        toy.replace(stpes=3)
    with pytest.raises(TypeError, match="StrategyRecipe has no field 'lr'"):
        StrategyRecipe().replace(lr=1e-3)


def test_as_dict_and_cache_key():
    toy = Toy()
    assert toy.as_dict() == {"steps": 5, "lr": 0.1, "hidden": (8,)}
    assert toy.cache_key(seed=1) == cache_key({"recipe": {"steps": 5, "lr": 0.1, "hidden": [8]}, "seed": 1})
    assert toy.cache_key(seed=1) != toy.cache_key(seed=2) != toy.replace(lr=0.2).cache_key(seed=2)
    # a key over the fields a run reads ignores the others
    assert toy.cache_key(only=["steps"]) == toy.replace(lr=0.2).cache_key(only=["steps"])
    assert toy.cache_key(only=["steps"]) != toy.replace(steps=6).cache_key(only=["steps"])
    assert len(toy.cache_key(length=8)) == 8
    with pytest.raises(TypeError, match="no field 'step'"):
        toy.cache_key(only=["step"])
    with pytest.raises(TypeError, match="go under 'recipe'"):
        toy.cache_key(recipe="mine")


def test_for_profile_reads_the_profiles_table():
    assert Toy.for_profile(cfg("quick")) == Toy(steps=10)
    assert Toy.for_profile(cfg("full")) == Toy(steps=100)
    assert Toy.for_profile(cfg("full", smoke=True)) == Toy(steps=2)
    assert Toy.for_profile(cfg("quick"), lr=0.3) == Toy(steps=10, lr=0.3)
    with pytest.raises(TypeError, match="no field 'lrr'"):
        Toy.for_profile(cfg("quick"), lrr=0.3)
    assert AdaptationRecipe.for_profile(cfg("full")).steps == 10000
    assert SourceRecipe.for_profile(cfg("quick")).seed == 7
