"""The edge architectures in the registry: MobileNetV2 for 32x32 (depthwise, linear bottlenecks, width multiplier)
and the ResNet-18 layout, their tiny test variants, every bit width, 10 and 43 classes, and BN folding."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from qadtr.models import ModelConfig, at_bits, create_model, deploy_net, list_models, running_at
from qadtr.models.mobilenetv2 import InvertedResidual, MobileNetV2, make_divisible

EDGE = ["mobilenetv2_cifar", "resnet18_cifar", "test_mbv2", "test_resnet18"]
SIDE = {"mobilenetv2_cifar": 32, "resnet18_cifar": 32, "test_mbv2": 8, "test_resnet18": 8}  # input H = W
BITS = [(), ((2, 2),), ((4, 4),), ((8, 8),), ((2, 2), (4, 4), (8, 8))]


def test_registry_lists_the_edge_models():
    assert set(EDGE) <= set(list_models())


FULL_SIZE = ("mobilenetv2_cifar", "resnet18_cifar")  # float and one bit width cover their construction (seconds each)
CASES = [(arch, bits) for arch in EDGE for bits in BITS if arch not in FULL_SIZE or bits in BITS[:2]]


@pytest.mark.parametrize("arch, bits", CASES, ids=[f"{a}-{b or 'float'}" for a, b in CASES])
@pytest.mark.parametrize("classes", [10, 43])
def test_builds_and_runs_at_every_precision(arch, bits, classes):
    model = create_model(ModelConfig(arch, num_classes=classes, bits=bits)).eval()
    x = torch.rand(2, 3, SIDE[arch], SIDE[arch])
    with torch.no_grad():
        assert model(x).shape == (2, classes)
        for w, a in bits[1:]:
            with running_at(model, w, a):
                assert model(x).shape == (2, classes)


def test_mobilenetv2_structure():
    net = create_model(ModelConfig("mobilenetv2_cifar"))
    assert isinstance(net, MobileNetV2) and net.conv1.stride == (1, 1)  # CIFAR stem: stride 1
    blocks = list(net.blocks)
    assert len(blocks) == 17 and all(isinstance(b, InvertedResidual) for b in blocks)
    assert sum(b.residual for b in blocks) == 10  # stride 1 and equal channels
    dw = [b.conv2 for b in blocks]
    assert all(c.groups == c.in_channels == c.out_channels and c.kernel_size == (3, 3) for c in dw)
    assert [b.conv2.stride[0] for b in blocks if b.conv2.stride[0] == 2] == [2, 2, 2]  # 32 -> 4
    assert not blocks[0].expand and all(b.expand for b in blocks[1:])
    assert net.linear.in_features == make_divisible(1280 * 0.5) == 640
    assert [make_divisible(c * 0.5) for c in (32, 16, 24, 320)] == [16, 8, 16, 160]
    with torch.no_grad():  # linear bottleneck: no ReLU after the projection, so the block output goes negative
        assert (blocks[3](torch.rand(1, blocks[3].conv1.in_channels, 8, 8)) < 0).any()


def test_resnet18_structure():
    net = create_model(ModelConfig("resnet18_cifar"))
    assert [len(s) for s in net.layers] == [2, 2, 2, 2] and net.conv1.stride == (1, 1)
    assert [s[0].conv1.out_channels for s in net.layers] == [16, 32, 64, 128]
    projections = [b.proj for s in net.layers for b in s if b.proj is not None]
    assert len(projections) == 3 and all(p.kernel_size == (1, 1) for p in projections)
    wide = __import__("qadtr.models.resnet", fromlist=["resnet18_cifar"]).resnet18_cifar(width=2.0)
    assert wide.layers[-1][0].conv1.out_channels == 256


@pytest.mark.parametrize("arch", ["test_mbv2", "test_resnet18"])
def test_switchable_shares_weights_with_per_bit_bn(arch):
    model = create_model(ModelConfig(arch, bits=((2, 2), (4, 4), (8, 8)), per_bit_bn=True))
    n2, n8 = at_bits(model, 2), at_bits(model, 8)
    conv = "blocks.1.conv2" if arch == "test_mbv2" else "layers.1.0.conv1"
    bn = conv.replace("conv", "bn")
    assert n2.get_submodule(conv).weight is n8.get_submodule(conv).weight
    assert n2.get_submodule(bn) is not n8.get_submodule(bn)


@pytest.mark.parametrize("arch", ["test_mbv2", "test_resnet18"])
def test_deploy_fold_equals_the_trained_net(arch, edge_checkpoints):
    """Integer weights unchanged up to the BN sign; at 8 bits the int32-bias rounding keeps every argmax."""
    from qadtr.checkpoint import load_checkpoint

    model, _ = load_checkpoint(edge_checkpoints[arch])
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for bits in (2, 8):
        trained, deployed = at_bits(model, bits).eval(), deploy_net(model, bits)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
        conv = "blocks.1.conv2" if arch == "test_mbv2" else "layers.1.0.conv1"
        sign = torch.sign(trained.get_submodule(conv.replace("conv", "bn")).weight).view(-1, 1, 1, 1).to(torch.int8)
        t, d = trained.get_submodule(conv).quant_weight(), deployed.get_submodule(conv).quant_weight()
        assert torch.equal(t.int() * sign, d.int())
        with torch.no_grad():
            if bits == 8:
                assert torch.equal(trained(x).argmax(1), deployed(x).argmax(1))
            else:  # ternary weights, 2-bit inputs: the bias rounding is a visible fraction of a step
                assert (trained(x).argmax(1) == deployed(x).argmax(1)).float().mean() >= 0.9
