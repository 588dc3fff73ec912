"""Training recipes by name: one file each, each a loss over one batch.

A recipe is `loss_fn(model, x, y, *, step, cfg) -> (loss, logs)`; the trainer owns the loop,
the optimizer, checkpoints and resumption. A recipe may have its own frozen config (`config=`), which
lives in `TrainConfig.recipe_config` and so in model.json and last.pt; a recipe that keeps state across
steps (QADT-R's patch pool) is registered `stateful=True` and is also passed `state=`, a dict of
tensors the trainer saves in last.pt and restores on --resume.

    float, qat   plain training (qat.py)
    dq           Defensive Quantization: QAT + orthogonality regulariser (dq.py)
    pbat         patch adversarial training against location-optimised patches (pbat.py)
    dwq          Double-Win Quant: random precision per step, per-precision BN (dwq.py)
    qadtr        QADT-R: A-QAPA patch pool + DBWT + GIR (qadtr.py)
"""

from __future__ import annotations

from typing import Callable

from qadtr._registry import resolve
from qadtr.recipes import dq, dwq, pbat, qadtr, qat  # noqa: F401  (each registers its recipes on import)
from qadtr.recipes._options import parse_overrides
from qadtr.recipes._registry import (RECIPE_CONFIGS, RECIPE_ROWS, RECIPES, STATEFUL, RecipeInfo, recipe_for_config,
                                     register_recipe)

__all__ = ["RECIPES", "RECIPE_CONFIGS", "RECIPE_ROWS", "STATEFUL", "RecipeInfo", "get_recipe", "recipe_config",
           "recipe_for_config", "register_recipe"]


def get_recipe(name: str) -> Callable:
    """The loss function of recipe `name`; QadtrError listing the known recipes for any other name."""
    return resolve(RECIPE_ROWS.get(name).function, what=f"recipe {name!r}")


def recipe_config(name: str, items: list[str] | tuple[str, ...] = ()):
    """The config of recipe `name` with `KEY=VALUE` overrides (the CLI's `--recipe-arg`), or None.

    Values are parsed by the field's declared type (bool: true/false; `int | None`: a number or none;
    bit-width tuples: "2,4,8"). Raises ValueError naming the valid keys for an unknown one.
    """
    cls = RECIPE_ROWS.get(name).config  # an unknown name: QadtrError listing the known ones
    if cls is None:
        if items:
            raise ValueError(f"recipe {name!r} takes no --recipe-arg options; recipes with options: "
                             f"{sorted(RECIPE_CONFIGS)}")
        return None
    return cls(**parse_overrides(cls, items))
