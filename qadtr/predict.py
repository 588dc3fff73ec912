"""Predictions and clean accuracy of a torch model on uint8 images, at each of its bit widths.

    >>> accuracy_per_bits(model, split.images, split.labels)["w4a4"]
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from qadtr._stats import Proportion
from qadtr.progress import progress as bar
from qadtr.models import at_bits, bits_of, deploy_net
from qadtr.bits import bits_name


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500, *, progress: bool = False,
            device: torch.device | None = None, desc: str = "eval") -> np.ndarray:
    """Argmax predictions (N,) of `model` in eval mode on uint8 HWC images.

    `device`: move `model` there and run each batch there (None: where the model's parameters are).
    """
    if device is not None:
        model.to(device)
    dev = device or next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in bar(range(0, len(images), batch_size), enabled=progress, leave=False, desc=desc, unit="batch"):
            x = to_tensor(images[i:i + batch_size]).to(dev)  # (B, 3, H, W), moved once per batch
            out.append(model(x).argmax(1).cpu().numpy())  # (B,)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    finally:
        model.train(was_training)


FORMS = ("deploy", "trained")


def accuracy_per_bits(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, form: str = "deploy",
                      progress: bool = False, keys: tuple[str, ...] | None = None,
                      device: torch.device | None = None) -> dict[str, Proportion]:
    """{"float": p} for a float model, {"w4a4": p, ...} for a quantized one; leaves the active bits as found.

    `keys` ("w4a4", ...) limits a quantized model to those bit widths (default: all it has).

    form="deploy" evaluates the BN-folded int32-bias network that exporters ship (the default, and the
    number to quote); form="trained" the network as trained, with BatchNorm. `device`: where the nets run
    (None: where `model` is; a deployable net is built on the CPU).
    """
    if form not in FORMS:
        raise ValueError(f"form={form!r}; choose one of {FORMS}")
    if not bits_of(model):
        correct = int((predict(model, images, progress=progress, device=device, desc="eval float") == labels).sum())
        return {"float": Proportion(correct, len(labels))}
    result = {}
    for w, a in bits_of(model):
        if keys is not None and bits_name((w, a)) not in keys:
            continue
        net = deploy_net(model, w, a) if form == "deploy" else at_bits(model, w, a)
        correct = int((predict(net, images, progress=progress, device=device, desc=f"eval {bits_name((w, a))} {form}")
                       == labels).sum())
        result[bits_name((w, a))] = Proportion(correct, len(labels))
    return result
