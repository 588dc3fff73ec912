"""CIFAR-style ResNets (He et al. 2016) in float and as Brevitas QNNs, and the tiny test model.

- resnet20 / resnet56: 16/32/64 channels, 3 stages of n basic blocks, "option A" shortcuts (stride-2
  subsample + zero channel padding), as in the akamaster weights in ../shared/models.
- resnet8: the MLPerf Tiny image-classification ResNet-8 (16/32/64, one block per stage, 1x1
  projection shortcuts without BN on the downsampling stages).
- resnet18_cifar: the ResNet-18 layout for 32x32 inputs (BasicBlock stages 2-2-2-2, a 3x3 stride-1 stem, no
  max pool; 1x1 projection shortcuts with bias and no BN where the shape changes, as resnet8's), with a width
  multiplier on base 16 channels (16/32/64/128 at width 1, a quarter of the ImageNet 64/128/256/512, so QAT on
  2 CPU cores fits the budget).
- test_resnet18: its tiny test variant (one block per stage, 4-16 channels, 8x8 inputs).
- test_qnet: one 8-channel block on 8x8 inputs, so every CLI and test path runs in seconds.

The model takes pixels in [0, 1] (B, 3, H, W); normalisation is the first layer, so attacks, replay
files and every runtime see the same input.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qadtr.models._layers import Layers, QuantSpec, value
from qadtr.models._registry import register_model

# ImageNet statistics: what the akamaster CIFAR weights were trained with (akamaster's trainer.py normalises with them)
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
RESNET18_WIDTHS = (16, 32, 64, 128)  # resnet18_cifar at width 1: base 16 (ImageNet's 64 / 4), doubled per stage


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1]
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, shortcut: str, L: Layers):
        super().__init__()
        self.conv1 = L.conv(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = L.bn(cout)
        self.relu1 = L.relu()
        self.conv2 = L.conv(cout, cout, 3, stride=1, padding=1)
        self.bn2 = L.bn(cout)
        self.q_main = L.residual()
        self.q_short = L.residual()
        self.relu2 = L.relu()
        self.downsample = stride != 1 or cin != cout
        self.pad = (cout - cin) // 2
        self.proj = (L.conv(cin, cout, 1, stride=stride, padding=0, bias=True)
                     if (self.downsample and shortcut == "B") else None)

    def forward(self, x):  # x: (B, Cin, H, W), a-bit unsigned QuantTensor (or float)
        out = self.relu1(self.bn1(self.conv1(x)))  # (B, Cout, H/s, W/s)
        out = self.q_main(self.bn2(self.conv2(out)))
        if self.proj is not None:
            short = self.proj(x)
        elif self.downsample:  # option A: subsample, zero-pad channels on both sides
            short = F.pad(value(x)[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        else:
            short = value(x)
        return self.relu2(out + self.q_short(short))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], shortcut: str, *, num_classes: int,
                 q: QuantSpec | None, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        L = Layers(q)
        self.quant = q
        self.normalize = Normalize(mean, std)
        self.quant_input = L.input()
        self.conv1 = L.conv(3, widths[0], 3, stride=1, padding=1, edge=True)
        self.bn1 = L.bn(widths[0])
        self.relu = L.relu()
        stages, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            layer = [BasicBlock(cin if j == 0 else cout, cout, (1 if i == 0 or j > 0 else 2), shortcut=shortcut, L=L)
                     for j in range(n)]
            stages.append(nn.Sequential(*layer))
            cin = cout
        self.layers = nn.ModuleList(stages)
        self.pool_quant = L.pool_quant()
        self.linear = L.linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) pixels in [0, 1]
        x = self.quant_input(self.normalize(x))
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        for stage in self.layers:
            x = stage(x)  # (B, 64, H/4, W/4) after the last stage
        x = F.adaptive_avg_pool2d(value(x), 1).flatten(1)  # (B, 64): exports as GlobalAveragePool
        return self.linear(self.pool_quant(x))  # (B, num_classes) float logits


@register_model
def resnet20(q: QuantSpec | None = None, num_classes: int = 10) -> ResNet:
    return ResNet((3, 3, 3), (16, 32, 64), "A", num_classes=num_classes, q=q)


@register_model
def resnet56(q: QuantSpec | None = None, num_classes: int = 10) -> ResNet:
    return ResNet((9, 9, 9), (16, 32, 64), "A", num_classes=num_classes, q=q)


@register_model
def resnet8(q: QuantSpec | None = None, num_classes: int = 10) -> ResNet:
    return ResNet((1, 1, 1), (16, 32, 64), "B", num_classes=num_classes, q=q)


@register_model
def test_qnet(q: QuantSpec | None = None, num_classes: int = 10) -> ResNet:
    """Tiny test model: stem conv + one 8-channel residual block + classifier, for 8x8 inputs."""
    return ResNet((1,), (8,), "A", num_classes=num_classes, q=q)


@register_model
def resnet18_cifar(q: QuantSpec | None = None, num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet-18 layout (2-2-2-2 BasicBlocks) for 32x32 inputs, base 16 channels times `width`."""
    widths = tuple(max(1, round(c * width)) for c in RESNET18_WIDTHS)
    return ResNet((2, 2, 2, 2), widths, "B", num_classes=num_classes, q=q)


@register_model
def test_resnet18(q: QuantSpec | None = None, num_classes: int = 10) -> ResNet:
    """Tiny test ResNet-18 layout: one BasicBlock per stage (4/8/8/16 channels), for 8x8 inputs."""
    return ResNet((1, 1, 1, 1), (4, 8, 8, 16), "B", num_classes=num_classes, q=q)
