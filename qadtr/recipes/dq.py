"""Defensive Quantization (Lin, Gan, Han, ICLR 2019, arXiv 1904.08444): QAT + an orthogonality regulariser.

Vanilla quantization amplifies adversarial noise layer by layer: once a perturbation pushes an
activation across a rounding boundary, the next layer sees a whole quantization step of error
(`eval.amplification` measures it). DQ keeps every layer's Lipschitz constant near 1 so the noise
stays non-expansive:

    loss = CE + (beta / 2) * sum_l || W_l^T W_l - I ||_F^2

over every conv (weight reshaped to (out, in*k*k)) and linear layer. Choices the paper leaves open:
- Non-square matrices: an (m, n) W cannot have W^T W = I_n when m < n (rank <= m), so the penalty
  could never reach 0 for the stem conv (16 x 27) or the classifier (10 x 64). `gram="smaller"`
  (default) penalises the smaller Gram matrix, W W^T - I_m when m < n (orthonormal rows: the
  operator norm, i.e. the Lipschitz constant, is 1 and 0 is reachable) and W^T W - I_n otherwise
  (orthonormal columns), as Parseval networks (Cisse et al. 2017) do for semi-orthogonality.
  `gram="paper"` always uses W^T W - I_n, the formula as written.
- Which weights: the float weights QAT keeps (the quantized ones are round(W / s) * s, within half a
  step of them); each shared weight of a switchable model counts once. `edges=False` exempts the
  stem conv and the classifier, which keep 8-bit weights in this project.
- BatchNorm follows every hidden conv here and rescales each channel; its gain is not regularised
  (BN folds into the deployed weights, so a large gain can still expand; `eval.amplification`
  measures the deployed network, which includes it).
- beta = 3e-4 (default; the value per setting in the paper is not known here). On the zoo's float
  ResNet-20 the penalty sum is ~6.8e3 (classifier 1.9e3, stem 0.4e3), so the term starts at ~1.0,
  above the cross-entropy, but its pull on the weights, 2 * beta * (G - I) W, is of the order of the
  5e-4 weight decay: a mild regulariser in a 1-epoch fine-tune. Sweep it (e.g. 1e-3, 3e-3) with
  `--recipe-arg beta=...`; the penalty is logged (`dq_penalty`).

Example:
    python -m qadtr.train --recipe dq --bits 4 --recipe-arg beta=3e-4 --init zoo/resnet20_w4a4/model.pt --out runs/dq
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from qadtr._config import register_config
from qadtr.recipes._registry import register_recipe
from qadtr.recipes.qat import qat_loss

GRAMS = ("smaller", "paper")


@register_config
@dataclass(frozen=True)
class DqConfig:
    """Options of the DQ recipe (saved in model.json under train.recipe_config)."""

    VERSION = 1
    beta: float = 3e-4  # regulariser weight: loss += beta/2 * sum ||Gram - I||^2
    gram: str = "smaller"  # smaller: W W^T or W^T W, whichever is smaller | paper: always W^T W
    edges: bool = True  # also regularise the stem conv and the classifier (8-bit layers)

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            raise ValueError(f"beta={self.beta} must be >= 0 (e.g. 3e-4; 0 is plain QAT)")
        if self.gram not in GRAMS:
            raise ValueError(f"gram={self.gram!r}; choose one of {GRAMS}")

    def check(self, train_cfg) -> None:
        """DQ runs on any quantized model; TrainConfig already demands --bits."""


def regularised_weights(model: nn.Module, *, edges: bool = True) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every conv and linear layer, each shared weight once, in module order."""
    seen, out = set(), []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            out.append((name, mod.weight))
    if not edges and len(out) > 2:  # the first conv (stem) and the last linear (classifier)
        first_conv = next(i for i, (_, w) in enumerate(out) if w.ndim == 4)
        last_linear = max(i for i, (_, w) in enumerate(out) if w.ndim == 2)
        out = [item for i, item in enumerate(out) if i not in (first_conv, last_linear)]
    return out


def gram_deviation(weight: torch.Tensor, gram: str = "smaller") -> torch.Tensor:
    """||G - I||_F^2 for one (out, in, k, k) conv or (out, in) linear weight."""
    w = weight.flatten(1)  # (m, n) = (out, in*k*k)
    m, n = w.shape
    if gram == "smaller" and m < n:
        g = w @ w.t()  # (m, m): rows orthonormal
    else:
        g = w.t() @ w  # (n, n): columns orthonormal
    eye = torch.eye(g.shape[0], dtype=g.dtype)
    return ((g - eye) ** 2).sum()


def orthogonality_penalty(model: nn.Module, *, gram: str = "smaller", edges: bool = True) -> torch.Tensor:
    """sum_l ||G_l - I||_F^2 (without the beta/2 factor); 0 exactly when every layer is (semi-)orthogonal."""
    terms = [gram_deviation(w, gram) for _, w in regularised_weights(model, edges=edges)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@register_recipe("dq", config=DqConfig)
def dq_loss(model, x: torch.Tensor, y: torch.Tensor, *, step: int, cfg) -> tuple[torch.Tensor, dict]:
    """QAT cross-entropy (over the bit widths `cfg.switch` picks) + (beta/2) * orthogonality penalty."""
    rc: DqConfig = cfg.recipe_config
    ce, logs = qat_loss(model, x, y, step=step, cfg=cfg)
    penalty = orthogonality_penalty(model, gram=rc.gram, edges=rc.edges)
    reg = 0.5 * rc.beta * penalty
    return ce + reg, {**logs, "dq_penalty": penalty.item(), "dq_reg": reg.item()}
