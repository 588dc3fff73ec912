"""Train a float or quantized model: `python -m qadtr.train --model resnet20 --bits 4 --epochs 3 --out runs/w4`.

Runs are resumable (`--resume` continues from `OUT/last.pt`, replaying exactly the batches an
uninterrupted run sees) and end with OUT/model.pt + OUT/model.json (config, versions, sha256, metrics).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qadtr._config import register_config
from qadtr.models import SUPPORTED_BITS, ModelConfig

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

    def __post_init__(self) -> None:
        from qadtr.data import DATASETS
        from qadtr.recipes import RECIPES, get_recipe

        get_recipe("qat")  # fills RECIPES
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
        if self.train_subset < 0 or self.eval_subset < 0:
            raise ValueError("train_subset and eval_subset must be >= 0 (0 = all)")
        if self.recipe_config is not None:
            self.recipe_config.check(self)  # combinations with the model (bit widths, per-bit BN)

    def _check_recipe_config(self) -> None:
        from qadtr.recipes import RECIPE_CONFIGS

        cls = RECIPE_CONFIGS.get(self.recipe)
        if cls is None and self.recipe_config is not None:
            raise ValueError(f"recipe {self.recipe!r} takes no recipe config; drop --recipe-arg")
        if cls is not None and self.recipe_config is None:
            object.__setattr__(self, "recipe_config", cls())  # defaults, written out in model.json
        if cls is not None and not isinstance(self.recipe_config, cls):
            raise ValueError(f"recipe {self.recipe!r} takes a {cls.__name__}, got {type(self.recipe_config).__name__}")


def parse_bits(text: str) -> tuple[tuple[int, int], ...]:
    """"4" -> ((4, 4),); "2,4,8" -> three pairs; "w4a8" -> ((4, 8),); "" -> () (float)."""
    pairs = []
    for tok in filter(None, (t.strip() for t in text.split(","))):
        try:
            if tok.startswith("w") and "a" in tok:
                w, a = int(tok[1:tok.index("a")]), int(tok[tok.index("a") + 1:])
            else:
                w = a = int(tok)
        except ValueError:
            raise ValueError(f"bad bit width {tok!r}; write e.g. 4, 2,4,8 or w4a8") from None
        pairs.append((w, a))
    return tuple(pairs)


def train(cfg: TrainConfig, out: str | Path, *, data_dir: str | None = None, resume: bool = False,
          download: bool = False) -> Path:
    """Train per `cfg` into `out`; returns the path of the final model.pt."""
    import torch

    from qadtr._errors import QadtrError
    from qadtr._trainer import fit
    from qadtr.checkpoint import save_checkpoint
    from qadtr.data import DATASETS, load_split, subset
    from qadtr.models import create_model, load_pretrained_

    out = Path(out)
    if (out / "model.pt").exists() and not resume:
        raise QadtrError(f"{out} already holds a finished model; choose another --out")
    if (out / "last.pt").exists() and not resume:
        raise QadtrError(f"{out} holds an interrupted run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    train_split = load_split(cfg.data, "train", data_dir, download=download)
    test_split = load_split(cfg.data, "test", data_dir, download=download)
    if cfg.train_subset:
        train_split = subset(train_split, cfg.train_subset)
    if cfg.eval_subset:
        test_split = subset(test_split, cfg.eval_subset)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model)
    if cfg.init:
        load_pretrained_(model, cfg.init)
    metrics = fit(model, cfg, train_split, test_split, out, resume=resume, hflip=DATASETS[cfg.data].hflip_ok)
    return save_checkpoint(model, out / "model.pt", model_cfg=cfg.model, train_cfg=cfg,
                           metrics={k: v for k, v in metrics.items() if k != "history"})


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli
    from qadtr.models import list_models

    p = argparse.ArgumentParser(prog="python -m qadtr.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20", help=f"architecture: {', '.join(list_models())}")
    p.add_argument("--bits", default="", help=f"bit widths, w=a from {SUPPORTED_BITS}: '4', '2,4,8' "
                   "(one switchable model) or 'w4a8'; omit for float")
    p.add_argument("--recipe", default=None, help="float | qat | dq | pbat | dwq | qadtr (default: float without "
                   "--bits, qat with); see qadtr/recipes/")
    p.add_argument("--recipe-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the recipe's config, repeatable: e.g. --recipe-arg beta=3e-4 "
                   "(the fields of DqConfig, PbatConfig, DwqConfig, QadtrConfig)")
    p.add_argument("--per-bit-bn", action="store_true", help="separate BatchNorm per bit width")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $QADTR_DATA)")
    p.add_argument("--download", action="store_true", help="fetch the official dataset archive if missing")
    p.add_argument("--num-classes", type=int, default=None, help="default: the dataset's")
    p.add_argument("--init", default="", help="start from these weights (.th or model.pt)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--switch", default="all", choices=SWITCH_MODES)
    p.add_argument("--train-subset", type=int, default=0)
    p.add_argument("--eval-subset", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--out", required=True, help="run folder: model.pt, model.json, last.pt, history.json")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr._errors import QadtrError
        from qadtr.data import DATASETS
        from qadtr.recipes import recipe_config

        try:
            bits = parse_bits(args.bits)
            num_classes = args.num_classes or (DATASETS[args.data].num_classes if args.data in DATASETS else 10)
            recipe = args.recipe or ("qat" if bits else "float")
            cfg = TrainConfig(
                model=ModelConfig(args.model, num_classes=num_classes, bits=bits, per_bit_bn=args.per_bit_bn),
                recipe=recipe, data=args.data, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                init=args.init, switch=args.switch, train_subset=args.train_subset,
                eval_subset=args.eval_subset, save_every=args.save_every,
                recipe_config=recipe_config(recipe, args.recipe_arg))
        except ValueError as e:
            raise QadtrError(str(e)) from None
        pt = train(cfg, args.out, data_dir=args.data_dir, resume=args.resume, download=args.download)
        print(f"wrote {pt} (+ {pt.with_suffix('.json').name})")

    return run_cli("qadtr.train", body)


if __name__ == "__main__":
    sys.exit(main())
