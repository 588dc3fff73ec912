"""Location-optimised per-image patch (Rao, Stutz, Schiele 2020, "Adversarial training against
location-optimized adversarial patches").

Each image gets its own patch and its own position. The patch pixels take projected sign-gradient
steps (PGD with the full [0, 1] range as the budget); every `move_every` steps a greedy location
search tries shifting each image's patch by `stride` pixels up, down, left and right and keeps the
shift that lowers that image's loss most (no move if none lowers it). Rao et al. try one random
direction per step; trying all four costs four forward passes per move and never moves uphill.

Example:
    >>> patch = location_patch(net, test.images[:100], test.labels[:100], cfg=LocationConfig(size=0.05))
    >>> patch.values.shape, len(patch.placement)   # ((100, 3, 7, 7), 100)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from qadtr._config import register_config
from qadtr.attacks._place import EOTConfig, Placement, apply_patch, patch_side, sample_placements
from qadtr.attacks.patchfile import Patch
from qadtr.attacks.universal import _check_common, attack_mode, check_data, targeted_loss, untargeted_loss
from qadtr.predict import to_tensor
from qadtr.progress import progress as progress_bar

MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0))  # (dx, dy) unit moves: up, down, left, right


@register_config
@dataclass(frozen=True)
class LocationConfig:
    VERSION = 1
    size: float = 0.05  # fraction of the image area (Rao et al.: 8x8 = 6% of a CIFAR image)
    target: int | None = None  # None = untargeted
    steps: int = 100  # sign-gradient steps per image
    lr: float = 0.05  # sign step in pixel space
    stride: int = 2  # pixels per location move
    move_every: int = 5  # steps between location searches (0 = never move)
    batch_size: int = 100  # images attacked together (memory only: attacks are independent)
    seed: int = 0  # patch init and initial locations

    def __post_init__(self) -> None:
        _check_common(self)
        if self.stride < 1 or self.move_every < 0:
            raise ValueError(f"stride={self.stride} must be >= 1 and move_every={self.move_every} >= 0")


def _shift(pl: Placement, dx: int, dy: int, *, side: int, hw: tuple[int, int]) -> Placement:
    x = np.clip(pl.x + dx, 0, hw[1] - side)
    y = np.clip(pl.y + dy, 0, hw[0] - side)
    return Placement(x, y, pl.angle, pl.scale, pl.brightness)


def location_patch(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, cfg: LocationConfig,
                   progress: bool = False) -> Patch:
    """Per-image patches and positions for (N, H, W, 3) uint8 `images`.

    Returns:
        A `Patch` with values (N, 3, s, s), `placement` (N) and `indices` 0..N-1 (callers attacking a
        subset of a split replace them with the subset's indexes).
    """
    check_data(images, labels, cfg.target)
    n, h, w, _ = images.shape
    side = patch_side(cfg.size, (h, w))
    rng = np.random.default_rng(cfg.seed)
    values = rng.uniform(0.0, 1.0, (n, 3, side, side)).astype(np.float32)  # (N, 3, s, s)
    placement = sample_placements(n, side=side, hw=(h, w), eot=EOTConfig(), rng=rng)

    def losses(x, patch, pl, *, y):  # -> (B,) loss, (B,) success; `y` by keyword, as `_greedy_move` calls it
        logits = model(apply_patch(x, patch, pl))
        return untargeted_loss(logits, y) if cfg.target is None else targeted_loss(logits, cfg.target)

    log = []
    with attack_mode(model):
        batches = range(0, n, cfg.batch_size)
        for start in progress_bar(batches, enabled=progress, desc="location", unit="batch", leave=False):
            sl = slice(start, min(n, start + cfg.batch_size))
            x, y = to_tensor(images[sl]), torch.from_numpy(labels[sl]).long()  # (B, 3, H, W), (B,)
            patch = torch.from_numpy(values[sl].copy()).requires_grad_(True)  # (B, 3, s, s)
            pl = placement[sl]
            for step in range(cfg.steps):
                loss, success = losses(x, patch, pl, y=y)
                (grad,) = torch.autograd.grad(loss.sum(), patch)  # per-image losses are independent
                with torch.no_grad():
                    patch.sub_(cfg.lr * grad.sign()).clamp_(0.0, 1.0)
                    if cfg.move_every and (step + 1) % cfg.move_every == 0:
                        pl = _greedy_move(losses, x, patch, pl=pl, y=y, side=side, hw=(h, w), stride=cfg.stride)
            with torch.no_grad():
                loss, success = losses(x, patch, pl, y=y)
            values[sl] = patch.detach().numpy()
            for f in Placement.FIELDS:
                getattr(placement, f)[sl] = getattr(pl, f)  # the arrays are ours: write the moves back
            log.append({"images": [sl.start, sl.stop], "loss": round(float(loss.mean()), 5),
                        "success": round(float(success.float().mean()), 4)})
    return Patch(values=values, attack="location", config=cfg, size=cfg.size, side=side, target=cfg.target,
                 eot=EOTConfig(), seed=cfg.seed, placement=placement, indices=np.arange(n), log=tuple(log))


def _greedy_move(losses, x, patch, *, pl, y, side, hw, stride) -> Placement:
    best, _ = losses(x, patch, pl, y=y)  # (B,)
    x_new, y_new = pl.x.copy(), pl.y.copy()
    for dx, dy in MOVES:
        cand = _shift(pl, dx * stride, dy * stride, side=side, hw=hw)
        loss, _ = losses(x, patch, cand, y=y)
        better = (loss < best).numpy()
        best = torch.where(torch.from_numpy(better), loss, best)
        x_new[better], y_new[better] = cand.x[better], cand.y[better]
    return Placement(x_new, y_new, pl.angle, pl.scale, pl.brightness)

