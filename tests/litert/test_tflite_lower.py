"""export._tflite_lower: the fx handler-table lowering writes the golden ResNet lowering's bytes, exports a
depthwise CNN defined here under both LiteRT kernel sets, and refuses what it cannot map in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("ai_edge_litert")

from _golden_tflite_resnet import golden_build_tflite  # noqa: E402  (tests/litert, on sys.path under pytest)
from export import _tflite_proof as P  # noqa: E402
from export import tflite as T  # noqa: E402
from export._common import deploy_model  # noqa: E402
from export._tflite_lower import build_tflite, check_exportable, trace  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ZOO = [("resnet20_w2a2", (2, 2)), ("resnet20_w4a4", (4, 4)), ("resnet20_w8a8", (8, 8)),
       *[("resnet20_sw248", (b, b)) for b in (2, 4, 8)]]


def _assert_identical(net, side: int, kinds=({}, {"debug": True}, {"headroom": False})) -> None:
    for kw in kinds:
        want, got = golden_build_tflite(net, side, side, **kw), build_tflite(net, side, side, **kw)
        assert got.data == want.data, kw  # same tensors, same order, same buffers, same ops
        assert (got.op_counts, got.logit_scale, got.activations) == (want.op_counts, want.logit_scale,
                                                                      want.activations)


def test_brevitas_layers_trace_as_leaves(tiny_checkpoint):
    net, _ = deploy_model(tiny_checkpoint, 4)
    nodes = list(trace(net).nodes)
    leaves = {str(n.target) for n in nodes if n.op == "call_module"}
    brevitas = {name for name, m in net.named_modules() if type(m).__module__.startswith("brevitas.nn")}
    assert brevitas <= leaves and "normalize" in leaves
    assert not any(str(n.target).startswith(tuple(f"{b}." for b in brevitas)) for n in nodes)  # nothing inside


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_tiny_bytes_identical_to_golden(tiny_checkpoint, bits):
    _assert_identical(deploy_model(tiny_checkpoint, bits)[0], 8)


@pytest.mark.parametrize("arch", ["resnet8", pytest.param("resnet20", marks=pytest.mark.slow)])  # resnet20: ~25 s
def test_resnet_shortcuts_bytes_identical_to_golden(arch):
    """resnet8: 1x1 projection shortcuts; resnet20: option-A STRIDED_SLICE + channel PAD shortcuts (the zoo's
    checkpoints, below, are resnet20s too)."""
    from qadtr.models import ModelConfig, create_model, deploy_net
    from qadtr.models._calibrate import calibrate_

    torch.manual_seed(0)
    model = create_model(ModelConfig(arch, bits=((2, 2),)))
    calibrate_(model, np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), batch_size=8)
    _assert_identical(deploy_net(model.eval(), 2, 2), 8, kinds=({}, {"debug": True}))


@pytest.mark.slow  # a real ResNet-20 lowered six times at 32x32: ~20 s each on 2 cores
@pytest.mark.parametrize("zoo, bits", ZOO, ids=[f"{z}-w{b[0]}" for z, b in ZOO])
def test_zoo_bytes_identical_to_golden(zoo, bits):
    path = ROOT / "zoo" / zoo / "model.pt"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    _assert_identical(deploy_model(path, *bits)[0], 32)


# -- a CNN defined here, not in qadtr.models, in deploy form (int32 bias, no BatchNorm) --------------------------
def _conv(cin: int, cout: int, k: int, stride: int = 1, *, groups: int = 1, bits: int = 4):
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

    return qnn.QuantConv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True, weight_quant=Int8WeightPerChannelFloat,
                           weight_bit_width=bits, bias_quant=Int32Bias, return_quant_tensor=False)


def _act(signed: bool = False, relu: bool = True, bits: int = 4, init: float = 2.0):
    """A learned-scale (parameter, initialised to `init`) activation quantizer, as qadtr.models._layers uses."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat, Uint8ActPerTensorFloat

    cls = qnn.QuantReLU if relu else qnn.QuantIdentity
    return cls(act_quant=Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat, bit_width=bits,
               scaling_impl_type="parameter", scaling_init=init, return_quant_tensor=True)


class DepthwiseNet(nn.Module):
    """stem 3x3 -> depthwise 3x3 (stride 1) -> 1x1, added to the stem (QuantIdentity requantizes the sum) ->
    depthwise 3x3 stride 2 -> 1x1 -> global pool -> QuantLinear; 8x8 inputs."""

    def __init__(self, groups: int = 8):
        import brevitas.nn as qnn
        from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

        super().__init__()
        self.quant_input = _act(signed=True, relu=False, bits=8, init=1.0)
        self.stem, self.relu0 = _conv(3, 8, 3, bits=8), _act()
        self.dw1, self.relu1 = _conv(8, 8, 3, groups=groups), _act()
        self.pw1, self.q_main, self.q_short = _conv(8, 8, 1), _act(True, False, 8), _act(True, False, 8)
        self.q_add = _act(signed=True, relu=False, bits=8, init=3.0)
        self.dw2, self.relu2 = _conv(8, 8, 3, 2, groups=8), _act()
        self.pw2, self.relu3 = _conv(8, 16, 1), _act()
        self.pool_quant = _act(relu=False, bits=8, init=1.0)
        self.linear = qnn.QuantLinear(16, 10, bias=True, weight_quant=Int8WeightPerChannelFloat, weight_bit_width=8,
                                      bias_quant=Int32Bias, return_quant_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 8, 8) pixels in [0, 1] -> (B, 10)
        x = self.relu0(self.stem(self.quant_input(x)))  # (B, 8, 8, 8)
        x = self.q_add(self.q_main(self.pw1(self.relu1(self.dw1(x)))) + self.q_short(x.value))
        x = self.relu3(self.pw2(self.relu2(self.dw2(x))))  # (B, 16, 4, 4)
        return self.linear(self.pool_quant(F.adaptive_avg_pool2d(x.value, 1).flatten(1)))


def _depthwise_net(**kw) -> DepthwiseNet:
    torch.manual_seed(0)
    net = DepthwiseNet(**kw).eval()
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0, 0.1)  # non-zero Int32Bias integers
    return net


def test_depthwise_net_exports_and_proves_under_both_kernel_sets():
    from ai_edge_litert import schema_py_generated as S

    net = _depthwise_net()
    built, debug = build_tflite(net, 8, 8), build_tflite(net, 8, 8, debug=True)
    assert built.op_counts["DEPTHWISE_CONV_2D"] == 3  # dw1, dw2 and q_short's unit-weight requantization
    assert built.op_counts["ADD"] == 1 and built.op_counts["CONV_2D"] == 3
    assert list(built.activations) == ["quant_input", "relu0", "relu1", "q_main", "q_short", "q_add", "relu2",
                                       "relu3", "pool_quant"]
    m = S.ModelT.InitFromObj(S.Model.GetRootAsModel(built.data, 0))
    g = m.subgraphs[0]
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    for o in g.operators:
        if names[m.operatorCodes[o.opcodeIndex].builtinCode] == "DEPTHWISE_CONV_2D":
            assert o.builtinOptions.depthMultiplier == 1
            assert g.tensors[o.inputs[1]].quantization.quantizedDimension == 3
    images = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    parity = P.prove(net, built, debug, images=images)
    assert parity["xnnpack"]["passed"] and parity["builtin"]["passed"]
    assert parity["xnnpack"]["act_mismatch"] == 0 and parity["xnnpack"]["debug_copy_identical"]
    assert parity["xnnpack"]["act_mismatch_local"] == 0


def test_registry_mobilenet_exports_bit_exactly():
    from qadtr.models import ModelConfig, create_model, deploy_net, list_models
    from qadtr.models._calibrate import calibrate_

    if "test_mbv2" not in list_models():
        pytest.skip("no test_mbv2 in the model registry")
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    model = create_model(ModelConfig("test_mbv2", bits=((4, 4),)))
    calibrate_(model, images, batch_size=8)
    net = deploy_net(model.eval(), 4, 4)
    built, debug = build_tflite(net, 8, 8), build_tflite(net, 8, 8, debug=True)
    assert built.op_counts.get("DEPTHWISE_CONV_2D", 0) >= 1
    parity = P.prove(net, built, debug, images=images)  # its bottleneck stream: unsigned with a learned zero point
    assert parity["xnnpack"]["passed"] and parity["builtin"]["passed"] and parity["xnnpack"]["act_mismatch"] == 0
    assert parity["xnnpack"]["act_mismatch_local"] == 0


# -- refusals: one line naming the module path, its type and the fix, before anything is written --------------
class _Grouped(DepthwiseNet):
    def __init__(self):
        super().__init__(groups=2)


class _Upsample(DepthwiseNet):
    def __init__(self):
        super().__init__()
        self.relu2 = nn.Sequential(self.relu2, nn.Upsample(scale_factor=2))


class _Unquantized(DepthwiseNet):
    def forward(self, x):
        x = self.relu0(self.stem(self.quant_input(x)))
        return self.linear(self.pool_quant(F.adaptive_avg_pool2d(self.pw1(x) + x.value, 1).flatten(1)))


@pytest.mark.parametrize("cls, match", [
    (_Grouped, r"^dw1: QuantConv2d with groups=2 \(8 -> 8 channels\) has no TFLite kernel .*use export\.onnx$"),
    (_Upsample, r"^relu2\.1: Upsample has no TFLite mapping; replace it with a Brevitas layer or use export\.onnx$"),
    (_Unquantized, r"^pw1: its float conv output reaches forward: function add unquantized; put a QuantIdentity"),
])
def test_refusals_name_the_layer_and_the_fix(cls, match):
    torch.manual_seed(0)
    net = cls().eval()
    for check in (lambda: check_exportable(net, 8, 8), lambda: build_tflite(net, 8, 8)):
        with pytest.raises(QadtrError, match=match) as e:
            check()
        assert "\n" not in str(e.value)


def test_untraceable_forward_is_refused():
    class Branchy(DepthwiseNet):
        def forward(self, x):
            return self.linear(x) if x.sum() > 0 else x  # data-dependent: torch.fx cannot trace it

    with pytest.raises(QadtrError, match=r"^torch\.fx cannot trace Branchy .*data-dependent control flow"):
        check_exportable(Branchy().eval())
