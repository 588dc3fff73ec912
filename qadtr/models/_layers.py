"""Float <-> Brevitas layer factory: the one place that decides how a layer is quantized.

Deployability rules (what the integer exporters can lower), each enforced here so every architecture gets them:
- per-channel signed narrow-range weights with a learned scale (QLinearConv / TFLite CONV_2D accept
  per-channel int8 weights; a learned scale matters below 4 bits);
- unsigned activations after ReLU at `a` bits (int8/uint8 container + clamp when a < 8);
- residual-add operands quantized on *both* sides (so ORT fuses QLinearAdd, TFLite ADD requantizes);
- int32 bias whose scale is input_scale * weight_scale (ORT rounds float biases differently);
- a quantized (8-bit signed) model input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from qadtr.bits import Bits

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class QuantSpec:
    """Bit widths of one fixed-precision network."""

    w: int  # weight bits of hidden convs
    a: int  # activation bits of ReLU outputs (the inputs of every hidden conv)
    edge: int = 8  # weight bits of the first conv and the classifier: most low-bit papers keep these at 8
    residual: int = 8  # bits of both residual-add operands: ~8 keeps the skip path usable at a=2
    deploy: bool = False  # BatchNorm folded into conv bias (int32), the form every exporter takes

    def __post_init__(self) -> None:
        for name in ("w", "a", "edge", "residual"):
            bits = getattr(self, name)
            if bits not in SUPPORTED_BITS:
                raise ValueError(f"{name}={bits} bits is not supported; choose one of {SUPPORTED_BITS}")

    @property
    def key(self) -> str:
        return str(Bits(self.w, self.a))


class Layers:
    """Builds float layers when `q` is None, Brevitas layers otherwise."""

    def __init__(self, q: QuantSpec | None):
        self.q = q

    def input(self) -> nn.Module:
        """Quantizes the normalised image to signed 8 bit (the integer model's real input)."""
        if self.q is None:
            return nn.Identity()
        import brevitas.nn as qnn
        from brevitas.quant import Int8ActPerTensorFloat

        return qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=8, return_quant_tensor=True)

    def conv(self, cin: int, cout: int, k: int, *, stride: int = 1, padding: int = 0, edge: bool = False,
             bias: bool = False, groups: int = 1) -> nn.Module:
        """Conv without bias while training (a BatchNorm follows); with int32 bias once BN is folded.
        `groups=cin=cout` is a depthwise conv (one per-channel weight scale per output channel, as for any conv)."""
        if self.q is None:
            return nn.Conv2d(cin, cout, k, stride, padding, bias=bias, groups=groups)
        import brevitas.nn as qnn
        from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

        has_bias = bias or self.q.deploy
        return qnn.QuantConv2d(
            cin, cout, k, stride, padding, bias=has_bias, groups=groups,
            weight_quant=Int8WeightPerChannelFloat,
            weight_bit_width=self.q.edge if edge else self.q.w,
            weight_scaling_impl_type="parameter_from_stats",  # learned per-channel scale, init from max|w|
            bias_quant=Int32Bias if has_bias else None,
            return_quant_tensor=False)

    def bn(self, c: int) -> nn.Module:
        return nn.Identity() if (self.q is not None and self.q.deploy) else nn.BatchNorm2d(c)

    def relu(self) -> nn.Module:
        """ReLU whose output (the next conv's input) is an unsigned `a`-bit tensor."""
        if self.q is None:
            return nn.ReLU(inplace=False)
        import brevitas.nn as qnn
        from brevitas.quant import Uint8ActPerTensorFloat

        return qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=self.q.a, return_quant_tensor=True)

    def relu6(self) -> nn.Module:
        """ReLU6 in float; in a QNN the `a`-bit QuantReLU, whose learned clipping threshold is the clamp."""
        return nn.ReLU6(inplace=False) if self.q is None else self.relu()

    def stream(self) -> nn.Module:
        """Quantizer of a linear (ReLU-free, signed-valued) tensor read by two layers, e.g. MobileNetV2's bottleneck
        output (the next block's conv and its residual add): `residual` bits, as the ResNets' residual operands,
        returned as a QuantTensor for the next conv.

        Unsigned with a learned zero point (calibrated to ~2^(bits-1)), not signed: ORT on x86 runs integer kernels
        on uint8 activations only and converts an int8 QuantizeLinear to uint8 only when it has a single consumer
        (onnxruntime/core/optimizer/qdq_transformer/qdq_s8_to_u8.cc, CheckOutputEdges(graph, q_node, 1)), so an
        int8 tensor read twice would leave both its producer and its readers in float.
        """
        if self.q is None:
            return nn.Identity()
        import brevitas.nn as qnn
        from brevitas.quant import ShiftedUint8ActPerTensorFloat

        return qnn.QuantIdentity(act_quant=ShiftedUint8ActPerTensorFloat, bit_width=self.q.residual,
                                 return_quant_tensor=True)

    def residual(self) -> nn.Module:
        """Signed quantizer for one operand of a residual add (float values out, so scales may differ)."""
        if self.q is None:
            return nn.Identity()
        import brevitas.nn as qnn
        from brevitas.quant import Int8ActPerTensorFloat

        return qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=self.q.residual,
                                 return_quant_tensor=False)

    def pool_quant(self) -> nn.Module:
        """Requantizes the global-average-pooled features (unsigned 8 bit) for the int32-bias classifier."""
        if self.q is None:
            return nn.Identity()
        import brevitas.nn as qnn
        from brevitas.quant import Uint8ActPerTensorFloat

        return qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=8, return_quant_tensor=True)

    def linear(self, cin: int, cout: int) -> nn.Module:
        if self.q is None:
            return nn.Linear(cin, cout)
        import brevitas.nn as qnn
        from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

        return qnn.QuantLinear(cin, cout, bias=True, weight_quant=Int8WeightPerChannelFloat,
                               weight_bit_width=self.q.edge, weight_scaling_impl_type="parameter_from_stats",
                               bias_quant=Int32Bias, return_quant_tensor=False)


def value(x):
    """The float value of a tensor or a Brevitas QuantTensor."""
    return x if isinstance(x, torch.Tensor) else x.value
