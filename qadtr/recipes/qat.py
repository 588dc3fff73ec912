"""Plain training: float fine-tuning and quantization-aware training (QAT) at one or several bit widths.

For a switchable model the bit widths trained at each step follow `cfg.switch`:
- "all": the mean cross-entropy over every bit width (switchable-precision training; cost x len(bits));
- "cycle": one bit width per step, in turn (the DBWT schedule's simplest form);
- "random": one bit width per step drawn from a seeded generator (DWQ's sampling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qadtr.models import bits_of, running_at
from qadtr.recipes._registry import register_recipe
from qadtr.bits import bits_name


def bits_for_step(model, switch: str, step: int, *, seed: int) -> list[tuple[int, int]]:
    """The (w, a) pairs trained at `step`: a pure function of (switch, step, seed), so resuming is exact."""
    bits = bits_of(model)
    if not bits or switch == "all":
        return bits
    if switch == "cycle":
        return [bits[step % len(bits)]]
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return [bits[int(torch.randint(len(bits), (1,), generator=g))]]


@register_recipe("float")
@register_recipe("qat")
def qat_loss(model, x: torch.Tensor, y: torch.Tensor, *, step: int, cfg) -> tuple[torch.Tensor, dict]:
    """Cross-entropy, averaged over the bit widths chosen for this step."""
    bits = bits_for_step(model, cfg.switch, step, seed=cfg.seed)
    if not bits:  # float model
        logits = model(x)  # (B, classes)
        return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().item()}
    total, logs = 0.0, {}
    for w, a in bits:
        with running_at(model, w, a):
            logits = model(x)  # (B, classes)
        loss = F.cross_entropy(logits, y)
        total = total + loss / len(bits)
        logs[f"loss_{bits_name((w, a))}"] = loss.item()
    return total, logs
