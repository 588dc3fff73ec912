"""DWQ, Double-Win Quant (Fu et al., ICML 2021): random precision per step, per-precision BatchNorm.

Each training step draws one precision from the model's set (seeded by (seed, step), so resuming is
exact), attacks the batch at that precision and updates the shared weights with that precision's
loss; every precision keeps its own BatchNorm (`--per-bit-bn`, required). At inference the
precision can be drawn at random per batch: `RandomPrecision` does it, and evaluators
(`qadtr.evaluate`, `eval.defense`) honour the `random_inference` flag saved in model.json.

Choices the paper leaves open here:
- Precision set: the model's `--bits`. DWQ sampled 4-16 bits; this project's integer layers support
  2-8, so the set for the QADT-R comparison is {2, 4, 5, 8} (the same as QADT-R's DBWT).
- Attack: L-inf PGD at the sampled precision, eps 8/255 (the standard CIFAR-10 budget), 3 steps
  of 2.5 * eps / steps (Madry's step rule) from a random start. DWQ used more steps; 3 keeps one step
  at ~4x plain QAT. `attack="none"` trains random precision only (no adversarial examples).
- `fraction` of each batch is attacked (1.0: the whole batch, as DWQ and Madry et al. do).
- Inner attacks run on the training-form network in eval mode (see `_inner`).

Example:
    python -m qadtr.train --recipe dwq --bits 2,4,5,8 --per-bit-bn --init zoo/resnet20_float/model.pt --out runs/dwq
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from qadtr._config import register_config
from qadtr.attacks.universal import attack_mode
from qadtr.models import bits_of, deploy_net, running_at
from qadtr.recipes._registry import register_recipe
from qadtr.recipes._inner import generator, n_adversarial, pgd
from qadtr.recipes.qat import bits_for_step
from qadtr.bits import bits_name

ATTACKS = ("pgd", "none")


@register_config
@dataclass(frozen=True)
class DwqConfig:
    """Options of the DWQ recipe (saved in model.json under train.recipe_config)."""

    VERSION = 1
    attack: str = "pgd"  # pgd: L-inf PGD at the sampled precision | none: random precision only
    eps255: float = 8.0  # PGD budget in uint8 levels (8/255: the CIFAR-10 standard)
    steps: int = 3  # PGD steps per training step (the cost: ~1 + steps forward/backward passes)
    step255: float = 0.0  # PGD step in uint8 levels; 0 = 2.5 * eps / steps (Madry et al.'s rule)
    fraction: float = 1.0  # share of each batch replaced by adversarial examples
    random_inference: bool = True  # evaluators draw the precision at random per batch

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"attack={self.attack!r}; choose one of {ATTACKS}")
        if not self.eps255 > 0 or self.steps < 1 or self.step255 < 0:
            raise ValueError(f"eps255={self.eps255} must be > 0, steps={self.steps} >= 1, step255 >= 0 (0 = auto)")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction={self.fraction} must be in [0, 1] (share of the batch attacked)")

    @property
    def step_size(self) -> float:
        return (self.step255 or 2.5 * self.eps255 / self.steps) / 255.0

    def check(self, train_cfg) -> None:
        m = train_cfg.model
        if len(m.bits) < 2:
            raise ValueError("DWQ draws a precision per step from a set; pass several, e.g. --bits 2,4,5,8")
        if not m.per_bit_bn:
            raise ValueError("DWQ keeps a BatchNorm per precision; add --per-bit-bn")
        if train_cfg.switch not in ("all", "random"):
            raise ValueError(f"DWQ draws one precision per step itself; drop --switch {train_cfg.switch}")


@register_recipe("dwq", config=DwqConfig)
def dwq_loss(model, x: torch.Tensor, y: torch.Tensor, *, step: int, cfg) -> tuple[torch.Tensor, dict]:
    """Cross-entropy at one random precision on a batch whose first `fraction` is adversarial there."""
    rc: DwqConfig = cfg.recipe_config
    (w, a), = bits_for_step(model, "random", step, seed=cfg.seed)  # a pure function of (seed, step)
    n_adv = n_adversarial(len(x), rc.fraction) if rc.attack == "pgd" else 0
    with running_at(model, w, a):
        if n_adv:
            with attack_mode(model):
                adv = pgd(model, x[:n_adv], y[:n_adv], eps=rc.eps255 / 255.0, steps=rc.steps,
                          step_size=rc.step_size, g=generator(cfg.seed, step, "pgd"))  # (n_adv, 3, H, W)
            x = torch.cat([adv, x[n_adv:]])  # (B, 3, H, W)
        logits = model(x)  # (B, classes)
    loss = F.cross_entropy(logits, y)
    return loss, {f"loss_{bits_name((w, a))}": loss.item(), "adv_frac": n_adv / len(x)}


class RandomPrecision(nn.Module):
    """The deployable networks of every bit width; each forward call (one batch) runs a random one.

    The draw comes from a generator seeded once (`seed`), so an evaluation is reproducible; `last`
    names the precision of the latest call.
    """

    def __init__(self, model: nn.Module, *, seed: int = 0, bits: list[tuple[int, int]] | None = None):
        super().__init__()
        bits = bits or bits_of(model)
        self.nets = nn.ModuleList([deploy_net(model, w, a) for w, a in bits])
        self.keys = [bits_name(b) for b in bits]
        self.g = torch.Generator().manual_seed(seed)
        self.last = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, classes)
        i = int(torch.randint(len(self.nets), (1,), generator=self.g))
        self.last = self.keys[i]
        return self.nets[i](x)


def random_inference(ck) -> bool:
    """Whether a checkpoint (its `Checkpoint` info) asks evaluators for a random precision per batch."""
    rc = getattr(ck.train, "recipe_config", None) if ck.train is not None else None
    return isinstance(rc, DwqConfig) and rc.random_inference and len(ck.model.bits) > 1
