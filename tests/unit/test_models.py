"""Model registry, configs, switchable bit widths, BN folding and pretrained loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qadtr import QadtrError
from qadtr.predict import to_tensor
from qadtr.models import (SUPPORTED_BITS, ModelConfig, QuantSpec, at_bits, bits_of, create_model, deploy_net,
                          get_bits, list_models, load_pretrained_, set_bits)
from qadtr.models._calibrate import calibrate_

X8 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # (B, 3, 8, 8) pixels


def test_registry_lists_the_zoo_and_the_test_model():
    assert {"resnet20", "resnet56", "resnet8", "test_qnet"} <= set(list_models())


@pytest.mark.parametrize("arch", ["resnet20", "resnet56", "resnet8", "test_qnet"])
def test_every_model_builds_float_and_quantized(arch):
    for bits in ((), ((4, 4),)):
        model = create_model(ModelConfig(arch, bits=bits)).eval()
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_has_the_published_parameter_count():
    n = sum(p.numel() for p in create_model(ModelConfig("resnet20")).parameters())
    assert n == 269_722  # He et al. 2016: 0.27M


@pytest.mark.parametrize("kwargs, match", [
    (dict(arch="vgg"), "unknown model 'vgg'"),
    (dict(arch="resnet20", bits=((7, 7),)), r"not supported; each must be one of"),
    (dict(arch="resnet20", bits=((4, 4), (4, 4))), "repeats a pair"),
    (dict(arch="resnet20", bits=((4, 4),), per_bit_bn=True), "per_bit_bn needs at least two"),
    (dict(arch="resnet20", num_classes=1), "at least 2"),
    (dict(arch="resnet20", edge_bits=1), "edge_bits=1 not supported"),
    (dict(arch="resnet20", residual_bits=9), "residual_bits=9 not supported"),
])
def test_model_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_quant_spec_rejects_bad_bits():
    with pytest.raises(ValueError, match="w=1 bits is not supported"):
        QuantSpec(1, 4)
    assert QuantSpec(4, 8).key == "w4a8"


def test_switchable_model_shares_weights_and_switches():
    model = create_model(ModelConfig("test_qnet", bits=((2, 2), (4, 4), (8, 8))))
    assert bits_of(model) == [(2, 2), (4, 4), (8, 8)]
    n2, n8 = at_bits(model, 2), at_bits(model, 8)
    assert n2.conv1.weight is n8.conv1.weight
    assert n2.bn1 is n8.bn1  # shared BatchNorm without per_bit_bn
    assert n2.relu is not n8.relu  # quantizers are per bit width
    set_bits(model, 4, 4)
    assert get_bits(model) == (4, 4)
    with pytest.raises(QadtrError, match=r"model has no w3a3; it was built for \['w2a2', 'w4a4', 'w8a8'\]"):
        set_bits(model, 3)
    with pytest.raises(QadtrError, match="on a float model"):
        set_bits(create_model(ModelConfig("test_qnet")), 4)


def test_per_bit_bn_keeps_separate_batchnorms():
    model = create_model(ModelConfig("test_qnet", bits=((2, 2), (8, 8)), per_bit_bn=True))
    assert at_bits(model, 2).bn1 is not at_bits(model, 8).bn1
    assert at_bits(model, 2).conv1.weight is at_bits(model, 8).conv1.weight


def test_bit_width_changes_the_function():
    model = create_model(ModelConfig("test_qnet", bits=((2, 2), (8, 8))))
    calibrate_(model, np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8))
    model.eval()
    set_bits(model, 2)
    y2 = model(X8)
    set_bits(model, 8)
    assert not torch.allclose(y2, model(X8))


def test_quantized_activations_use_the_requested_levels(tiny_checkpoint):
    from qadtr.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    for bits in (2, 4, 8):
        net = deploy_net(model, bits)
        out = net.relu(net.conv1(net.quant_input(net.normalize(X8))))  # first ReLU's QuantTensor
        assert int(out.int().max()) <= 2 ** bits - 1 and int(out.int().min()) >= 0


def test_deploy_net_equals_trained_net_at_8_bits(tiny_checkpoint, tiny_images):
    """Folding keeps integer weights exactly; at 8 bits the int32 bias rounding is far below one step."""
    from qadtr.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    x = to_tensor(tiny_images)
    trained, deployed = at_bits(model, 8).eval(), deploy_net(model, 8)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    t, d = trained.conv1.quant_weight(), deployed.conv1.quant_weight()
    sign = torch.sign(trained.bn1.weight).view(-1, 1, 1, 1).to(torch.int8)
    assert torch.equal(t.int() * sign, d.int())  # integers unchanged up to the BN sign
    with torch.no_grad():
        assert torch.equal(trained(x).argmax(1), deployed(x).argmax(1))


def test_load_pretrained_maps_akamaster_names(tmp_path):
    src = create_model(ModelConfig("resnet20"))
    state = {}
    for k, v in src.state_dict().items():
        if k.startswith("normalize.") or k.endswith("num_batches_tracked"):
            continue
        if k.startswith("layers."):
            _, stage, rest = k.split(".", 2)
            k = f"layer{int(stage) + 1}.{rest}"
        state[f"module.{k}"] = torch.randn_like(v.float()) if v.is_floating_point() else v
    path = tmp_path / "aka.th"
    torch.save({"best_prec1": 0.9, "state_dict": state}, path)
    model = create_model(ModelConfig("resnet20", bits=((4, 4), (8, 8)), per_bit_bn=True))
    load_pretrained_(model, str(path))
    for key in ("w4a4", "w8a8"):
        assert torch.equal(model.nets[key].layers[1][0].conv2.weight, state["module.layer2.0.conv2.weight"])
        assert torch.equal(model.nets[key].bn1.running_var, state["module.bn1.running_var"])


def test_load_pretrained_errors(tmp_path):
    model = create_model(ModelConfig("resnet20"))
    with pytest.raises(QadtrError, match="not found"):
        load_pretrained_(model, str(tmp_path / "missing.th"))
    (tmp_path / "junk.th").write_bytes(b"not a torch file")
    with pytest.raises(QadtrError, match="cannot read initial weights"):
        load_pretrained_(model, str(tmp_path / "junk.th"))
    torch.save(create_model(ModelConfig("test_qnet")).state_dict(), tmp_path / "small.pt")
    with pytest.raises(QadtrError, match="lacks|has shape"):
        load_pretrained_(model, str(tmp_path / "small.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(QadtrError, match="holds no state dict"):
        load_pretrained_(model, str(tmp_path / "list.pt"))


def test_deploy_net_needs_calibrated_scales():
    model = create_model(ModelConfig("test_qnet", bits=((4, 4),)))
    with pytest.raises(QadtrError, match="no initialised weight scale; train or calibrate"):
        deploy_net(model, 4)


def test_supported_bits_cover_the_brief():
    assert SUPPORTED_BITS == (2, 3, 4, 5, 6, 8)


def test_running_at_switches_back_and_deploy_net_leaves_the_model_alone():
    from qadtr.models import running_at

    model = create_model(ModelConfig("test_qnet", bits=((2, 2), (4, 4), (8, 8))))
    calibrate_(model, np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8))
    model.train()
    assert get_bits(model) == (2, 2)
    with running_at(model, 8) as m:
        assert m is model and get_bits(model) == (8, 8)
    assert get_bits(model) == (2, 2)
    with pytest.raises(RuntimeError), running_at(model, 4, 4):  # restored on an error too
        raise RuntimeError("inside")
    assert get_bits(model) == (2, 2)
    net = deploy_net(model, 8)
    at_bits(model, 4)
    assert get_bits(model) == (2, 2) and model.training and not net.training
    with pytest.raises(QadtrError, match=r"model has no w3a3"):
        with running_at(model, 3):
            pass
