"""The recipe table every recipe module registers itself into (read through qadtr.recipes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from qadtr._registry import Registry


@dataclass(frozen=True)
class RecipeInfo:
    name: str  # what --recipe takes
    function: str | Callable  # `loss_fn(model, x, y, *, step, cfg[, state]) -> (loss, logs)`, or "module:fn"
    config: type | None = None  # its frozen config class (None: the recipe has no options)
    stateful: bool = False  # takes and fills `state=` (saved in last.pt)


RECIPE_ROWS: Registry[RecipeInfo] = Registry("recipe")
RECIPES = RECIPE_ROWS.view("function")  # name -> loss function (assigning replaces the row's function)
RECIPE_CONFIGS = RECIPE_ROWS.view("config", where=lambda r: r.config is not None)  # name -> config class
STATEFUL = RECIPE_ROWS.names_where(lambda r: r.stateful)  # recipes that take and fill `state=`


def register_recipe(name: str, *, config: type | None = None, stateful: bool = False):
    def wrap(fn: Callable) -> Callable:
        RECIPE_ROWS.register(RecipeInfo(name, fn, config, stateful))
        return fn
    return wrap


def recipe_for_config(cfg: Any) -> RecipeInfo:
    """The recipe row whose config class is `type(cfg)`; UnknownName (a QadtrError) for any other config."""
    return RECIPE_ROWS.for_config(cfg)
