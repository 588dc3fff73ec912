"""The threats `eval.defense` runs: a budget, what each checkpoint trained against, patch making with a cache,
and L-inf FGSM/PGD.

Every attack goes through the deployable network (`deploy_net`: BN folded, int32 bias), the function the
integer runtimes compute; adversarial images are rounded to the uint8 grid, as a replay would feed them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qadtr._config import register_config
from qadtr._errors import QadtrError
from qadtr._stats import Proportion
from qadtr.bits import bits_names

LAVAN_SIZE = 0.02  # Karmon et al.: ~2% of the image at one fixed location
EOT_TEMPERATURE = 1e9  # A-QAPA softmax temperature that makes its weights uniform: the plain expectation


@register_config
@dataclass(frozen=True)
class Budget:
    """Attack budgets of one `eval.defense` run; a resumed run must use the same."""

    VERSION = 1
    size: float = 0.0625  # patch area fraction of recipes that trained on none (PBAT/QADT-R: their own)
    other_size: float = 0.1  # the unseen size (0.05 if a recipe trained at 0.1)
    target: int | None = None  # patch target class; None = untargeted
    patch_steps: int = 100  # sign steps of universal, LaVAN and A-QAPA patches
    patch_batch: int = 64  # images per patch step
    location_steps: int = 20  # sign steps of per-image location patches
    train_images: int = 2000  # training images patches are optimised on (fixed pseudo-random subset)
    eval_images: int = 500  # test images every threat is measured on (fixed pseudo-random subset)
    eps255: tuple[float, ...] = (2.0, 4.0, 8.0)  # FGSM/PGD budgets in uint8 levels
    pgd_steps: int = 10  # PGD steps (step 2.5 * eps / steps, random start)
    adaptive_temperature: float = 0.5  # A-QAPA's weighting of the adaptive attack (see attacks/aqapa.py)
    seed: int = 0  # attack seeds
    eval_seed: int = 1  # placements of universal patches at evaluation; random-precision draws

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps255", tuple(float(e) for e in self.eps255))
        if not (0 < self.size < 1 and 0 < self.other_size < 1):
            raise ValueError(f"--size {self.size} and --other-size {self.other_size} must be fractions in (0, 1)")
        if min(self.patch_steps, self.patch_batch, self.location_steps, self.pgd_steps) < 1:
            raise ValueError("--patch-steps, --patch-batch, --location-steps and --pgd-steps must be >= 1")
        if self.train_images < 0 or self.eval_images < 0 or not self.eps255 or min(self.eps255) <= 0:
            raise ValueError("--train-images/--eval-images must be >= 0 (0 = all) and --eps positive, e.g. 2,4,8")


@dataclass(frozen=True)
class Profile:
    """What a checkpoint trained against: the patch kind, size and bit widths ("seen" patches)."""

    attack: str  # "location" (PBAT) | "universal" (QADT-R's pool; the default for recipes without patches)
    size: float
    trained: bool  # False: the recipe saw no patches, so none is "seen"


def profile(ck, budget: Budget) -> Profile:
    from qadtr.recipes.pbat import PbatConfig
    from qadtr.recipes.qadtr import QadtrConfig

    rc = getattr(ck.train, "recipe_config", None) if ck.train is not None else None
    if isinstance(rc, PbatConfig):
        return Profile("location", rc.size, True)
    if isinstance(rc, QadtrConfig):
        return Profile("universal", rc.size, True)
    return Profile("universal", budget.size, False)


class PatchMaker:
    """Makes patches against a model at given bit widths, cached as patch files under `folder` (resumable)."""

    def __init__(self, folder: Path, budget: Budget, train, *, test, eval_idx: np.ndarray):
        from qadtr.data import subset_indices

        self.folder, self.budget, self.test, self.eval_idx = folder, budget, test, eval_idx
        idx = subset_indices(len(train.labels), budget.train_images, seed=0)
        self.train_images, self.train_labels = train.images[idx], train.labels[idx]

    def get(self, name: str, model: nn.Module, ck, *, attack: str, size: float, bits, net: nn.Module | None = None,
            temperature: float = 0.0):
        """The patch `attack` at `size` made on checkpoint `name` at `bits` (() = float; several: A-QAPA).

        `net` is the network attacked for a single bit width (default: `deploy_net(model, *bits[0])`);
        A-QAPA takes the switchable `model` itself.
        """
        from qadtr._registry import resolve
        from qadtr.attacks import (AqapaConfig, LavanConfig, LocationConfig, UniversalConfig, attack_for_config,
                                   load_patch, save_patch)
        from qadtr.models import deploy_net

        b = self.budget
        tag = "" if not temperature else ("_eot" if temperature >= EOT_TEMPERATURE else f"_T{temperature:g}")
        path = self.folder / name / f"{bits_names(bits)}_{attack}_s{round(1000 * size):03d}{tag}.npz"
        if path.is_file():
            return load_patch(path)
        if attack == "aqapa" or not bits:
            net = model
        elif net is None:
            net = deploy_net(model, *bits[0])
        common = dict(size=size, target=b.target, seed=b.seed)
        if attack == "universal":
            cfg = UniversalConfig(**common, steps=b.patch_steps, batch_size=b.patch_batch)
        elif attack == "lavan":
            cfg = LavanConfig(**common, steps=b.patch_steps, batch_size=b.patch_batch)
        elif attack == "aqapa":
            cfg = AqapaConfig(**common, bits=tuple(bits), steps=b.patch_steps, batch_size=b.patch_batch,
                              temperature=temperature or b.adaptive_temperature)
        elif attack == "location":
            cfg = LocationConfig(**common, steps=b.location_steps)
        else:
            raise QadtrError(f"unknown attack {attack!r}")
        make = resolve(attack_for_config(cfg).function)  # the attack of type(cfg)
        if attack == "location":  # per-image: made on the evaluation images themselves
            patch = make(net, self.test.images[self.eval_idx], self.test.labels[self.eval_idx], cfg=cfg)
            patch = dataclasses.replace(patch, indices=self.eval_idx)
        else:
            patch = make(net, self.train_images, self.train_labels, cfg=cfg)
        source = "test" if attack == "location" else "train"
        patch = patch.with_source(model_sha256=ck.sha256, bits=tuple(bits), data=f"{ck_data(ck)}/{source}")
        save_patch(patch, path)
        return load_patch(path)  # exactly what a resumed run reads


def ck_data(ck) -> str:
    return ck.train.data if ck.train is not None else "cifar10"


def lp_attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, kind: str, eps255: float, steps: int,
              g: torch.Generator) -> torch.Tensor:
    """Untargeted L-inf FGSM (one step of eps, no random start) or PGD (random start, `steps` of 2.5 eps / steps).

    x: (B, 3, H, W) on the uint8 grid; returns (B, 3, H, W) adversarial images rounded to the uint8 grid
    (eps is a whole number of levels, so rounding keeps them inside the eps ball).
    """
    eps = eps255 / 255.0
    if kind == "fgsm":
        adv, n, step = x.clone(), 1, eps
    else:
        adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0.0, 1.0)  # (B, 3, H, W)
        n, step = steps, 2.5 * eps / steps
    for _ in range(n):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(adv), y), adv)
        with torch.no_grad():
            adv = torch.min(torch.max(adv + step * grad.sign(), x - eps), x + eps).clamp(0.0, 1.0)
    return (torch.round(adv.detach() * 255.0) / 255.0).clamp(0.0, 1.0)


def lp_examples(net: nn.Module, images: np.ndarray, labels: np.ndarray, *, kind: str, eps255: float, steps: int,
                seed: int, batch_size: int = 100) -> np.ndarray:
    """(N, H, W, 3) uint8 adversarial images for (N, H, W, 3) uint8 `images`."""
    from qadtr.attacks.universal import attack_mode
    from qadtr.predict import to_tensor

    g = torch.Generator().manual_seed(seed)
    out = []
    with attack_mode(net):
        for i in range(0, len(images), batch_size):
            x, y = to_tensor(images[i:i + batch_size]), torch.from_numpy(labels[i:i + batch_size]).long()
            adv = lp_attack(net, x, y, kind=kind, eps255=eps255, steps=steps, g=g)  # (B, 3, H, W)
            out.append(torch.round(adv * 255.0).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def robust_accuracy(pred: np.ndarray, labels: np.ndarray) -> Proportion:
    return Proportion(int((pred == labels).sum()), len(labels))
