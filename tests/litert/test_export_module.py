"""A Brevitas CNN defined here (not in qadtr.models) through export.module to all three formats, and replayed by
eval.fleet against the module source the records name (the fakequant reference runs this very module)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

from export.module import export_module, infer_bits  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402
from _seeded_net import seeded_net  # noqa: E402  (tests/litert, on sys.path under pytest)


def _conv(cin: int, cout: int, k: int, stride: int = 1, *, groups: int = 1, bits: int = 4):
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

    return qnn.QuantConv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True, weight_bit_width=bits,
                           weight_quant=Int8WeightPerChannelFloat, bias_quant=Int32Bias, return_quant_tensor=False)


def _act(signed: bool = False, relu: bool = True, bits: int = 4, init: float = 2.0):
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat, Uint8ActPerTensorFloat

    return (qnn.QuantReLU if relu else qnn.QuantIdentity)(
        act_quant=Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat, bit_width=bits,
        scaling_impl_type="parameter", scaling_init=init, return_quant_tensor=True)


class UserNet(nn.Module):
    """stem 3x3 -> depthwise 3x3 -> 1x1 added to the stem (requantized) -> global pool -> QuantLinear."""

    def __init__(self, width: int = 8):
        import brevitas.nn as qnn
        from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

        super().__init__()
        self.quant_input = _act(signed=True, relu=False, bits=8, init=1.0)
        self.stem, self.relu0 = _conv(3, width, 3, bits=8), _act()
        self.dw, self.relu1 = _conv(width, width, 3, groups=width), _act()
        self.pw, self.q_main, self.q_short = _conv(width, width, 1), _act(True, False, 8), _act(True, False, 8)
        self.q_add = _act(signed=True, relu=False, bits=8, init=3.0)
        self.pool_quant = _act(relu=False, bits=8, init=1.0)
        self.linear = qnn.QuantLinear(width, 10, bias=True, weight_quant=Int8WeightPerChannelFloat, weight_bit_width=8,
                                      bias_quant=Int32Bias, return_quant_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) pixels in [0, 1] -> (B, 10)
        x = self.relu0(self.stem(self.quant_input(x)))
        x = self.q_add(self.q_main(self.pw(self.relu1(self.dw(x)))) + self.q_short(x.value))
        return self.linear(self.pool_quant(F.adaptive_avg_pool2d(x.value, 1).flatten(1)))


class FloatConvNet(UserNet):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(8, 8, 1)  # an unquantized conv: no exact integer mapping


def _user_net(cls=UserNet) -> nn.Module:
    return seeded_net(cls)


@pytest.fixture(scope="module")
def exported(tiny_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("byo")
    net = _user_net()
    return out, {name: export_module(name, net, out / f"net{suffix}", images=tiny_images, kwargs={"width": 8})
                 for name, suffix in (("onnx", ".onnx"), ("tflite", ".tflite"), ("trt", "_trt"))}


def test_bits_are_inferred_from_the_narrowest_layers():
    assert infer_bits(_user_net()) == (4, 4)


def test_all_three_formats_export_and_prove(exported):
    out, results = exported
    onnx_r, tfl, trt = results["onnx"], results["tflite"], results["trt"]
    assert onnx_r and onnx_r.record.summary.startswith("PASSED") and onnx_r.record.parity["exact"]
    assert tfl.record.parity["xnnpack"]["passed"] and tfl.record.parity["builtin"]["passed"]
    assert tfl.record.ops["DEPTHWISE_CONV_2D"] >= 1 and tfl.record.ops["ADD"] == 1
    assert trt and trt.path == out / "net_trt" / "model.onnx" and (out / "net_trt" / "build_engine.sh").is_file()
    for r in results.values():
        assert r.record.arch == "UserNet" and r.record.bits == (4, 4)
        assert r.record.source_sha256 == results["onnx"].record.source_sha256  # the same state dict
    assert (out / "net.onnx.source" / "model.pt").is_file() and (out / "net_trt" / "source" / "model.json").is_file()


def test_the_module_source_rebuilds_the_same_net(exported, tiny_images):
    from qadtr._module_ref import load_module
    from qadtr.predict import to_tensor

    out, results = exported
    net, src = load_module(results["onnx"].record.source)
    assert src.target.endswith(":UserNet") and src.kwargs == {"width": 8} and src.bits == (4, 4)
    with torch.no_grad():
        x = to_tensor(tiny_images[:4])
        assert torch.equal(net(x), _user_net()(x))


def test_replay_runs_the_exports_against_the_module(exported, tiny_dataset, tiny_patches, tmp_path):
    from eval import fleet

    out, results = exported
    result = fleet.replay_on_devices(models=[str(results["onnx"].path), str(results["tflite"].path)],
                                     patches=str(tiny_patches), eval_subset=16, store_path=tmp_path / "s.sqlite",
                                     batch_size=8, warmup=1)
    runs = [(r["runtime"], r["bits"]) for r in result["runs"]]
    assert ("fakequant", "w4a4") in runs and ("onnxrt", "w4a4") in runs and ("litert-xnnpack", "w4a4") in runs, runs


@pytest.mark.parametrize("name, suffix", [("tflite", ".tflite"), ("onnx", ".onnx")])
def test_an_unquantized_layer_is_refused_in_one_line_before_writing(tiny_images, tmp_path, name, suffix):
    with pytest.raises(QadtrError) as e:
        export_module(name, _user_net(FloatConvNet), tmp_path / f"bad{suffix}", images=tiny_images)
    assert "\n" not in str(e.value) and ("pw" in str(e.value) or "float" in str(e.value)), str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_requests_are_refused_before_anything_runs(tiny_images, tmp_path):
    net = _user_net()
    with pytest.raises(QadtrError, match="has no option"):
        export_module("onnx", net, tmp_path / "a.onnx", images=tiny_images, headroom=False)
    with pytest.raises(QadtrError, match="uint8"):
        export_module("onnx", net, tmp_path / "a.onnx", images=tiny_images.astype(np.float32))
    with pytest.raises(QadtrError, match="not folded"):
        export_module("onnx", nn.Sequential(nn.BatchNorm2d(3)), tmp_path / "a.onnx", images=tiny_images)
    assert list(tmp_path.iterdir()) == []


def test_a_source_holding_other_weights_is_refused_before_exporting(exported, tiny_images, tmp_path):
    out, results = exported
    other = _user_net()
    with torch.no_grad():
        other.linear.bias.add_(1.0)  # other weights, same class
    with pytest.raises(QadtrError, match="holds another model"):
        export_module("onnx", other, tmp_path / "o.onnx", images=tiny_images, source=results["onnx"].record.source)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_or_unimportable_source_is_refused_in_one_line(exported, tmp_path):
    import shutil

    from qadtr._config import read_json, write_json
    from qadtr._module_ref import load_module

    out, results = exported
    bad = tmp_path / "bad.source"
    shutil.copytree(results["onnx"].record.source, bad)
    meta = read_json(bad / "model.json")
    meta["_data"]["target"] = "no_such_module_here:UserNet"
    write_json(bad / "model.json", meta)
    with pytest.raises(QadtrError, match=r"cannot import no_such_module_here:UserNet .*PYTHONPATH$"):
        load_module(bad)
    (bad / "model.pt").write_bytes(b"not the weights")
    with pytest.raises(QadtrError, match="is corrupt"):
        load_module(bad)
