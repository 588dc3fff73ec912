"""Inner attacks that adversarial-training recipes run inside a training step (PBAT, DWQ, QADT-R).

They differ from `qadtr.attacks` in two ways that matter for training cost and resumption:
- they work on the augmented (B, 3, H, W) batch tensor, and on the training-form network in eval mode
  (BatchNorm with running statistics, not folded). `deploy_net` would rebuild and fold a Brevitas
  network every step (slow); the two differ only by the int32 rounding of the folded bias;
- every random draw comes from generators seeded by (seed, step, purpose), so a resumed run replays
  exactly the attacks an uninterrupted run made.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qadtr.attacks._place import EOTConfig, Placement, apply_patch, sample_placements
from qadtr.attacks.location import _greedy_move

TARGET_MODES = ("untargeted", "random")
# purposes of the per-step generators: each draws from its own stream, so adding a draw in one
# place never shifts the numbers another place sees
SALT = {"split": 1, "targets": 2, "init": 3, "place": 4, "pool": 5, "gir": 6, "noise": 7, "pgd": 8, "dbwt": 9}


def generator(seed: int, step: int, purpose: str) -> torch.Generator:
    """A torch generator that is a pure function of (seed, step, purpose)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 16 + SALT[purpose])


def rng(seed: int, step: int, purpose: str) -> np.random.Generator:
    """A numpy generator that is a pure function of (seed, step, purpose) (placements use numpy)."""
    return np.random.default_rng([seed, step, SALT[purpose]])


def n_adversarial(batch: int, fraction: float) -> int:
    """How many images of a batch get attacked: round(fraction * B), at least one when fraction > 0."""
    return 0 if fraction <= 0 else max(1, min(batch, round(fraction * batch)))


def random_targets(y: torch.Tensor, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """(B,) a uniformly drawn class other than each image's label."""
    shift = torch.randint(1, num_classes, y.shape, generator=g)  # (B,) in 1..C-1: never the label itself
    return (y + shift) % num_classes


def attack_losses(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None):
    """(B,) losses an attacker minimises and (B,) success; `targets` None = untargeted.

    untargeted: -log(1 - p_true) (saturates once the true class is gone); targeted: CE to each
    image's own target.
    """
    if targets is None:
        p_true = logits.softmax(1).gather(1, y[:, None]).squeeze(1)  # (B,)
        return -torch.log1p(-p_true.clamp(max=1 - 1e-6)), logits.argmax(1) != y
    return F.cross_entropy(logits, targets, reduction="none"), logits.argmax(1) == targets


def location_patches(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, targets: torch.Tensor | None, side: int,
                     steps: int, lr: float, stride: int, move_every: int, g: torch.Generator,
                     place_rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, Placement]:
    """Per-image patches with greedy location moves (Rao et al. 2020), from a uniform random init.

    `net` must already be in attack mode (eval, no weight gradients). x: (B, 3, H, W) in [0, 1].

    Returns:
        (B, 3, H, W) patched images (detached), (B,) success on them, and the placements.
    """
    b, _, h, w = x.shape
    patch = torch.rand(b, 3, side, side, generator=g).requires_grad_(True)  # (B, 3, s, s)
    pl = sample_placements(b, side=side, hw=(h, w), eot=EOTConfig(), rng=place_rng)

    def losses(x_, patch_, pl_, *, y):  # the signature `_greedy_move` calls (`y` by keyword)
        return attack_losses(net(apply_patch(x_, patch_, pl_)), y, targets)

    for step in range(steps):
        loss, _ = losses(x, patch, pl, y=y)
        (grad,) = torch.autograd.grad(loss.sum(), patch)  # per-image losses are independent
        with torch.no_grad():
            patch.sub_(lr * grad.sign()).clamp_(0.0, 1.0)
            if move_every and (step + 1) % move_every == 0:
                pl = _greedy_move(losses, x, patch, pl=pl, y=y, side=side, hw=(h, w), stride=stride)
    with torch.no_grad():
        adv = apply_patch(x, patch, pl)  # (B, 3, H, W)
        _, success = attack_losses(net(adv), y, targets)
    return adv, success, pl


def pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, step_size: float,
        g: torch.Generator, targets: torch.Tensor | None = None) -> torch.Tensor:
    """L-inf PGD from a uniform random start (Madry et al. 2018); one step is FGSM-RS (Wong et al. 2020).

    `net` in attack mode. x: (B, 3, H, W) in [0, 1]; returns the (B, 3, H, W) adversarial images.
    Untargeted: ascend the cross-entropy of the label; targeted: descend it towards `targets`.
    """
    delta = (torch.rand(x.shape, generator=g) * 2 - 1) * eps  # (B, 3, H, W) in [-eps, eps]
    adv = (x + delta).clamp(0.0, 1.0)
    for _ in range(steps):
        adv.requires_grad_(True)
        logits = net(adv)  # (B, classes)
        loss = F.cross_entropy(logits, y) if targets is None else -F.cross_entropy(logits, targets)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv + step_size * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
    return adv.detach()
