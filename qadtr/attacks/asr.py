"""Attack success rate (ASR), with its definition written into every result.

- untargeted: among the images the model classifies correctly without the patch, the share whose
  prediction changes with the patch.
- targeted: among the images whose true label is not the target, the share classified as the target
  with the patch.
Each rate is a `Proportion` (k, n, Wilson 95% CI).

Example:
    >>> asr = attack_success(clean_pred, adv_pred, labels, target=3)
    >>> print(asr)   # targeted ASR (target 3) 81.20% [80.39, 81.98] (n=9000): share of non-target ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from qadtr._errors import QadtrError
from qadtr._stats import Proportion
from qadtr.attacks._place import Placement, rebuild, sample_placements
from qadtr.attacks.patchfile import Patch
from qadtr.predict import predict, to_tensor

UNTARGETED = "untargeted ASR: share of originally correct images whose prediction changes with the patch"
TARGETED = "targeted ASR: share of images whose true label is not the target that are classified as the target"


@dataclass(frozen=True)
class ASR:
    rate: Proportion
    target: int | None  # None = untargeted
    definition: str

    def to_dict(self) -> dict:
        return {"asr": self.rate.to_dict(), "target": self.target, "definition": self.definition}

    def __str__(self) -> str:
        kind = "untargeted" if self.target is None else f"targeted (target {self.target})"
        return f"{kind} ASR {self.rate}: {self.definition.split(': ', 1)[1]}"


def attack_success(clean_pred: np.ndarray, adv_pred: np.ndarray, labels: np.ndarray,
                   *, target: int | None = None) -> ASR:
    """ASR from predictions (N,) on clean and patched images and the true labels (N,)."""
    clean_pred, adv_pred, labels = (np.asarray(a).reshape(-1) for a in (clean_pred, adv_pred, labels))
    if not len(clean_pred) == len(adv_pred) == len(labels):
        raise QadtrError(f"{len(clean_pred)} clean, {len(adv_pred)} patched predictions and {len(labels)} labels; "
                         "they must be for the same images")
    if target is None:
        eligible = clean_pred == labels
        hits = eligible & (adv_pred != clean_pred)
        return ASR(Proportion(int(hits.sum()), int(eligible.sum())), None, UNTARGETED)
    eligible = labels != target
    hits = eligible & (adv_pred == target)
    return ASR(Proportion(int(hits.sum()), int(eligible.sum())), int(target), TARGETED)


def eval_placements(patch: Patch, n: int, hw: tuple[int, int], *, seed: int) -> Placement:
    """The placements a universal patch is evaluated at: drawn from its EOT ranges with `seed`, so every
    model (and every runtime) sees the same patched bytes. Per-image patches carry their own."""
    if patch.per_image:
        return patch.placement
    return sample_placements(n, side=patch.side, hw=hw, eot=patch.eot, rng=np.random.default_rng(seed))


def evaluate_patch(model: nn.Module, patch: Patch, images: np.ndarray, *, labels: np.ndarray, seed: int = 0,
                   clean_pred: np.ndarray | None = None, batch_size: int = 500, progress: bool = False) -> ASR:
    """ASR of `patch` on `model` over (N, H, W, 3) uint8 `images` (for per-image patches: the attacked
    images, in the patch's order). Patched images are built with `rebuild`, as every replay does."""
    if patch.per_image and len(images) != len(patch.values):
        raise QadtrError(f"{len(patch.values)} per-image patches but {len(images)} images; pass the attacked images "
                         f"(indices stored in the patch file)")
    _check_target(model, patch.target, images)
    placement = eval_placements(patch, len(images), images.shape[1:3], seed=seed)
    if clean_pred is None:
        clean_pred = predict(model, images, batch_size=batch_size)
    adv_pred = []
    for i in range(0, len(images), batch_size):
        values = patch.values[i:i + batch_size] if patch.per_image else patch.values
        adv = rebuild(images[i:i + batch_size], values, placement[i:i + batch_size])  # (B, H, W, 3) uint8
        adv_pred.append(predict(model, adv, batch_size=batch_size))
    return attack_success(clean_pred, np.concatenate(adv_pred), labels, target=patch.target)


@torch.no_grad()
def _check_target(model: nn.Module, target: int | None, images: np.ndarray) -> None:
    """A target the model cannot output would read as ASR 0.00%, not as an error: compare it with the width of
    the model's logits (one image's forward pass)."""
    if target is None or not len(images):
        return
    was_training = model.training
    model.eval()
    try:
        num_classes = model(to_tensor(images[:1])).shape[1]  # (1, K)
    finally:
        model.train(was_training)
    if not 0 <= target < num_classes:
        raise QadtrError(f"the patch targets class {target} but the model has {num_classes} classes "
                         f"(0..{num_classes - 1}); use a patch made for this model's classes")


def parse_target(text: str) -> int | None:
    """A CLI target: a class index ("3"), or "" / "none" / "untargeted" for an untargeted attack."""
    if text.lower() in ("", "none", "untargeted"):
        return None
    try:
        return int(text)
    except ValueError:
        raise QadtrError(f"--target {text!r}: give a class index (e.g. 3) or 'none' for untargeted") from None
