"""TrainConfig: one training run, saved inside model.json and checked on --resume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qadtr._config import register_config
from qadtr._distributed import DEVICES
from qadtr.data import DATASETS
from qadtr.models import ModelConfig
from qadtr.recipes import RECIPE_CONFIGS, RECIPES

SWITCH_MODES = ("all", "cycle", "random")


@register_config
@dataclass(frozen=True)
class TrainConfig:
    """One training run; saved inside model.json and checked on --resume."""

    VERSION = 1
    model: ModelConfig
    recipe: str = "qat"  # a name from qadtr.recipes: float, qat, dq, pbat, dwq, qadtr
    data: str = "cifar10"  # dataset name from qadtr.data
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.01  # peak learning rate, cosine-decayed to 0; fine-tuning from trained weights needs little
    momentum: float = 0.9
    weight_decay: float = 5e-4  # the CIFAR ResNet standard (He et al. 2016)
    seed: int = 0
    init: str = ""  # weights to start from: an akamaster .th or a qadtr model.pt ("" = random init)
    switch: str = "all"  # bit widths per step for a multi-bit model: all | cycle | random
    train_subset: int = 0  # use only the first N training images (0 = all): for tests and smoke runs
    eval_subset: int = 0  # evaluate on the first N test images (0 = all)
    save_every: int = 100  # optimizer steps between resume states (and at every epoch end)
    recipe_config: Any = None  # the recipe's own frozen config (DqConfig, ...); filled with defaults if None
    device: str = "cpu"  # cpu | cuda | auto (cuda when torch sees one); --resume may switch it

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(RECIPES)}")
        self._check_recipe_config()
        if self.recipe == "float" and self.model.is_quant:
            raise ValueError("recipe 'float' trains a float model; drop --bits or use --recipe qat")
        if self.recipe != "float" and not self.model.is_quant:
            raise ValueError(f"recipe {self.recipe!r} needs --bits; for a float model use --recipe float")
        if self.data not in DATASETS:
            raise ValueError(f"unknown dataset {self.data!r}; known: {sorted(DATASETS)}")
        if DATASETS[self.data].num_classes != self.model.num_classes:
            raise ValueError(f"{self.data} has {DATASETS[self.data].num_classes} classes but the model "
                             f"{self.model.num_classes}; pass --num-classes {DATASETS[self.data].num_classes}")
        if self.epochs < 1 or self.batch_size < 1 or self.save_every < 1:
            raise ValueError("epochs, batch_size and save_every must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.switch not in SWITCH_MODES:
            raise ValueError(f"switch={self.switch!r}; choose one of {SWITCH_MODES}")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r}; choose one of {DEVICES} (auto: cuda when torch sees one)")
        if self.train_subset < 0 or self.eval_subset < 0:
            raise ValueError("train_subset and eval_subset must be >= 0 (0 = all)")
        if self.recipe_config is not None:
            self.recipe_config.check(self)  # combinations with the model (bit widths, per-bit BN)

    def _check_recipe_config(self) -> None:
        cls = RECIPE_CONFIGS.get(self.recipe)
        if cls is None and self.recipe_config is not None:
            raise ValueError(f"recipe {self.recipe!r} takes no recipe config; drop --recipe-arg")
        if cls is not None and self.recipe_config is None:
            object.__setattr__(self, "recipe_config", cls())  # defaults, written out in model.json
        if cls is not None and not isinstance(self.recipe_config, cls):
            raise ValueError(f"recipe {self.recipe!r} takes a {cls.__name__}, got {type(self.recipe_config).__name__}")
