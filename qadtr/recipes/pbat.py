"""PBAT: adversarial training against location-optimised patches (Rao, Stutz, Schiele 2020).

Every step, the first `fraction` of the (already shuffled) batch gets per-image patches optimised
from scratch against the current weights at the bit width being trained: a uniform random patch at
a random location, `steps` projected sign-gradient steps on its pixels, and a greedy location search
(shift by `stride` px up/down/left/right, keep the move that helps the attack most) every
`move_every` steps. The model then trains on the mixed clean + patched batch with the true labels.
For a switchable model, each bit width `--switch` picks for the step gets its own patches.

Choices made here (Rao et al. give the ingredients, not a CPU budget):
- size 0.0625: Rao et al.'s 8x8 patch on 32x32 CIFAR-10; fraction 0.5: their half-adversarial batch.
- Inner budget: 3 sign steps of 0.1 (in [0, 1] pixel units: three steps can move a pixel by 0.3,
  enough to turn a random patch into an effective one against a model that has not seen it; Rao et
  al. run many more) and one location search after step 2 (4 extra forward passes). On the
  adversarial half that is ~3 forward/backward + 4 forward passes, so a step costs ~2.5-3x QAT
  (`bench/defense_cost.py` measures it).
- Patches are re-drawn every step from seeds (seed, step): no state, exact resume.
- targets "untargeted" (default, Rao et al.'s setting) or "random": each patched image gets a
  random wrong class to be pushed towards.

Example:
    python -m qadtr.train --recipe pbat --bits 2,4,5,8 --switch cycle --per-bit-bn \\
        --init zoo/resnet20_float/model.pt --out runs/pbat
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qadtr._config import register_config
from qadtr.attacks._place import patch_side
from qadtr.attacks.universal import attack_mode
from qadtr.models import running_at
from qadtr.recipes._registry import register_recipe
from qadtr.recipes._inner import (TARGET_MODES, generator, location_patches, n_adversarial, random_targets,
                                  rng)
from qadtr.recipes.qat import bits_for_step
from qadtr.bits import bits_name


@register_config
@dataclass(frozen=True)
class PbatConfig:
    """Options of the PBAT recipe (saved in model.json under train.recipe_config)."""

    VERSION = 1
    size: float = 0.0625  # patch area fraction (Rao et al.: 8x8 px on 32x32)
    fraction: float = 0.5  # share of each batch patched (Rao et al.: half)
    steps: int = 3  # inner sign-gradient steps per training step (the cost)
    lr: float = 0.1  # inner sign step, in [0, 1] pixel units
    stride: int = 2  # pixels per greedy location move
    move_every: int = 2  # inner steps between location searches (0 = fixed random location)
    targets: str = "untargeted"  # untargeted | random (a random wrong class per patched image)

    def __post_init__(self) -> None:
        if not 0.0 < self.size < 1.0:
            raise ValueError(f"size={self.size} is a fraction of the image area in (0, 1), e.g. 0.0625 for 8x8")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction={self.fraction} must be in (0, 1] (share of the batch patched)")
        if self.steps < 1 or not self.lr > 0:
            raise ValueError(f"steps={self.steps} must be >= 1 and lr={self.lr} > 0")
        if self.stride < 1 or self.move_every < 0:
            raise ValueError(f"stride={self.stride} must be >= 1 and move_every={self.move_every} >= 0")
        if self.targets not in TARGET_MODES:
            raise ValueError(f"targets={self.targets!r}; choose one of {TARGET_MODES}")

    def check(self, train_cfg) -> None:
        """Any quantized model; multi-bit models train each bit width `--switch` picks on its own patches."""


@register_recipe("pbat", config=PbatConfig)
def pbat_loss(model, x: torch.Tensor, y: torch.Tensor, *, step: int, cfg) -> tuple[torch.Tensor, dict]:
    """Cross-entropy on a batch whose first `fraction` carries freshly optimised location patches."""
    rc: PbatConfig = cfg.recipe_config
    n_adv = n_adversarial(len(x), rc.fraction)
    side = patch_side(rc.size, tuple(x.shape[-2:]))
    targets = None
    if rc.targets == "random":
        targets = random_targets(y[:n_adv], cfg.model.num_classes, generator(cfg.seed, step, "targets"))
    bits = bits_for_step(model, cfg.switch, step, seed=cfg.seed)
    total, logs = 0.0, {}
    for k, (w, a) in enumerate(bits):
        with running_at(model, w, a):
            with attack_mode(model):
                adv, success, _ = location_patches(
                    model, x[:n_adv], y[:n_adv], targets=targets, side=side, steps=rc.steps, lr=rc.lr,
                    stride=rc.stride, move_every=rc.move_every, g=generator(cfg.seed, step * 16 + k, "init"),
                    place_rng=rng(cfg.seed, step * 16 + k, "place"))  # (n_adv, 3, H, W)
            mixed = torch.cat([adv, x[n_adv:]])  # (B, 3, H, W)
            loss = F.cross_entropy(model(mixed), y)
        total = total + loss / len(bits)
        logs[f"loss_{bits_name((w, a))}"] = loss.item()
        logs[f"inner_asr_{bits_name((w, a))}"] = success.float().mean().item()
    logs["patched_frac"] = n_adv / len(x)
    return total, logs
