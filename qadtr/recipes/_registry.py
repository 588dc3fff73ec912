"""The recipe tables every recipe module registers itself into (read through qadtr.recipes)."""

from __future__ import annotations

from typing import Callable


RECIPES: dict[str, Callable] = {}
RECIPE_CONFIGS: dict[str, type] = {}  # recipe name -> its frozen config class (absent: no options)
STATEFUL: set[str] = set()  # recipes that take and fill `state=`


def register_recipe(name: str, *, config: type | None = None, stateful: bool = False):
    def wrap(fn: Callable) -> Callable:
        RECIPES[name] = fn
        if config is not None:
            RECIPE_CONFIGS[name] = config
        if stateful:
            STATEFUL.add(name)
        return fn
    return wrap
