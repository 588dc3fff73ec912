"""LaVAN (Karmon, Zoran, Goldberg 2018): a small patch at one fixed location, no transformations.

The patch never moves, so it can exploit exactly the receptive fields under it; Karmon et al. show ~2%
of the image suffices on ImageNet. Their objective raises the target's log-probability and lowers
the true class's: loss = -log p_target + min(-log p_true, CAP). The cap (a true-class probability below
e^-10 earns nothing more) keeps the second term from running away once the true class is gone.
Untargeted: -log(1 - p_true), as in `universal`.

Example:
    >>> patch = lavan_patch(net, train.images, train.labels, cfg=LavanConfig(size=0.02, target=3))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qadtr._config import register_config
from qadtr.attacks._place import EOTConfig, patch_side
from qadtr.attacks.patchfile import Patch
from qadtr.attacks.universal import (_check_common, attack_images, attack_mode, check_data, optimise_patch,
                                     untargeted_loss)

CAP = 10.0  # nats: beyond p_true < e^-10 lowering the true class further is worthless


@register_config
@dataclass(frozen=True)
class LavanConfig:
    VERSION = 2  # 2: sign optimiser with a cosine schedule by default (see universal.py)
    size: float = 0.02  # fraction of the image area (LaVAN's ~2%)
    target: int | None = None  # None = untargeted
    xy: tuple[int, int] | None = None  # fixed top-left (column, row); None = bottom-right corner
    steps: int = 500
    batch_size: int = 64
    optimizer: str = "sign"  # sign (projected sign-gradient) | adam (sigmoid logits)
    lr: float = 0.01  # sign: pixel step; adam: logit step (~0.1)
    schedule: str = "cosine"  # cosine decay of the step to 0 over `steps` | constant
    seed: int = 0

    def __post_init__(self) -> None:
        if self.xy is not None:
            object.__setattr__(self, "xy", tuple(int(v) for v in self.xy))
            if len(self.xy) != 2 or min(self.xy) < 0:
                raise ValueError(f"xy={self.xy} must be (column, row) >= 0, or None for the bottom-right corner")
        _check_common(self)


def lavan_loss(logits: torch.Tensor, labels: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) -log p_target + min(-log p_true, CAP) and (B,) success (argmax == target)."""
    t = torch.full_like(labels, target)
    ce_t = F.cross_entropy(logits, t, reduction="none")
    ce_y = F.cross_entropy(logits, labels, reduction="none")
    return ce_t - ce_y.clamp(max=CAP), logits.argmax(1) == target


def lavan_patch(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, cfg: LavanConfig,
                progress: bool = False) -> Patch:
    """Optimise a fixed-location patch; `images` (N, H, W, 3) uint8, labels (N,). Returns a `Patch`."""
    check_data(images, labels, cfg.target)
    images, labels = attack_images(images, labels, cfg.target)
    h, w = images.shape[1:3]
    side = patch_side(cfg.size, (h, w))
    xy = cfg.xy if cfg.xy is not None else (w - side, h - side)
    eot = EOTConfig(location="fixed", xy=xy)

    def objective(adv: torch.Tensor, y: torch.Tensor):
        logits = model(adv)  # (B, classes)
        losses, success = untargeted_loss(logits, y) if cfg.target is None else lavan_loss(logits, y, cfg.target)
        return losses.mean(), success, {}

    with attack_mode(model):
        values, log = optimise_patch(objective, images, labels, side=side, steps=cfg.steps,
                                     batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr, eot=eot,
                                     seed=cfg.seed, schedule=cfg.schedule, progress=progress, desc="lavan")
    return Patch(values=values, attack="lavan", config=cfg, size=cfg.size, side=side, target=cfg.target, eot=eot,
                 seed=cfg.seed, log=tuple(log))
