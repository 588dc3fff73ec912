"""Max pooling, channel concatenation at two scales and a hidden QuantLinear, in a Brevitas CNN defined here:
exported through export.module to ONNX and TFLite, proven, run by LiteRT, and replayed bit for bit by the
numpy integer executor under the semantics each runtime computes; what has no exact mapping is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

from test_intexec_tflite import mismatches  # noqa: E402  (tests/litert, on sys.path under pytest)

from devices._host import fingerprint  # noqa: E402
from devices.intexec import SEMANTICS, expected_semantics  # noqa: E402
from export._tflite_lower import check_exportable  # noqa: E402
from export.module import export_module  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402
from _seeded_net import seeded_net  # noqa: E402  (tests/litert, on sys.path under pytest)


def _conv(cin: int, cout: int, k: int, *, bits: int = 4):
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

    return qnn.QuantConv2d(cin, cout, k, 1, k // 2, bias=True, weight_quant=Int8WeightPerChannelFloat,
                           weight_bit_width=bits, bias_quant=Int32Bias, return_quant_tensor=False)


def _linear(cin: int, cout: int, *, bits: int = 4):
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

    return qnn.QuantLinear(cin, cout, bias=True, weight_quant=Int8WeightPerChannelFloat, weight_bit_width=bits,
                           bias_quant=Int32Bias, return_quant_tensor=False)


def _act(signed: bool = False, relu: bool = True, bits: int = 4, init: float = 2.0):
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat, Uint8ActPerTensorFloat

    return (qnn.QuantReLU if relu else qnn.QuantIdentity)(
        act_quant=Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat, bit_width=bits,
        scaling_impl_type="parameter", scaling_init=init, return_quant_tensor=True)


class BranchNet(nn.Module):
    """stem -> MaxPool2d(2) -> two branches at different scales (unsigned 4-bit, signed 8-bit), concatenated and
    requantized by q_cat -> 3x3 -> F.max_pool2d(3, 2, 1) (torch's padding, not TFLite's SAME) -> global pool ->
    QuantLinear -> QuantReLU -> QuantLinear; 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.quant_input = _act(signed=True, relu=False, bits=8, init=1.0)
        self.stem, self.relu0 = _conv(3, 8, 3, bits=8), _act()
        self.pool = nn.MaxPool2d(2)
        self.left, self.q_left = _conv(8, 4, 1), _act(init=2.0)
        self.right, self.q_right = _conv(8, 4, 3), _act(signed=True, relu=False, bits=8, init=1.0)
        self.q_cat = _act(signed=True, relu=False, bits=8, init=3.0)
        self.mix, self.relu1 = _conv(8, 8, 3), _act()
        self.pool_quant = _act(relu=False, bits=8, init=1.0)
        self.fc1, self.relu_fc = _linear(8, 16), _act(init=2.0)
        self.fc2 = _linear(16, 10, bits=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 8, 8) pixels in [0, 1] -> (B, 10)
        x = self.pool(self.relu0(self.stem(self.quant_input(x))))  # (B, 8, 4, 4)
        x = self.q_cat(torch.cat([self.q_left(self.left(x)).value, self.q_right(self.right(x)).value], 1))
        x = F.max_pool2d(self.relu1(self.mix(x)), 3, 2, 1)  # (B, 8, 2, 2)
        x = self.pool_quant(F.adaptive_avg_pool2d(x.value, 1).flatten(1))
        return self.fc2(self.relu_fc(self.fc1(x)))


def _net(cls=BranchNet) -> nn.Module:
    return seeded_net(cls)


@pytest.fixture(scope="module")
def exported(tiny_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("layers")
    return {name: export_module(name, _net(), out / f"net{suffix}", images=tiny_images)
            for name, suffix in (("onnx", ".onnx"), ("tflite", ".tflite"))}


def test_both_formats_export_and_prove(exported):
    onnx_r, tfl = exported["onnx"].record, exported["tflite"].record
    assert onnx_r.passed and onnx_r.parity["exact"], onnx_r.summary
    assert tfl.parity["xnnpack"]["passed"] and tfl.parity["builtin"]["passed"]
    assert tfl.parity["xnnpack"]["act_mismatch"] == 0  # XNNPACK computes every compared integer as Brevitas does
    ops = tfl.ops
    assert (ops["MAX_POOL_2D"], ops["PADV2"], ops["CONCATENATION"], ops["FULLY_CONNECTED"]) == (2, 1, 1, 2)
    assert ops["DEPTHWISE_CONV_2D"] == 2  # q_left's and q_right's integers requantized to q_cat's scale
    assert "relu_fc" in tfl.parity["xnnpack"]["per_tensor"]  # the hidden FULLY_CONNECTED's output is compared


@pytest.mark.parametrize("runtime, kernels", [("litert-xnnpack", "xnnpack"), ("litert-ref", "ref"),
                                              ("litert-builtin", "builtin")])
def test_tflite_executor_is_bit_exact_with_litert(exported, tiny_images, runtime, kernels):
    semantics = expected_semantics(runtime, fingerprint())
    if semantics is None:
        pytest.skip(f"no executor semantics models {runtime} on this CPU")
    data = exported["tflite"].path.read_bytes()
    off, compared = mismatches(data, tiny_images.astype(np.float32) / 255, SEMANTICS[semantics].graph_name, kernels)
    assert off == {} and compared >= 15, off  # every quantized tensor LiteRT lets us read, logits included


def test_onnx_executor_explains_ort_enable_all(exported, tiny_images):
    """The export's own attribution: the executor semantics this host's ORT_ENABLE_ALL computes reproduces every
    image bit for bit (MaxPool on the integers, QLinearConcat, the hidden QGemm with an integer output)."""
    from devices._intexec_onnx import OnnxIntGraph

    deployed = exported["onnx"].record.parity["deployed"]
    assert deployed["explained_by"] == expected_semantics("onnxrt", fingerprint()), deployed["summary"]
    ops = {n.op_type for n in OnnxIntGraph(exported["onnx"].path).nodes}
    assert {"MaxPool", "Concat", "Gemm"} <= ops


# -- refusals: one line naming the module path, its type and the fix, before anything is written --------------
class _Dilated(BranchNet):
    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(2, dilation=2)


class _Ceil(BranchNet):
    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)


class _SpatialCat(BranchNet):
    def forward(self, x):
        x = self.pool(self.relu0(self.stem(self.quant_input(x))))
        x = self.q_cat(torch.cat([self.q_left(self.left(x)).value, self.q_right(self.left(x)).value], 2))
        return self.fc2(self.relu_fc(self.fc1(self.pool_quant(F.adaptive_avg_pool2d(x.value, 1).flatten(1)))))


class _UnquantizedCat(BranchNet):
    def forward(self, x):
        x = self.pool(self.relu0(self.stem(self.quant_input(x))))
        x = self.mix(torch.cat([self.q_left(self.left(x)).value, self.q_right(self.right(x)).value], 1))
        return self.fc2(self.relu_fc(self.fc1(self.pool_quant(F.adaptive_avg_pool2d(x, 1).flatten(1)))))


class _UnquantizedLinear(BranchNet):
    def forward(self, x):
        x = self.pool(self.relu0(self.stem(self.quant_input(x))))
        return self.fc2(self.fc1(self.pool_quant(F.adaptive_avg_pool2d(x.value, 1).flatten(1))))


@pytest.mark.parametrize("cls, match", [
    (_Dilated, r"^pool: MaxPool2d with dilation \(2, 2\) has no TFLite kernel .*; use dilation 1 or use export\.onnx$"),
    (_Ceil, r"^pool: MaxPool2d with ceil_mode=True is not lowered; use ceil_mode=False .*or use export\.onnx$"),
    (_SpatialCat, r"^forward: function cat: cat along dim 2 of 4-d tensors is not lowered; concatenate channels"),
    (_UnquantizedCat, r"^forward: function cat: its float cat output reaches mix unquantized; put a QuantIdentity"),
    (_UnquantizedLinear, r"^fc1: its float linear output reaches fc2 unquantized; put a QuantIdentity"),
])
def test_refusals_name_the_layer_and_the_fix(cls, match, tiny_images, tmp_path):
    net = _net(cls)
    with pytest.raises(QadtrError, match=match) as e:
        check_exportable(net, 8, 8)
    assert "\n" not in str(e.value)
    with pytest.raises(QadtrError, match=match):
        export_module("tflite", net, tmp_path / "bad.tflite", images=tiny_images)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
