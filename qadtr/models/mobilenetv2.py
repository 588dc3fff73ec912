"""MobileNetV2 (Sandler et al. 2018) for 32x32 inputs, in float and as a Brevitas QNN, and its tiny test model.

- mobilenetv2_cifar: the CIFAR variant (kuangliu/pytorch-cifar, "change stride 2 -> 1 for CIFAR10"): a 3x3 stem
  at stride 1, the ImageNet stage table (t, c, n, s) with the second stage at stride 1, so 32x32 inputs reach
  4x4 before the last 1x1 conv; a width multiplier (default 0.5, so an epoch on 2 CPU cores takes minutes).
- test_mbv2: 8-24 channels, one block per kind (no expansion; residual; stride 2 with a channel change), for
  8x8 inputs, so every test runs in seconds; its depthwise convs have 16 and 24 channels, so ORT runs both of
  its x86 depthwise kernels (ConvSym for multiples of 16, MlasConvDepthwise otherwise).

Each inverted residual: 1x1 expansion conv -> BN -> ReLU, 3x3 depthwise conv (groups = channels) -> BN -> ReLU,
1x1 projection conv -> BN with no ReLU (the linear bottleneck); a residual add when stride 1 and the channels
match. ReLU6 is ReLU6 in the float model and a QuantReLU in a QNN (Layers.relu6): the quantizer's learned
clipping threshold clamps the output anyway, so a fixed 6 would be a second clamp that no exporter lowers as
one op; calibration (qadtr.models._calibrate) starts each threshold from the float twin's ReLU6 outputs (<= 6).

The bottleneck output (the residual stream) is quantized at `QuantSpec.residual` bits (8 by default, as the
ResNets' residual operands: a 2-bit stream is unusable) by `q_out` after the add, or after the projection where
there is no add; it is unsigned with a learned zero point (Layers.stream says why ORT needs that). The add's
operands are that stream and `q_main` (the projection's output, signed, at the same bits), so ORT fuses every
conv into QLinearConv and every add into QLinearAdd. Module names follow the conventions
fold_bn (bnN -> convN) and the float-twin calibration rely on.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qadtr.models._layers import Layers, QuantSpec, value
from qadtr.models._registry import register_model
from qadtr.models.resnet import CIFAR_MEAN, CIFAR_STD, Normalize

# (expansion t, channels c, blocks n, first stride s): the ImageNet table with stage 2 at stride 1 (CIFAR)
CIFAR_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))
DIVISOR = 8  # channel counts rounded to multiples of 8, as torchvision's _make_divisible does


def make_divisible(v: float, divisor: int = DIVISOR) -> int:
    """torchvision's rounding of scaled channel counts: nearest multiple of `divisor`, never below 90% of v."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, t: int, L: Layers):
        super().__init__()
        hidden = cin * t
        self.expand = t != 1
        if self.expand:
            self.conv1 = L.conv(cin, hidden, 1)
            self.bn1 = L.bn(hidden)
            self.relu1 = L.relu6()
        self.conv2 = L.conv(hidden, hidden, 3, stride=stride, padding=1, groups=hidden)  # depthwise
        self.bn2 = L.bn(hidden)
        self.relu2 = L.relu6()
        self.conv3 = L.conv(hidden, cout, 1)  # projection: linear bottleneck, no ReLU
        self.bn3 = L.bn(cout)
        self.residual = stride == 1 and cin == cout
        if self.residual:
            self.q_main = L.residual()
        self.q_out = L.stream()

    def forward(self, x):  # x: (B, Cin, H, W) quantized (unsigned after the stem, signed stream after) or float
        out = self.relu1(self.bn1(self.conv1(x))) if self.expand else x  # (B, t*Cin, H, W)
        out = self.relu2(self.bn2(self.conv2(out)))  # (B, t*Cin, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, Cout, H/s, W/s)
        if self.residual:
            out = self.q_main(out) + value(x)
        return self.q_out(out)


class MobileNetV2(nn.Module):
    def __init__(self, stages: tuple[tuple[int, int, int, int], ...], stem: int, last: int, *, num_classes: int,
                 q: QuantSpec | None, width: float = 1.0, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        L = Layers(q)
        self.quant = q
        self.normalize = Normalize(mean, std)
        self.quant_input = L.input()
        cin = make_divisible(stem * width)
        self.conv1 = L.conv(3, cin, 3, stride=1, padding=1, edge=True)  # CIFAR: stride 1
        self.bn1 = L.bn(cin)
        self.relu = L.relu6()
        blocks = []
        for t, c, n, s in stages:
            cout = make_divisible(c * width)
            for j in range(n):
                blocks.append(InvertedResidual(cin, cout, s if j == 0 else 1, t=t, L=L))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        last = make_divisible(last * width)  # scaled with the width too (torchvision keeps 1280): the budget
        self.conv_last = L.conv(cin, last, 1)
        self.bn_last = L.bn(last)
        self.relu_last = L.relu6()
        self.pool_quant = L.pool_quant()
        self.linear = L.linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) pixels in [0, 1]
        x = self.quant_input(self.normalize(x))
        x = self.relu(self.bn1(self.conv1(x)))  # (B, stem, H, W)
        x = self.blocks(x)  # (B, C, H/8, W/8)
        x = self.relu_last(self.bn_last(self.conv_last(x)))  # (B, last, H/8, W/8)
        x = F.adaptive_avg_pool2d(value(x), 1).flatten(1)  # (B, last): exports as GlobalAveragePool
        return self.linear(self.pool_quant(x))  # (B, num_classes) float logits


@register_model
def mobilenetv2_cifar(q: QuantSpec | None = None, num_classes: int = 10, width: float = 0.5) -> MobileNetV2:
    """MobileNetV2 for 32x32 inputs (CIFAR strides), width multiplier 0.5 by default."""
    return MobileNetV2(CIFAR_STAGES, 32, 1280, num_classes=num_classes, q=q, width=width)


@register_model
def test_mbv2(q: QuantSpec | None = None, num_classes: int = 10) -> MobileNetV2:
    """Tiny test MobileNetV2: 16-channel stem, three one-block stages (t=1; residual; stride 2), for 8x8 inputs."""
    return MobileNetV2(((1, 8, 1, 1), (2, 8, 1, 1), (3, 16, 1, 2)), 16, 16, num_classes=num_classes, q=q)
