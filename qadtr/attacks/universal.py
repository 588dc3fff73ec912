"""Universal adversarial patch (Brown et al. 2017), targeted or untargeted, with EOT.

One patch is optimised over many training images, each step on a fresh minibatch with freshly drawn
placements (random location, and rotation/scale/brightness if the EOT ranges allow), so it works
wherever it is put.

Optimiser choice (see `UniversalConfig.optimizer`), both with a cosine-decayed step by default:
- "sign" (default): projected sign-gradient descent on the pixel values (PGD with eps = the full [0, 1]
  range), the classic choice of ART and of Rao et al. With the cosine decay it reached the highest
  targeted ASR on the zoo's float ResNet-20 (see the README's strength check); the late small steps
  are what constant-step sign descent lacks.
- "adam": Adam on unconstrained logits z with patch = sigmoid(z). No projection is needed,
  Adam's per-pixel step normalisation keeps saturated pixels moving (the sigmoid's small gradient near
  0/1 is rescaled), and the step in pixel space shrinks smoothly at the bounds instead of sticking.
Every patch pixel is rounded to the uint8 grid in the forward pass (straight-through), so the model
is optimised against exactly the images the replay will feed it.

Example:
    >>> cfg = UniversalConfig(size=0.1, target=3, steps=500)
    >>> patch = universal_patch(deploy_net(model, 8), train.images, train.labels, cfg=cfg)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qadtr._config import register_config
from qadtr._errors import QadtrError
from qadtr.attacks._place import EOTConfig, apply_patch, patch_side, sample_placements
from qadtr.attacks.patchfile import Patch
from qadtr.predict import to_tensor
from qadtr.progress import progress as progress_bar

OPTIMIZERS = ("sign", "adam")
SCHEDULES = ("cosine", "constant")
# An objective maps (patched images (B, 3, H, W), labels (B,)) to (loss to minimise, success (B,) bool, extras).
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict]]


@register_config
@dataclass(frozen=True)
class UniversalConfig:
    VERSION = 2  # 2: sign optimiser with a cosine schedule by default
    size: float = 0.1  # fraction of the image area the patch covers (0.02, 0.05, 0.1)
    target: int | None = None  # target class; None = untargeted (make the prediction leave the true class)
    steps: int = 500  # optimiser steps, one minibatch each
    batch_size: int = 64  # images (each with its own placement) per step
    optimizer: str = "sign"  # sign: projected sign-gradient on pixels | adam: Adam on sigmoid logits
    lr: float = 0.01  # sign: step in pixel space (2.5 uint8 levels); adam: step in logit space (~0.1)
    schedule: str = "cosine"  # cosine: the step decays to 0 over `steps` | constant
    eot: EOTConfig = field(default_factory=EOTConfig)  # placement ranges (random location by default)
    seed: int = 0  # patch init, minibatches and placements

    def __post_init__(self) -> None:
        _check_common(self)


def _check_common(cfg) -> None:
    """Validation shared by the attack configs (each field exists on all of them)."""
    if not 0.0 < cfg.size < 1.0:
        raise ValueError(f"size={cfg.size} is a fraction of the image area in (0, 1), e.g. 0.02, 0.05 or 0.1")
    if cfg.target is not None and (not isinstance(cfg.target, int) or cfg.target < 0):
        raise ValueError(f"target={cfg.target!r} must be a class index >= 0, or None for untargeted")
    if cfg.steps < 1 or getattr(cfg, "batch_size", 1) < 1:
        raise ValueError(f"steps={cfg.steps} and batch_size must be >= 1")
    if getattr(cfg, "optimizer", "sign") not in OPTIMIZERS:
        raise ValueError(f"optimizer={cfg.optimizer!r}; choose one of {OPTIMIZERS}")
    if getattr(cfg, "schedule", "cosine") not in SCHEDULES:
        raise ValueError(f"schedule={cfg.schedule!r}; choose one of {SCHEDULES}")
    if not cfg.lr > 0:
        raise ValueError(f"lr={cfg.lr} must be positive (sign: ~0.01 in pixels; adam: ~0.1 in logit space)")


def targeted_loss(logits: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy towards `target`: (B,) losses and (B,) success (argmax == target)."""
    t = torch.full((len(logits),), target, dtype=torch.long)
    return F.cross_entropy(logits, t, reduction="none"), logits.argmax(1) == target


def untargeted_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log(1 - p_true): pushes probability off the true class and saturates once it is gone (unlike -CE,
    which grows without bound on images already fooled). (B,) losses, (B,) success (argmax != label)."""
    p_true = logits.softmax(1).gather(1, labels[:, None]).squeeze(1)  # (B,)
    return -torch.log1p(-p_true.clamp(max=1 - 1e-6)), logits.argmax(1) != labels


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no weight gradients for the duration of an attack; restores both afterwards."""
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)


def check_data(images: np.ndarray, labels: np.ndarray, target: int | None, *, num_classes: int | None = None) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise QadtrError(f"attacks take (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    if len(images) != len(labels) or len(images) == 0:
        raise QadtrError(f"{len(images)} images and {len(labels)} labels; need the same non-zero number")
    if target is not None and num_classes is not None and target >= num_classes:
        raise QadtrError(f"target class {target} does not exist; the model has {num_classes} classes (0..{num_classes - 1})")


def optimise_patch(objective: Objective, images: np.ndarray, labels: np.ndarray, *, side: int, steps: int,
                   batch_size: int, optimizer: str, lr: float, eot: EOTConfig, seed: int,
                   schedule: str = "cosine", progress: bool = False, desc: str = "patch", log_every: int = 10,
                   callback: Callable[[int, np.ndarray], bool] | None = None) -> tuple[np.ndarray, list[dict]]:
    """The optimisation loop shared by the universal-patch attacks.

    `callback(step, values)` is called every `log_every` steps with the current (3, s, s) patch; returning
    True stops early (benchmarks use it to time "steps to a given ASR").

    Returns:
        (3, side, side) float32 patch in [0, 1] and a log of {"step", "loss", "success", ...extras}.
    """
    rng = np.random.default_rng(seed)
    n, h, w, _ = images.shape
    decay = (lambda t: 0.5 * (1.0 + math.cos(math.pi * t / steps))) if schedule == "cosine" else (lambda t: 1.0)
    init = torch.from_numpy(rng.uniform(0.0, 1.0, (3, side, side)).astype(np.float32))  # (3, s, s)
    if optimizer == "adam":
        param = torch.logit(init.clamp(0.02, 0.98)).requires_grad_(True)  # unconstrained logits
        opt = torch.optim.Adam([param], lr=lr)
        values = lambda: torch.sigmoid(param)  # noqa: E731
    else:
        param = init.clone().requires_grad_(True)
        values = lambda: param  # noqa: E731
    log, order = [], np.zeros(0, dtype=np.int64)
    bar = progress_bar(range(steps), enabled=progress, desc=desc, unit="step", leave=False)
    for step in bar:
        if len(order) < batch_size:  # epochs over a fresh permutation: every image is used equally
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        x = to_tensor(images[idx])  # (B, 3, H, W)
        y = torch.from_numpy(labels[idx]).long()
        placement = sample_placements(len(idx), side=side, hw=(h, w), eot=eot, rng=rng)
        loss, success, extras = objective(apply_patch(x, values(), placement), y)
        if optimizer == "adam":
            opt.zero_grad()
            loss.backward()
            opt.param_groups[0]["lr"] = lr * decay(step)
            opt.step()
        else:
            (grad,) = torch.autograd.grad(loss, param)
            with torch.no_grad():
                param.sub_(lr * decay(step) * grad.sign()).clamp_(0.0, 1.0)
        if step % log_every == 0 or step == steps - 1:
            entry = {"step": step, "loss": round(float(loss.detach()), 5), "success": round(float(success.float().mean()), 4)}
            log.append({**entry, **extras})
            bar.set_postfix(loss=entry["loss"], success=entry["success"])
            if callback is not None:
                with torch.no_grad():
                    current = values().detach().clamp(0.0, 1.0).numpy().astype(np.float32)
                if callback(step, current):
                    break
    with torch.no_grad():
        return values().detach().clamp(0.0, 1.0).numpy().astype(np.float32), log


def attack_images(images: np.ndarray, labels: np.ndarray, target: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The images worth optimising on: for a targeted attack, those not already of the target class."""
    if target is None:
        return images, labels
    keep = labels != target
    if not keep.any():
        raise QadtrError(f"every image is of the target class {target}; pass other images or another target")
    return images[keep], labels[keep]


def universal_patch(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, cfg: UniversalConfig,
                    progress: bool = False, callback: Callable[[int, np.ndarray], bool] | None = None) -> Patch:
    """Optimise one universal patch against `model`.

    Args:
        model: (B, 3, H, W) pixels in [0, 1] -> (B, classes) logits; for a quantized model pass
            `deploy_net(model, w, a)`, the network the integer runtimes compute.
        images: (N, H, W, 3) uint8 training images.
        labels: (N,) int labels.
        cfg: the attack configuration.
        progress: show progress (qadtr.progress: a bar on a terminal, log lines elsewhere).
        callback: see `optimise_patch` (early stopping).

    Returns:
        A `Patch` with (3, s, s) values; `with_source` adds the model's sha256 and bit widths.
    """
    check_data(images, labels, cfg.target)
    images, labels = attack_images(images, labels, cfg.target)
    side = patch_side(cfg.size, images.shape[1:3])

    def objective(adv: torch.Tensor, y: torch.Tensor):
        logits = model(adv)  # (B, classes)
        if cfg.target is not None and cfg.target >= logits.shape[1]:
            raise QadtrError(f"target class {cfg.target} does not exist; the model has {logits.shape[1]} classes")
        losses, success = (untargeted_loss(logits, y) if cfg.target is None else targeted_loss(logits, cfg.target))
        return losses.mean(), success, {}

    with attack_mode(model):
        values, log = optimise_patch(objective, images, labels, side=side, steps=cfg.steps,
                                     batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr, eot=cfg.eot,
                                     seed=cfg.seed, schedule=cfg.schedule, progress=progress, desc="universal",
                                     callback=callback)
    return Patch(values=values, attack="universal", config=cfg, size=cfg.size, side=side, target=cfg.target,
                 eot=cfg.eot, seed=cfg.seed, log=tuple(log))
