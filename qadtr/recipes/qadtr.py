"""QADT-R (Guesmi, Ouni, Shafique, arXiv 2503.07058): A-QAPA patch pool + DBWT + GIR.

The paper's full text is not available here (only its summary was at hand); this is the method as defined for
this project, every open detail a `QadtrConfig` field:

A-QAPA patch pool (`aqapa`). A pool of `pool_size` universal patches, made inside the quantized model
    at the bit widths being trained. Every `refresh_every` steps one slot (round robin) is refreshed
    with `refresh_steps` sign-gradient steps on the first `refresh_batch` images of the batch,
    warm-started from its previous values, so the pool follows the weights as they train. The
    objective is A-QAPA's (qadtr.attacks.aqapa): per-bit-width attack losses L_k weighted by
    softmax(L / temperature), i.e. towards the bit widths where the patch is weakest. Slots enter the
    pool only once refreshed (no random-noise patches). A random `fraction` of each batch carries a
    random pool patch at a random location; the model trains on the true labels.
    Ablation `aqapa=False`: the pool is made at the highest bit width only (conventional,
    precision-unaware patches), everything else unchanged.
DBWT, dynamic bit-width training (`dbwt`). One bit width per step from `dbwt_bits` (default: the
    model's, e.g. --bits 2,4,5,8), `dbwt_block` steps each, in order ("cycle") or drawn from
    (seed, step) ("random"). Ablation `dbwt=False`: `--switch` decides (default "all": every bit
    width every step, the static multi-precision baseline).
GIR, gradient inconsistency regularisation (`gir`). Two parts, each with its own knob:
    - a regulariser on `gir_batch` patched images every `gir_every` steps: the input gradients of the
      cross-entropy at the step's bit width b and at another random one b' (BatchNorm in eval mode:
      the deployed, folded network is what an attacker differentiates), and
      loss += gir_weight * mean(phi(cos(g_b, g_b'))), phi = square (default: pushes towards
      orthogonal, so a patch optimised at one bit width, or jointly, gets no common descent
      direction), relu (only positive alignment) or signed. gir_weight = 1: phi lies in [0, 1] and
      its gradient on the weights is small next to the cross-entropy's (on test_qnet, SGD at lr 0.05
      took the cosine only from 0.93 to 0.90 in 8 steps), so a smaller weight does nothing in a
      1-epoch fine-tune; the logged `gir_cos` shows whether it moves;
    - controlled noise on the gradients the inner patch optimiser sees during refreshes:
      g + gir_noise * rms(g) * N(0, I) before the sign step (relative, so scale-free), which
      diversifies the pool instead of letting it collapse onto one attack trajectory.
    Ablation `gir=False`: neither (gir_weight=0 or gir_noise=0 switch off one part).

Cost (ResNet-20, batch 128, bits 2,4,5,8; bench/defense_cost.py --threads 1, CPU time): a refresh
(5 steps x 4 nets x 32 images) costs ~4.5 QAT steps, i.e. +0.22x every 20 steps; one GIR evaluation
(2 double-backward passes on 16 images) ~0.7 of a QAT step. With GIR every 2nd step QADT-R measured
1.57x QAT (one 20-step run on a busy machine), at the issue's 1.6x bound; every 3rd step (the
default) measured 1.42x (bench/results/defense_cost_20261122T115025Z.json).
The pool is recipe state: saved in last.pt, so --resume is exact.

Example:
    python -m qadtr.train --recipe qadtr --bits 2,4,5,8 --per-bit-bn --init zoo/resnet20_float/model.pt --out runs/qadtr
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qadtr._config import register_config
from qadtr.attacks._place import EOTConfig, apply_patch, patch_side, sample_placements
from qadtr.attacks.universal import attack_mode
from qadtr.models import bits_of, running_at
from qadtr.recipes._registry import register_recipe
from qadtr.recipes._inner import TARGET_MODES, attack_losses, generator, n_adversarial, rng
from qadtr.recipes.qat import bits_for_step
from qadtr.bits import bits_name

DBWT_MODES = ("cycle", "random")
GIR_FORMS = ("square", "relu", "signed")


@register_config
@dataclass(frozen=True)
class QadtrConfig:
    """Options of the QADT-R recipe (saved in model.json under train.recipe_config)."""

    VERSION = 1
    aqapa: bool = True  # ablation: pool made across the trained bit widths (False: at the highest only)
    dbwt: bool = True  # ablation: bit-width cycling (False: --switch decides, default all)
    gir: bool = True  # ablation: gradient-inconsistency regulariser + noisy inner gradients
    size: float = 0.0625  # patch area fraction (8x8 on CIFAR-10, as PBAT's, for a like-for-like comparison)
    fraction: float = 0.5  # share of each batch patched
    targets: str = "untargeted"  # untargeted | random (each pool slot gets a random target class)
    pool_size: int = 8  # universal patches kept
    refresh_every: int = 20  # steps between refreshes of one slot
    refresh_steps: int = 5  # A-QAPA sign steps per refresh
    refresh_batch: int = 32  # images of the batch a refresh optimises on
    patch_lr: float = 0.05  # refresh sign step in [0, 1] pixel units (warm starts accumulate)
    temperature: float = 0.5  # A-QAPA softmax temperature over per-bit-width losses
    dbwt_bits: tuple[tuple[int, int], ...] = ()  # cycle order of (w, a); () = the model's bits
    dbwt_mode: str = "cycle"  # cycle | random
    dbwt_block: int = 1  # consecutive steps per bit width
    gir_weight: float = 1.0  # weight of the cosine-alignment penalty (in [0, 1]; its weight gradients are small)
    gir_form: str = "square"  # square | relu | signed: phi applied to each image's cosine
    gir_batch: int = 16  # patched images the penalty is computed on (double backward is costly)
    gir_every: int = 3  # steps between penalty evaluations (each costs ~0.7 of a QAT step)
    gir_noise: float = 0.5  # inner-gradient noise std relative to the gradient's rms (0 = off)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dbwt_bits", tuple((int(w), int(a)) for w, a in self.dbwt_bits))
        if not 0.0 < self.size < 1.0 or not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"size={self.size} must be in (0, 1) and fraction={self.fraction} in (0, 1]")
        if self.targets not in TARGET_MODES:
            raise ValueError(f"targets={self.targets!r}; choose one of {TARGET_MODES}")
        if min(self.pool_size, self.refresh_every, self.refresh_steps, self.refresh_batch, self.dbwt_block,
               self.gir_batch, self.gir_every) < 1:
            raise ValueError("pool_size, refresh_every, refresh_steps, refresh_batch, dbwt_block, gir_batch and "
                             "gir_every must be >= 1")
        if not self.patch_lr > 0 or not self.temperature > 0:
            raise ValueError(f"patch_lr={self.patch_lr} and temperature={self.temperature} must be > 0")
        if self.dbwt_mode not in DBWT_MODES or self.gir_form not in GIR_FORMS:
            raise ValueError(f"dbwt_mode={self.dbwt_mode!r} (one of {DBWT_MODES}) or gir_form={self.gir_form!r} "
                             f"(one of {GIR_FORMS}) is unknown")
        if self.gir_weight < 0 or self.gir_noise < 0:
            raise ValueError(f"gir_weight={self.gir_weight} and gir_noise={self.gir_noise} must be >= 0 (0 = off)")

    def check(self, train_cfg) -> None:
        bits = train_cfg.model.bits
        if len(bits) < 2:
            raise ValueError("QADT-R trains across bit widths; pass several, e.g. --bits 2,4,5,8")
        missing = [b for b in self.dbwt_bits if b not in bits]
        if missing:
            raise ValueError(f"dbwt_bits {missing} are not among the model's --bits {list(bits)}; add them or "
                             "drop them from dbwt_bits")


def dbwt_schedule(rc: QadtrConfig, model, step: int, *, seed: int, switch: str = "all") -> list[tuple[int, int]]:
    """The bit widths trained at `step`: one from the DBWT schedule, or `switch`'s when DBWT is off."""
    if not rc.dbwt:
        return bits_for_step(model, switch, step, seed=seed)
    order = list(rc.dbwt_bits or bits_of(model))
    block = step // rc.dbwt_block
    if rc.dbwt_mode == "cycle":
        return [order[block % len(order)]]
    return [order[int(torch.randint(len(order), (1,), generator=generator(seed, block, "dbwt")))]]


def refresh_patch(model, patch: torch.Tensor, x: torch.Tensor, *, y: torch.Tensor, bits, target: int | None,
                  steps: int, lr: float, temperature: float, noise: float, g: torch.Generator, place_rng) -> dict:
    """A-QAPA steps on one (3, s, s) universal patch in place; returns the last per-bit weights and success."""
    side, hw = patch.shape[-1], tuple(x.shape[-2:])
    targets = None if target is None else torch.full_like(y, target)
    keys = [bits_name(b) for b in bits]
    with attack_mode(model):
        for _ in range(steps):
            pl = sample_placements(len(x), side=side, hw=hw, eot=EOTConfig(), rng=place_rng)
            p = patch.clone().requires_grad_(True)
            adv = apply_patch(x, p, pl)  # (B, 3, H, W)
            per_bits, success = [], []
            for w, a in bits:
                with running_at(model, w, a):
                    losses, ok = attack_losses(model(adv), y, targets)
                per_bits.append(losses.mean())
                success.append(ok.float().mean())
            stacked = torch.stack(per_bits)  # (K,)
            alpha = torch.softmax(stacked.detach() / temperature, 0)  # (K,) weight on the weakest bit widths
            (grad,) = torch.autograd.grad((alpha * stacked).sum(), p)  # (3, s, s)
            if noise:
                grad = grad + noise * grad.pow(2).mean().sqrt() * torch.randn(grad.shape, generator=g)
            patch.sub_(lr * grad.sign()).clamp_(0.0, 1.0)
    return {"alpha": dict(zip(keys, alpha.tolist())), "success": dict(zip(keys, torch.stack(success).tolist()))}


def gir_penalty(model, x: torch.Tensor, y: torch.Tensor, *, b1, b2,
                form: str = "square") -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty, per-image cosine) between input gradients at bit widths b1 and b2; differentiable in the weights.

    BatchNorm runs in eval mode (the deployed network's gradients); the model's mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        x = x.detach().clone().requires_grad_(True)  # (n, 3, H, W)
        grads = []
        for w, a in (b1, b2):
            with running_at(model, w, a):
                loss = F.cross_entropy(model(x), y, reduction="sum")  # sum: per-image gradients at full scale
            (g,) = torch.autograd.grad(loss, x, create_graph=True)
            grads.append(g.flatten(1))  # (n, 3*H*W)
    finally:
        model.train(was_training)
    cos = F.cosine_similarity(grads[0], grads[1], dim=1, eps=1e-12)  # (n,)
    phi = {"square": cos.pow(2), "relu": cos.clamp(min=0), "signed": cos}[form]
    return phi.mean(), cos.detach()


def _init_state(state: dict, rc: QadtrConfig, side: int, *, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    state["pool"] = torch.rand(rc.pool_size, 3, side, side, generator=g)  # (P, 3, s, s)
    state["targets"] = torch.full((rc.pool_size,), -1, dtype=torch.long)  # -1 = untargeted
    state["refreshes"] = torch.zeros((), dtype=torch.long)


@register_recipe("qadtr", config=QadtrConfig, stateful=True)
def qadtr_loss(model, x: torch.Tensor, y: torch.Tensor, *, step: int, cfg, state: dict) -> tuple[torch.Tensor, dict]:
    """One QADT-R step: maybe refresh a pool slot, patch part of the batch, CE at the DBWT bit width(s) + GIR."""
    rc: QadtrConfig = cfg.recipe_config
    hw = tuple(x.shape[-2:])
    if "pool" not in state:
        _init_state(state, rc, patch_side(rc.size, hw), seed=cfg.seed)
    logs: dict = {}
    if step % rc.refresh_every == 0:
        n_ref, slot = int(state["refreshes"]), int(state["refreshes"]) % rc.pool_size
        if rc.targets == "random" and n_ref < rc.pool_size:  # a slot keeps the target it was born with
            g = generator(cfg.seed, step, "targets")
            state["targets"][slot] = int(torch.randint(cfg.model.num_classes, (1,), generator=g))
        target = int(state["targets"][slot])
        all_bits = list(rc.dbwt_bits or bits_of(model))
        bits = all_bits if rc.aqapa else [max(all_bits)]
        info = refresh_patch(model, state["pool"][slot], x[:rc.refresh_batch], y=y[:rc.refresh_batch], bits=bits,
                             target=None if target < 0 else target, steps=rc.refresh_steps, lr=rc.patch_lr,
                             temperature=rc.temperature, noise=rc.gir_noise if rc.gir else 0.0,
                             g=generator(cfg.seed, step, "noise"), place_rng=rng(cfg.seed, step, "pool"))
        state["refreshes"] += 1
        logs.update(refreshed_slot=slot, **{f"alpha_{k}": v for k, v in info["alpha"].items()})
    ready = min(int(state["refreshes"]), rc.pool_size)  # only refreshed slots are used
    n_adv = n_adversarial(len(x), rc.fraction) if ready else 0
    if n_adv:
        pick = torch.randint(ready, (n_adv,), generator=generator(cfg.seed, step, "split"))  # (n_adv,)
        pl = sample_placements(n_adv, side=state["pool"].shape[-1], hw=hw, eot=EOTConfig(),
                               rng=rng(cfg.seed, step, "place"))
        x = torch.cat([apply_patch(x[:n_adv], state["pool"][pick], pl), x[n_adv:]])  # (B, 3, H, W)
    bits_now = dbwt_schedule(rc, model, step, seed=cfg.seed, switch=cfg.switch)
    total = 0.0
    for w, a in bits_now:
        with running_at(model, w, a):
            loss = F.cross_entropy(model(x), y)
        total = total + loss / len(bits_now)
        logs[f"loss_{bits_name((w, a))}"] = loss.item()
    if rc.gir and rc.gir_weight > 0 and step % rc.gir_every == 0:
        others = [b for b in bits_of(model) if b != bits_now[0]]
        b2 = others[int(torch.randint(len(others), (1,), generator=generator(cfg.seed, step, "gir")))]
        n = min(rc.gir_batch, max(n_adv, 1))  # the patched images first
        pen, cos = gir_penalty(model, x[:n], y[:n], b1=bits_now[0], b2=b2, form=rc.gir_form)
        total = total + rc.gir_weight * pen
        logs.update(gir_penalty=pen.item(), gir_cos=cos.mean().item())
    logs["patched_frac"] = n_adv / len(x)
    return total, logs
