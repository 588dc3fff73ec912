"""Initialise every quantizer's clipping threshold from data before QAT (MSE-optimal, per bit width).

Brevitas would collect activation percentiles during the first training steps, but its kthvalue is
pathologically slow on ReLU outputs (mostly zeros) and its weight
scales start at max|w|, which zeroes most weights at 2 bits. Instead: run the float twin of the
network (same module names) on a few hundred images, subsample each quantizer's input, and choose
the threshold minimising the quantization MSE for that quantizer's bit width; weights get a
per-output-channel MSE search. Loading the thresholds as state dict entries ends Brevitas' own
statistics phase, so the values live in every checkpoint from step 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

SAMPLES_PER_BATCH = 100_000  # activation values kept per quantizer per batch: percentiles stable to ~1e-3
GRID = torch.linspace(0.02, 1.0, 50)  # candidate thresholds as fractions of max|x|


def _mse_threshold(x: torch.Tensor, bits: int, signed: bool, *, narrow: bool) -> torch.Tensor:
    """Best clipping threshold(s). x: (C, N) rows quantized separately -> (C,)."""
    qmax = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    qmin = (-qmax if narrow else -qmax - 1) if signed else 0
    top = x.abs().amax(dim=1).clamp_min(1e-8)  # (C,)
    cand = GRID.view(-1, 1) * top.view(1, -1)  # (F, C)
    s = (cand / qmax).unsqueeze(-1)  # (F, C, 1)
    q = torch.clamp(torch.round(x.unsqueeze(0) / s), qmin, qmax) * s  # (F, C, N)
    err = ((q - x.unsqueeze(0)) ** 2).mean(dim=-1)  # (F, C)
    return cand.gather(0, err.argmin(dim=0, keepdim=True)).squeeze(0)  # (C,)


def _act_modules(net: nn.Module) -> dict[str, nn.Module]:
    import brevitas.nn as qnn

    return {n: m for n, m in net.named_modules() if isinstance(m, (qnn.QuantReLU, qnn.QuantIdentity))}


def _shifted(mod: nn.Module) -> bool:
    """Whether an activation quantizer has a learned zero point (brevitas ShiftedUint8ActPerTensorFloat)."""
    from brevitas.core.zero_point import ParameterFromRuntimeZeroPoint

    zp = getattr(mod.act_quant.fused_activation_quant_proxy.tensor_quant, "zero_point_impl", None)
    return isinstance(zp, ParameterFromRuntimeZeroPoint)


@torch.no_grad()
def _float_activations(float_twin: nn.Module, names: list[str], images: torch.Tensor, *, batch_size: int,
                       seed: int) -> dict[str, torch.Tensor]:
    """Subsampled outputs of the float modules named like the quantizers. images: (N, 3, H, W)."""
    g = torch.Generator().manual_seed(seed)
    bags: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    modules = dict(float_twin.named_modules())

    def keep(name):
        def hook(_mod, _inp, out):
            flat = out.detach().flatten()
            idx = torch.randint(len(flat), (min(len(flat), SAMPLES_PER_BATCH),), generator=g)
            bags[name].append(flat[idx])
        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        float_twin.eval()
        for i in range(0, len(images), batch_size):
            float_twin(images[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in bags.items()}


@torch.no_grad()
def calibrate_(model: nn.Module, images: np.ndarray, *, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    """Set MSE-optimal thresholds on every net of a QuantNet (in place). images: (N, H, W, 3) uint8.

    Returns {"<bits>/<quantizer>": threshold} for the activations, for logging.
    """
    import brevitas.nn as qnn

    from qadtr.predict import to_tensor
    from qadtr.models._registry import get_builder

    cfg = model.cfg
    float_twin = get_builder(cfg.arch)(None, cfg.num_classes)  # same module names, no quantizers
    own = float_twin.state_dict()
    x = to_tensor(images)  # (N, 3, H, W)
    log = {}
    for key, net in model.nets.items():  # each net: its own BatchNorms when per_bit_bn
        theirs = net.state_dict()
        float_twin.load_state_dict({k: theirs[k] for k in own if k in theirs}, strict=False)
        acts = _act_modules(net)
        values = _float_activations(float_twin, list(acts), x, batch_size=batch_size, seed=seed)
        update = {}
        for name, mod in acts.items():
            bits = int(mod.act_quant.bit_width())
            proxy = f"{name}.act_quant.fused_activation_quant_proxy.tensor_quant"
            if _shifted(mod):  # unsigned with a zero point (Layers.stream): the signed MSE range, shifted
                t = _mse_threshold(values[name].view(1, -1), bits, signed=True, narrow=False)[0]
                update[f"{proxy}.scaling_impl.value"] = 2 * t  # the range max - min
                update[f"{proxy}.zero_point_impl.value"] = -t  # the range's minimum: zero point ~2^(bits-1)
            else:
                signed = bool(mod.act_quant.is_signed)
                t = _mse_threshold(values[name].view(1, -1), bits, signed, narrow=False)[0]
                update[f"{proxy}.scaling_impl.value"] = t.clone()
            log[f"{key}/{name}"] = float(t)
        for name, mod in net.named_modules():
            if isinstance(mod, (qnn.QuantConv2d, qnn.QuantLinear)):
                bits = int(mod.weight_quant.bit_width())
                w = mod.weight.detach().flatten(1)  # (Cout, Cin*k*k)
                t = _mse_threshold(w, bits, signed=True, narrow=True)  # (Cout,)
                shape = (-1,) + (1,) * (mod.weight.ndim - 1)
                update[f"{name}.weight_quant.tensor_quant.scaling_impl.value"] = t.view(shape).clone()
        result = net.load_state_dict(update, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"calibration wrote unknown keys {result.unexpected_keys[:3]}")
    return log
