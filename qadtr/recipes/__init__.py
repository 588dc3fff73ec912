"""Training recipes by name: one file each, each a loss over one batch.

A recipe is `loss_fn(model, x, y, *, step, cfg) -> (loss, logs)`; the trainer owns the loop,
the optimizer, checkpoints and resumption.
"""

from __future__ import annotations

from typing import Callable

from qadtr._errors import QadtrError

RECIPES: dict[str, Callable] = {}


def register_recipe(name: str):
    def wrap(fn: Callable) -> Callable:
        RECIPES[name] = fn
        return fn
    return wrap


def get_recipe(name: str) -> Callable:
    from qadtr.recipes import qat  # noqa: F401  (fills RECIPES)

    if name not in RECIPES:
        raise QadtrError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]
