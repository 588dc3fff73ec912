"""Fold BatchNorm into the preceding quantized conv: the deployable form every exporter takes.

Quantized nets train with BatchNorm (at 2 bits, BN's batch statistics are what lets QAT recover
from the quantization shock; BN-free QAT from folded weights did not recover in development runs). Every consumer
of a trained net (evaluation, attacks, exporters, replay) uses this folded form, so the fake-quant
reference and the integer runtimes compute the same function.

With a per-output-channel weight scale s and BN factor k = gamma / sqrt(var + eps):
    w' = w * k,   s' = s * |k|,   b' = beta - mean * k   (int32, scale = s_in * s')
so the integer weights round(w' / s') = sign(k) * round(w / s) are unchanged. What changes is the
bias: integer runtimes add it on the accumulator grid s_in * s', so it is rounded by up to half a
step. At 8 bits that step is tiny; at 2 bits (ternary weights, 2-bit inputs) it is ~0.1, which flips
some downstream activations: `qadtr.evaluate` reports both the trained and the folded accuracy.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from qadtr._errors import QadtrError
from qadtr.models._layers import QuantSpec


def fold_bn(net: nn.Module, build, num_classes: int) -> nn.Module:
    """Return a new eval-mode deploy network (`QuantSpec.deploy=True`) equivalent to `net` (eval mode).

    Args:
        net: a fixed-precision network built by `build(q, num_classes)` with `q.deploy == False`.
        build: the registry builder that made it.
        num_classes: its number of classes.
    """
    q: QuantSpec = net.quant
    deploy = build(QuantSpec(q.w, q.a, q.edge, q.residual, deploy=True), num_classes)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modules = dict(net.named_modules())
    for name, bn in modules.items():
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        prefix, _, attr = name.rpartition(".")
        conv_name = (prefix + "." if prefix else "") + attr.replace("bn", "conv")
        conv = modules[conv_name]
        k = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # (Cout,)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(k)
        state[f"{conv_name}.weight"] = conv.weight.detach() * k.view(-1, 1, 1, 1)
        scale_key = f"{conv_name}.weight_quant.tensor_quant.scaling_impl.value"
        if scale_key not in state:
            raise QadtrError(f"{conv_name} has no initialised weight scale; train or calibrate the model first")
        state[scale_key] = state[scale_key] * k.abs().view(-1, 1, 1, 1)
        state[f"{conv_name}.bias"] = bn.bias.detach() + (bias - bn.running_mean) * k
        for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            state.pop(f"{name}.{suffix}", None)
    deploy.load_state_dict(state, strict=True)
    return deploy.eval()
