"""OnnxrtRunner against the Runner contract (devices/_runner.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from devices import RunnerError  # noqa: E402
from devices.onnxrt import OnnxrtRunner  # noqa: E402


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory) -> Path:
    """input (B, 3, 8, 8) float32 -> Relu -> logits."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 8, 8])])
    path = tmp_path_factory.mktemp("relu") / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


X = np.linspace(-1, 1, 2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)


def test_infer_and_timing(relu_model):
    with OnnxrtRunner(relu_model, intra_op_threads=1) as r:
        assert r.is_active and r.last_inference_time is None
        out = r.infer({"input": X})
        assert set(out) == {"logits"} and np.array_equal(out["logits"], np.maximum(X, 0))
        assert r.last_inference_time > 0 and len(r.inference_times) == 1
        r.infer({"input": X[:1]})  # dynamic batch
        spec = r.input_spec()[0]
        assert spec.name == "input" and spec.dtype == np.float32 and spec.shape == (None, 3, 8, 8)
        assert r.kernels.startswith("ORT 1.") and "ORT_ENABLE_ALL" in r.kernels
    assert not r.is_active


@pytest.mark.parametrize("feed, match", [
    ({"x": X}, r"inputs \['x'\] do not match the model's \['input'\]"),
    ({"input": X, "extra": X}, r"do not match"),
    ({"input": X.astype(np.float64)}, r"input 'input' has dtype float64, expected float32"),
    ({"input": X[:, :2]}, r"has shape \(2, 2, 8, 8\), expected \(None, 3, 8, 8\)"),
    ({"input": X[0]}, r"has shape \(3, 8, 8\)"),
    ({"input": X.tolist()}, r"is a list, expected a numpy array"),
])
def test_bad_feeds(relu_model, feed, match):
    with OnnxrtRunner(relu_model) as r, pytest.raises(RunnerError, match=match):
        r.infer(feed)


def test_infer_before_activate(relu_model):
    r = OnnxrtRunner(relu_model)
    with pytest.raises(RunnerError, match=r"infer\(\) before activate\(\)"):
        r.infer({"input": X})
    with pytest.raises(RunnerError, match=r"input_spec\(\) before activate\(\)"):
        r.input_spec()
    with pytest.raises(RunnerError, match=r"output_names\(\) before activate\(\)"):
        r.output_names()


def test_deactivate_idempotent(relu_model):
    r = OnnxrtRunner(relu_model).activate()
    r.deactivate()
    r.deactivate()
    assert not r.is_active
    with pytest.raises(RunnerError, match="before activate"):
        r.infer({"input": X})
    r.activate()  # re-activation works
    assert r.output_names() == ["logits"]
    r.deactivate()


@pytest.mark.parametrize("kwargs, match", [
    (dict(graph_optimization="max"), r"graph_optimization='max'; choose one of"),
    (dict(intra_op_threads=0), r"intra_op_threads=0; use a positive count"),
])
def test_bad_options(relu_model, kwargs, match):
    with pytest.raises(RunnerError, match=match):
        OnnxrtRunner(relu_model, **kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(RunnerError, match=r"missing.onnx not found; export one"):
        OnnxrtRunner(tmp_path / "missing.onnx")


def test_unloadable_model(tmp_path):
    r = OnnxrtRunner(b"not an onnx model")
    with pytest.raises(RunnerError, match=r"ONNX Runtime cannot load the model"):
        r.activate()
    assert not r.is_active


def test_bytes_and_disabled_optimization(relu_model):
    with OnnxrtRunner(relu_model.read_bytes(), graph_optimization="disable") as r:
        assert "ORT_DISABLE_ALL" in r.kernels
        assert np.array_equal(r.infer({"input": X})["logits"], np.maximum(X, 0))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_kernels_report_fusion(tiny_checkpoint, tiny_images, tmp_path, bits):
    from export.onnx import export_qcdq
    from export._common import deploy_model
    from qadtr.predict import to_tensor

    net, _ = deploy_model(tiny_checkpoint, bits)
    export_qcdq(net, tmp_path / "m.onnx", to_tensor(tiny_images[:1]))
    with OnnxrtRunner(tmp_path / "m.onnx", optimized_model_path=tmp_path / "opt.onnx") as r:
        assert "(QLinearConv int8: 3 of 3 convs)" in r.kernels
        out = r.infer({"input": to_tensor(tiny_images[:4]).numpy()})["logits"]
    assert out.shape == (4, 10) and out.dtype == np.float32
