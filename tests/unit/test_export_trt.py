"""export.trt: the TensorRT-bound rewrite of the tiny model, its ORT parity, build spec and refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export import onnx as onnx_export  # noqa: E402
from export import trt  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STUB = {"tool": None, "built": False, "engine_bytes": 0, "log": ["offline check skipped in this test"]}


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tiny_images, tmp_path_factory):
    """bits -> (ExportResult of export._common, out dir), with the TensorRT(-RTX) build stubbed out
    (see test_rtx_offline_build)."""
    out = tmp_path_factory.mktemp("trt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trt, "offline_check", lambda *a, **k: STUB)
        return {b: (trt.export_trt(tiny_checkpoint, out / f"w{b}", bits=b, images=tiny_images), out / f"w{b}")
                for b in (2, 4, 8)}


@pytest.fixture(scope="module")
def qdq(tiny_checkpoint, tiny_images, tmp_path_factory):
    """bits -> the plain Brevitas QCDQ model (before the TensorRT rewrite)."""
    from export._common import deploy_model
    from qadtr.predict import to_tensor

    out, models = tmp_path_factory.mktemp("qdq"), {}
    for b in (2, 4, 8):
        onnx_export.export_qcdq(deploy_model(tiny_checkpoint, b)[0], out / f"{b}.onnx", to_tensor(tiny_images[:1]))
        models[b] = onnx.load(str(out / f"{b}.onnx"))
    return models


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_trt_bound_graph(exported, bits):
    result, _ = exported[bits]
    model = onnx.load(str(result.path))
    trt.check_trt_bound(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            assert inits.get(node.input[0], np.zeros(1, np.int8)).dtype != np.int32  # no INT32 DQ left
        if node.op_type == "Clip":
            assert node.input[0] not in inits  # no Clip on weights
        if node.op_type == "Conv":
            assert inits[node.input[2]].dtype == np.float32 and producer[node.input[1]] == "DequantizeLinear"
    assert not [n for n, v in inits.items() if v.dtype == np.uint8]  # TensorRT has no uint8 Q/DQ
    w_max = {2: 1, 4: 7, 8: 127}[bits]  # narrow-range hidden weights, clip folded into the initializer
    hidden = [v for n, v in inits.items() if v.dtype == np.int8 and "layers.0" in n and v.ndim == 4]
    assert hidden and all(np.abs(v).max() <= w_max for v in hidden)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_trt_bound_parity_under_ort(exported, bits):
    result, _ = exported[bits]
    p = result.record.parity
    assert result and p["int_tensors"] == 7 and p["logits"]["argmax_agree"] == 1.0
    assert p["int_max_step_local"] <= onnx_export.MAX_INT_STEP
    emulated = result.record.extra["uint8_as_float"]
    assert len(emulated) == (4 if bits == 8 else 1)  # pooled features always; every ReLU output at a=8
    assert all("pool_quant" in n or "relu" in n for n in emulated)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_build_spec_files(exported, bits):
    _, out = exported[bits]
    spec = json.loads((out / "trt_build.json").read_text())
    assert spec["profile"] == {"min": [1, 3, 8, 8], "opt": [32, 3, 8, 8], "max": [128, 3, 8, 8]}
    assert "--minShapes=input:1x3x8x8" in spec["trtexec"] and "--int8" in spec["trtexec"]
    assert "build_serialized_network" in spec["python"] and "INT4" in spec["bits_note"]
    assert spec["offline_check"] == STUB
    sh = out / "build_engine.sh"
    assert sh.stat().st_mode & 0o111 and spec["trtexec"] in sh.read_text()
    info = json.loads((out / "model.onnx.json").read_text())
    assert info["_type"] == "ExportRecord" and info["_data"]["exporter"] == "trt"
    assert info["_data"]["extra"]["offline_check"] == STUB


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_original_qdq_is_rejected_by_check(qdq, bits):
    with pytest.raises(QadtrError, match=r"DequantizeLinear of an INT32 bias is left|Clip on a constant weight"):
        trt.check_trt_bound(qdq[bits])
    model, _ = trt.make_trt_bound(qdq[bits])
    no_bias = onnx.ModelProto.FromString(qdq[bits].SerializeToString())
    for node in [n for n in no_bias.graph.node if "bias_quant" in n.name]:
        no_bias.graph.node.remove(node)  # leaves the weight Clips
    with pytest.raises(QadtrError, match=r"Clip on a constant weight is left"):
        trt.check_trt_bound(no_bias)


def test_rtx_offline_build(exported, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="needs the trt-check extra: pip install -e \".[trt-check]\" "
                                                 "(make test installs it)")
    result, out = exported[4]
    spec = json.loads((out / "trt_build.json").read_text())
    check = trt.offline_check(result.path, spec, tmp_path)
    assert check["built"] and check["tool"].startswith("tensorrt_rtx") and check["engine_bytes"] > 0


def _fake_trt(parse_ok: bool):
    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return parse_ok

        def get_error(self, i):
            return "Unsupported ONNX op"

    config = SimpleNamespace(set_flag=lambda f: None, add_optimization_profile=lambda p: None)
    builder = SimpleNamespace(create_network=lambda flags: SimpleNamespace(num_layers=3, num_inputs=0),
                              create_builder_config=lambda: config,
                              create_optimization_profile=lambda: SimpleNamespace(set_shape=lambda *a: None),
                              build_serialized_network=lambda n, c: None)
    class Logger:
        WARNING = 0

        def __init__(self, level):
            pass

    return SimpleNamespace(__version__="0.0", Logger=Logger, Builder=lambda logger: builder, OnnxParser=Parser,
                           BuilderFlag=SimpleNamespace(INT8=0))


def test_build_failures_raise(tmp_path):
    spec = trt.build_spec("m.onnx", (3, 8, 8), (1, 2, 4))
    with pytest.raises(QadtrError, match=r"TensorRT-RTX parser rejected m.onnx: Unsupported ONNX op"):
        trt._build(_fake_trt(False), tmp_path / "m.onnx", spec, log=[], rtx=True)
    log: list[str] = []
    with pytest.raises(QadtrError, match=r"TensorRT returned no engine for m.onnx"):
        trt._build(_fake_trt(True), tmp_path / "m.onnx", spec, log=log, rtx=False)
    assert "profile" in log[0] and "INT8" in log[0]  # configuration logged before the build


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


F = helper.make_tensor_value_info


def test_rewrite_refusals():
    s = np.array(0.1, np.float32)
    bias = _model([helper.make_node("DequantizeLinear", ["b", "s"], ["y"], name="dq")],
                  [F("s", TensorProto.FLOAT, [])], [F("y", TensorProto.FLOAT, [2])], {"b": np.array([1, 2], np.int32)})
    with pytest.raises(QadtrError, match=r"dq: int32 DequantizeLinear with a non-constant scale"):
        trt.make_trt_bound(bias)
    clip = _model([helper.make_node("Clip", ["w", "lo", "hi"], ["c"], name="clip"),
                   helper.make_node("DequantizeLinear", ["c", "s"], ["y"])],
                  [F("lo", TensorProto.INT8, [])], [F("y", TensorProto.FLOAT, [2])],
                  {"w": np.array([1, -9], np.int8), "hi": np.array(7, np.int8), "s": s})
    with pytest.raises(QadtrError, match=r"clip: weight Clip without constant min and max"):
        trt.make_trt_bound(clip)


def _unsigned(zp: int, hi: int | None, consumer: str = "DequantizeLinear"):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q")]
    inits = {"s": np.array(0.1, np.float32), "zp": np.array(zp, np.uint8)}
    last = "q"
    if hi is not None:
        nodes.append(helper.make_node("Clip", ["q", "lo", "hi"], ["c"], name="clip"))
        inits.update(lo=np.array(0, np.uint8), hi=np.array(hi, np.uint8))
        last = "c"
    nodes.append(helper.make_node(consumer, [last, "s", "zp"] if consumer == "DequantizeLinear" else [last], ["y"]))
    out_type = TensorProto.FLOAT if consumer == "DequantizeLinear" else TensorProto.UINT8
    return _model(nodes, [F("x", TensorProto.FLOAT, [4])], [F("y", out_type, [4])], inits)


def _ort(model, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_unsigned_rewrites():
    model, emulated = trt.make_trt_bound(_unsigned(0, None))  # 8-bit unsigned -> float
    assert emulated == ["q"] and [n.op_type for n in model.graph.node] == ["Div", "Round", "Clip", "Mul"]
    model, emulated = trt.make_trt_bound(_unsigned(0, 15))  # 4-bit unsigned -> int8, same integers
    assert emulated == [] and all(i.data_type == TensorProto.INT8 for i in model.graph.initializer
                                  if i.name in ("zp", "lo", "hi"))
    for hi, ops in ((None, 255), (15, 15)):  # a zero point (any width): float with it, the same values as ORT's
        model, emulated = trt.make_trt_bound(_unsigned(3, hi))
        assert emulated == [("c" if hi else "q")]
        assert [n.op_type for n in model.graph.node] == ["Div", "Round", "Add", "Clip", "Sub", "Mul"]
        x = np.array([-1.0, 0.149, 0.25, 30.0], np.float32)  # below 0, a .5 tie after /0.1, a saturation at `hi`
        want = np.clip(np.round(x / np.float32(0.1)) + 3, 0, ops) - 3
        got = _ort(model, x)
        np.testing.assert_array_equal(got, (want * np.float32(0.1)).astype(np.float32))
        np.testing.assert_array_equal(_ort(_unsigned(3, hi), x), got)  # the uint8 original, run by ORT
    dq = helper.make_node("DequantizeLinear", ["k", "s", "zp"], ["y"])  # a zero point no Q rewrite reaches
    graph = helper.make_graph([dq], "g", [], [], [numpy_helper.from_array(np.array(3, np.uint8), "zp")])
    with pytest.raises(QadtrError, match=r"zp: uint8 zero point 3 != 0; TensorRT needs symmetric"):
        trt._uint8_to_int8_(graph)
    with pytest.raises(QadtrError, match=r"q: unsigned 8-bit tensor feeds \['Identity'\]"):
        trt.make_trt_bound(_unsigned(0, None, consumer="Identity"))
    graph = helper.make_graph([helper.make_node("Identity", ["big"], ["o"])], "g", [], [],
                              [numpy_helper.from_array(np.array([200], np.uint8), "big")])
    with pytest.raises(QadtrError, match=r"big: uint8 value 200 > 127 would saturate"):
        trt._uint8_to_int8_(graph)


def test_export_refusals(tiny_checkpoint, tiny_images, tmp_path, monkeypatch):
    with pytest.raises(QadtrError, match=r"batch range min/opt/max \(4, 2, 8\)"):
        trt.export_trt(tiny_checkpoint, tmp_path / "a", bits=4, batch=(4, 2, 8), images=tiny_images)
    with pytest.raises(QadtrError, match=r"has no w3a3"):
        trt.export_trt(tiny_checkpoint, tmp_path / "b", bits=3, images=tiny_images)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(trt, "offline_check", lambda *a, **k: STUB)
    monkeypatch.setattr(onnx_export, "MAX_INT_STEP", -1)
    with pytest.raises(QadtrError, match=r"TensorRT-bound ONNX under ORT: FAILED parity"):
        trt.export_trt(tiny_checkpoint, tmp_path / "c", bits=2, images=tiny_images)
    # the one failure rule: nothing under the final name, no build recipe for it, the record says rejected
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["model.onnx.rejected", "model.onnx.rejected.json"]
    assert json.loads((tmp_path / "c" / "model.onnx.rejected.json").read_text())["_data"]["passed"] is False


def test_cli_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export.trt", str(tmp_path / "missing.pt"), "--bits", "4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("error:")]) == 1 and "not found" in r.stderr


def test_offline_check_without_tensorrt(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` now raises ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    result, out = exported[4]
    check = trt.offline_check(result.path, json.loads((out / "trt_build.json").read_text()), tmp_path)
    assert check["built"] is False and check["tool"] is None
    assert "pip install tensorrt-rtx-cu12" in check["log"][-1]
