"""A-QAPA: one patch optimised across the bit widths of a switchable quantized model.

QADT-R (Guesmi et al. 2025) generates patches "inside quantized models, across bit widths"; its full
text is not available, so the method is defined here:

    nets      N_k = deploy_net(model, w_k, a_k) for each chosen bit width k = 1..K (BN folded, int32
              bias: what the integer runtimes compute)
    per step  one minibatch, one set of EOT placements, the same patched images x' through every N_k:
              L_k = mean over the batch of the attack loss (targeted CE or untargeted -log(1 - p_true))
    tracking  m_k <- beta * m_k + (1 - beta) * L_k   (m_k starts at the first L_k; beta = `momentum`)
    weights   alpha = softmax(m / T)   (no gradient flows through alpha)
    objective sum_k alpha_k * L_k

The weights move towards the bit widths where the patch is currently weakest (highest loss). T (the
`temperature`, in loss units) sets how hard: T -> infinity is the plain expectation over bit widths
(alpha = 1/K), T -> 0 is the worst case (all weight on the weakest bit width). The moving average
keeps alpha from chasing minibatch noise. Everything else (sigmoid-Adam, STE rounding) is as in
`universal`.

Example:
    >>> patch = aqapa_patch(model, train.images, train.labels, cfg=AqapaConfig(size=0.1, target=3))
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from qadtr._config import register_config
from qadtr._errors import QadtrError
from qadtr.attacks._place import EOTConfig, patch_side
from qadtr.attacks.patchfile import Patch
from qadtr.attacks.universal import (_check_common, attack_images, attack_mode, check_data, optimise_patch,
                                     targeted_loss, untargeted_loss)
from qadtr.models import bits_of, deploy_net
from qadtr.bits import bits_name


@register_config
@dataclass(frozen=True)
class AqapaConfig:
    VERSION = 2  # 2: sign optimiser with a cosine schedule by default (see universal.py)
    size: float = 0.1  # fraction of the image area
    target: int | None = None  # None = untargeted
    bits: tuple[tuple[int, int], ...] = ()  # (w, a) pairs to attack together; () = all of the model's
    temperature: float = 0.5  # softmax temperature over per-bit-width losses (inf = plain mean)
    momentum: float = 0.9  # moving average of the per-bit-width losses that set the weights
    steps: int = 500
    batch_size: int = 64
    optimizer: str = "sign"  # sign (projected sign-gradient) | adam (sigmoid logits)
    lr: float = 0.01  # sign: pixel step; adam: logit step (~0.1)
    schedule: str = "cosine"  # cosine decay of the step to 0 over `steps` | constant
    eot: EOTConfig = field(default_factory=EOTConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", tuple((int(w), int(a)) for w, a in self.bits))
        _check_common(self)
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (large = plain mean, small = worst case)")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum={self.momentum} must be in [0, 1)")


def aqapa_patch(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, cfg: AqapaConfig,
                progress: bool = False) -> Patch:
    """One patch against several bit widths of a switchable `QuantNet`; the log records the weights.

    Raises:
        QadtrError: a float model, or a bit width the model lacks.
    """
    have = bits_of(model)
    if not have:
        raise QadtrError("A-QAPA needs a quantized (switchable) model; for a float model use --attack universal")
    bits = cfg.bits or tuple(have)
    missing = [b for b in bits if b not in have]
    if missing:
        raise QadtrError(f"model has no bit widths {missing}; it was built for {have}")
    check_data(images, labels, cfg.target)
    images, labels = attack_images(images, labels, cfg.target)
    side = patch_side(cfg.size, images.shape[1:3])
    nets = [deploy_net(model, w, a) for w, a in bits]
    keys = [bits_name(b) for b in bits]
    ema: list[torch.Tensor | None] = [None]

    def objective(adv: torch.Tensor, y: torch.Tensor):
        per_bits, successes = [], []
        for net in nets:
            logits = net(adv)  # (B, classes)
            losses, success = untargeted_loss(logits, y) if cfg.target is None else targeted_loss(logits, cfg.target)
            per_bits.append(losses.mean())
            successes.append(success)
        stacked = torch.stack(per_bits)  # (K,)
        now = stacked.detach()
        ema[0] = now if ema[0] is None else cfg.momentum * ema[0] + (1 - cfg.momentum) * now
        alpha = torch.softmax(ema[0] / cfg.temperature, 0)  # (K,) more weight where the loss is highest
        worst = torch.stack(successes).float().mean(1).argmin()
        extras = {"alpha": {k: round(float(a), 4) for k, a in zip(keys, alpha)},
                  "loss_per_bits": {k: round(float(v), 5) for k, v in zip(keys, now)},
                  "success_per_bits": {k: round(float(s.float().mean()), 4) for k, s in zip(keys, successes)}}
        return (alpha * stacked).sum(), successes[int(worst)], extras

    with contextlib.ExitStack() as stack:
        for net in nets:
            stack.enter_context(attack_mode(net))
        values, log = optimise_patch(objective, images, labels, side=side, steps=cfg.steps,
                                     batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr, eot=cfg.eot,
                                     seed=cfg.seed, schedule=cfg.schedule, progress=progress, desc="a-qapa")
    return Patch(values=values, attack="aqapa", config=cfg, size=cfg.size, side=side, target=cfg.target,
                 eot=cfg.eot, seed=cfg.seed, bits=tuple(bits), log=tuple(log))

