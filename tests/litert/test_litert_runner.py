"""devices.litert: the Runner contract, both kernel sets, eval.accuracy, and the MLPerf Tiny int8 model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from devices import RunnerError  # noqa: E402
from devices.litert import LiteRTRunner  # noqa: E402
from eval import accuracy as A  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MLPERF = ROOT.parent / "shared" / "models" / "mlperf-tiny-ic" / "pretrainedResnet_quant.tflite"
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def tiny_tflite(tiny_checkpoint, tmp_path_factory) -> Path:
    from export._common import deploy_model
    from export.tflite import build_tflite

    net, _ = deploy_model(tiny_checkpoint, 8)
    path = tmp_path_factory.mktemp("runner") / "tiny.tflite"
    path.write_bytes(build_tflite(net, 8, 8).data)
    return path


X = np.random.default_rng(0).random((3, 8, 8, 3), dtype=np.float32)  # (B, H, W, 3) pixels in [0, 1]


@pytest.mark.parametrize("kernels", ["xnnpack", "builtin"])
def test_contract(tiny_tflite, kernels):
    runner = LiteRTRunner(tiny_tflite, kernels=kernels, num_threads=1)
    assert runner.name == f"litert-{kernels}" and runner.kernels == kernels
    with pytest.raises(RunnerError, match=r"infer\(\) before activate\(\)"):
        runner.infer({"pixels": X})
    with runner:
        (spec,) = runner.input_spec()
        assert spec.name == "pixels" and spec.dtype == np.float32 and spec.shape == (None, 8, 8, 3)
        with pytest.raises(RunnerError, match=r"inputs \['image'\] do not match the model's \['pixels'\]"):
            runner.infer({"image": X})
        with pytest.raises(RunnerError, match="has dtype float64, expected float32"):
            runner.infer({"pixels": X.astype(np.float64)})
        with pytest.raises(RunnerError, match=r"has shape \(3, 8, 8\), expected"):
            runner.infer({"pixels": X[..., 0]})
        with pytest.raises(RunnerError, match="is a list, expected a numpy array"):
            runner.infer({"pixels": X.tolist()})
        out = runner.infer({"pixels": X})
        assert list(out) == ["logits"] and out["logits"].shape == (3, 10) and out["logits"].dtype == np.float32
        one = runner.infer({"pixels": X[:1]})["logits"]  # dynamic batch: resized on the fly
        np.testing.assert_array_equal(one, out["logits"][:1])
        assert runner.last_inference_time > 0 and len(runner.inference_times) == 2
        assert runner.input_quantization() == {"pixels": (0.0, 0)}
        if kernels == "xnnpack":
            with pytest.raises(RunnerError, match="'quant_input' is not materialised"):
                runner.tensor("quant_input")
        with pytest.raises(RunnerError, match="no tensor named 'nope'"):
            runner.tensor("nope")
    with LiteRTRunner(tiny_tflite, kernels="builtin", preserve_all_tensors=True) as r:
        r.infer({"pixels": X})
        assert r.tensor("quant_input").dtype == np.int8 and r.tensor("quant_input").shape == (3, 8, 8, 3)
    runner.deactivate()  # idempotent
    assert not runner.is_active
    with pytest.raises(RunnerError, match=r"input_spec\(\) before activate\(\)"):
        runner.input_spec()


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernels="gpu"), "unknown kernel set 'gpu'"),
    (dict(num_threads=0), "num_threads=0"),
])
def test_bad_arguments(tiny_tflite, kwargs, match):
    with pytest.raises(RunnerError, match=match):
        LiteRTRunner(tiny_tflite, **kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(RunnerError, match="not found"):
        LiteRTRunner(tmp_path / "none.tflite").activate()
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 8)
    runner = LiteRTRunner(junk)
    with pytest.raises(RunnerError, match="LiteRT cannot load"):
        runner.activate()
    assert not runner.is_active


# -- eval.accuracy -----------------------------------------------------------------------------------------
def test_accuracy_on_exported_model(tiny_tflite, tiny_images):
    labels = np.zeros(len(tiny_images), np.int64)
    with LiteRTRunner(tiny_tflite) as r:
        acc, fmt = A.accuracy(r, tiny_images, labels, batch_size=7)  # 32 = 4 x 7 + 4: a partial last batch
    assert fmt == "float01" and acc.n == 32 and 0 <= acc.k <= 32


@pytest.mark.parametrize("fmt, dtype, quant, match", [
    ("auto", np.dtype(np.int8), (0.5, 3), "cannot infer the input format"),
    ("int8-minus-128", np.dtype(np.float32), (0.0, 0), "makes int8 inputs but the model takes float32"),
    ("yuv", np.dtype(np.float32), (0.0, 0), "unknown input format 'yuv'"),
])
def test_resolve_format_errors(fmt, dtype, quant, match):
    with pytest.raises(QadtrError, match=match):
        A.resolve_format(fmt, dtype, quant)


def test_resolve_format_auto():
    assert A.resolve_format("auto", np.dtype(np.int8), (1.0, -128)) == "int8-minus-128"
    assert A.resolve_format("auto", np.dtype(np.float32), (0.0, 0)) == "float01"
    img = np.array([[[[0, 128, 255]]]], np.uint8)
    assert A._to_input(img, "int8-minus-128").tolist() == [[[[-128, 0, 127]]]]


def test_make_runner_errors(tmp_path):
    with pytest.raises(QadtrError, match="not found"):
        A.make_runner(tmp_path / "x.tflite", "xnnpack")
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"")
    with pytest.raises(QadtrError, match="unknown artifact type '.pt'"):
        A.make_runner(bad, "xnnpack")


def test_onnx_artifacts_go_to_the_onnx_runtime_runner(tmp_path):
    from devices.onnxrt import OnnxrtRunner

    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    assert isinstance(A.make_runner(path, "xnnpack"), OnnxrtRunner)


def test_accuracy_cli_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "eval.accuracy", str(tmp_path / "none.tflite"), "--data-dir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [f"error: {tmp_path / 'none.tflite'} not found"]


def test_imports_load_no_litert():
    code = ("import sys, devices.litert, export.tflite, eval.accuracy\n"
            "print(','.join(m for m in sys.modules if m.startswith('ai_edge_litert')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stderr + r.stdout


# -- the MLPerf Tiny int8 reference: a real integer model nobody in this project wrote --------------------------
@pytest.mark.data
@pytest.mark.skipif(not (MLPERF.is_file() and DATA.is_dir()), reason="../shared (MLPerf model, CIFAR-10) absent")
@pytest.mark.parametrize("kernels", ["xnnpack", "builtin"])
def test_mlperf_tiny_int8_on_200_cifar10_images(kernels, tmp_path):
    from qadtr.data import load_split, subset

    split = subset(load_split("cifar10", "test", DATA), 200)
    with LiteRTRunner(MLPERF, kernels=kernels) as r:
        (spec,) = r.input_spec()
        assert spec.dtype == np.int8 and spec.shape == (None, 32, 32, 3)  # dynamic batch
        acc, fmt = A.accuracy(r, split.images, split.labels)
    assert fmt == "int8-minus-128" and acc.n == 200
    assert acc.value > 0.65, acc  # ~75% on the JPEG copy (10k images: 75.4% xnnpack, 75.6% builtin)
