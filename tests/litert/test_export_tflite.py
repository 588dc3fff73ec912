"""export.tflite: parity per bit width under both LiteRT kernel sets, graph structure, every error branch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ai_edge_litert")

from export import _tflite_proof as P  # noqa: E402
from export import tflite as T  # noqa: E402
from export._common import deploy_model  # noqa: E402
from qadtr._config import config_from_dict, read_json, sha256_file  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tiny_images, tmp_path_factory):
    """bits -> (ExportRecord, path) for the tiny checkpoint at w2a2, w4a4, w8a8."""
    out = tmp_path_factory.mktemp("tflite")
    return {b: (T.export_tflite(tiny_checkpoint, out / f"w{b}.tflite", bits=b, images=tiny_images).record,
                out / f"w{b}.tflite") for b in (2, 4, 8)}


def _model(path: Path):
    from ai_edge_litert import schema_py_generated as S

    buf = path.read_bytes()
    return S, S.ModelT.InitFromObj(S.Model.GetRootAsModel(buf, 0))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("kernels", ["xnnpack", "builtin"])
def test_parity_per_bits_and_kernel_set(exports, bits, kernels):
    record, _ = exports[bits]
    p = record.parity[kernels]
    assert p["passed"] and p["debug_copy_identical"]
    assert p["logits"]["n"] == 32 and p["logits"]["argmax_agree"] >= P.MIN_ARGMAX[kernels]
    if kernels == "xnnpack":  # measured bit-exact: fp32 requantization, round half to even, like Brevitas
        assert p["act_mismatch"] == 0
        assert p["logits"]["max_abs_lsb"] <= 0.51  # only the int16 output rounding (half a step)
    assert set(p["per_tensor"]) == {"quant_input", "relu", "layers.0.0.relu1", "layers.0.0.q_main",
                                    "layers.0.0.q_short", "layers.0.0.relu2", "pool_quant"}


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_graph_structure(exports, bits):
    record, path = exports[bits]
    S, m = _model(path)
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(S.TensorType).items() if not k.startswith("_")}
    g = m.subgraphs[0]
    ops = [(names[m.operatorCodes[o.opcodeIndex].builtinCode], o) for o in g.operators]
    counts = {}
    for kind, _ in ops:
        counts[kind] = counts.get(kind, 0) + 1
    assert counts == record.ops
    clamps = 3 if bits < 8 else 0  # stem relu, relu1, relu2 clamp to 2^a - 1 below 8 bits
    assert counts == {"SUB": 1, "DIV": 1, "QUANTIZE": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 1, "ADD": 1,
                      "MEAN": 1, "FULLY_CONNECTED": 1, "DEQUANTIZE": 1, **({"MINIMUM": clamps} if clamps else {})}
    for kind, o in ops:
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            x, w, b = (g.tensors[i] for i in o.inputs)
            assert types[w.type] == "INT8" and w.buffer > 0  # constant int8 weights
            assert len(w.quantization.scale) == (w.shape[3] if kind == "DEPTHWISE_CONV_2D" else w.shape[0])
            assert types[b.type] == ("INT64" if kind == "FULLY_CONNECTED" else "INT32")
            assert types[x.type] == ("INT16" if kind == "FULLY_CONNECTED" else "INT8")  # no float conv
        float_ok = kind in ("SUB", "DIV", "QUANTIZE", "DEQUANTIZE")
        if not float_ok:
            assert all(types[g.tensors[i].type] != "FLOAT32" for i in [*o.inputs, *o.outputs]), kind
    assert [types[g.tensors[i].type] for i in [*g.inputs, *g.outputs]] == ["FLOAT32", "FLOAT32"]
    assert list(g.tensors[g.inputs[0]].shapeSignature) == [-1, 8, 8, 3]


def test_record_beside_artifact(exports, tiny_checkpoint):
    record, path = exports[4]
    from devices.export_record import ExportRecord
    from export._common import ExportResult

    saved = config_from_dict(read_json(Path(f"{path}.json")))
    assert saved == record and isinstance(saved, ExportRecord) and saved.exporter == "tflite"
    assert saved.artifact_sha256 == sha256_file(path) and saved.source_sha256 == sha256_file(tiny_checkpoint)
    assert saved.bits == (4, 4) and set(saved.parity) == {"xnnpack", "builtin"}
    assert {"exporter", "ai-edge-litert", "brevitas"} <= set(saved.versions)
    summary = T.describe(ExportResult(path, Path(f"{path}.json"), record))
    assert "w4a4" in summary and "builtin" in summary


def test_headroom_keeps_the_real_weights(tiny_checkpoint):
    net, _ = deploy_model(tiny_checkpoint, 2)
    plain = T.build_tflite(net, 8, 8, headroom=False)
    scaled = T.build_tflite(net, 8, 8, headroom=True)
    assert plain.op_counts == scaled.op_counts and plain.data != scaled.data
    # w * s is identical: checked end to end by XNNPACK parity on both
    images = np.random.default_rng(2).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    for built in (plain, scaled):
        debug = T.build_tflite(net, 8, 8, debug=True, headroom=built is scaled)
        assert P.prove(net, built, debug, images=images, kernels=("xnnpack",))["xnnpack"]["act_mismatch"] == 0


@pytest.mark.slow  # a real ResNet-20/8 exported and proven: ~13 s on 2 cores
@pytest.mark.parametrize("arch", ["resnet20", "resnet8"])
def test_shortcuts_option_a_and_projection(arch):
    """Stride-2 PAD + VALID convs, STRIDED_SLICE/PAD option-A shortcuts (resnet20), 1x1 projections (resnet8)."""
    from qadtr.models import ModelConfig, create_model, deploy_net
    from qadtr.models._calibrate import calibrate_

    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    model = create_model(ModelConfig(arch, bits=((4, 4),)))
    calibrate_(model, images, batch_size=8)
    net = deploy_net(model.eval(), 4, 4)
    built, debug = T.build_tflite(net, 8, 8), T.build_tflite(net, 8, 8, debug=True)
    assert built.op_counts["PAD"] >= 2 and (("STRIDED_SLICE" in built.op_counts) == (arch == "resnet20"))
    p = P.prove(net, built, debug, images=images, kernels=("xnnpack",))["xnnpack"]
    assert p["passed"] and p["act_mismatch"] == 0 and p["act_mismatch_local"] == 0 and p["act_max_step_local"] == 0


# -- the per-layer proof -------------------------------------------------------------------------------------
def test_fed_integers_replace_each_quantizer_output(tiny_checkpoint, tiny_images):
    """Fed its own integers the reference is unchanged; fed one layer shifted, that layer's own figure is still
    its computed one (recorded before the replacement) and the layers after it move."""
    from qadtr.predict import to_tensor

    net, _ = deploy_model(tiny_checkpoint, 8)
    built = T.build_tflite(net, 8, 8)
    pixels = to_tensor(tiny_images[:8])
    logits, ints = P.reference_ints(net, pixels, built.activations)
    again, fed = P.reference_ints(net, pixels, built.activations, feed=ints)
    assert np.array_equal(again, logits) and all(np.array_equal(fed[n], ints[n]) for n in ints)
    q = built.activations["relu"]
    shifted = dict(ints, relu=np.clip(ints["relu"] + 1, q.lo, q.hi))
    _, moved = P.reference_ints(net, pixels, built.activations, feed=shifted)
    assert np.array_equal(moved["relu"], ints["relu"])
    assert not np.array_equal(moved["layers.0.0.relu1"], ints["layers.0.0.relu1"])


def test_either_bound_passes_and_both_failing_fails(tiny_checkpoint, tiny_images, monkeypatch):
    net, _ = deploy_model(tiny_checkpoint, 8)
    built, debug = T.build_tflite(net, 8, 8), T.build_tflite(net, 8, 8, debug=True)

    def passed() -> bool:
        return P.prove(net, built, debug, images=tiny_images[:8], kernels=("xnnpack",))["xnnpack"]["passed"]

    monkeypatch.setitem(P.MAX_ACT_MISMATCH, "xnnpack", -1.0)  # end to end unreachable: per layer decides
    assert passed()
    monkeypatch.setitem(P.MAX_LOCAL_MISMATCH, "xnnpack", -1.0)  # both unreachable
    assert not passed()


# -- errors: each fails before anything is written ---------------------------------------------------------
@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    from qadtr.checkpoint import save_checkpoint
    from qadtr.models import ModelConfig, create_model

    cfg = ModelConfig("test_qnet")
    return save_checkpoint(create_model(cfg), tmp_path_factory.mktemp("float") / "model.pt", model_cfg=cfg)


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=16), "at most 8-bit.*use export.onnx"),
    (dict(bits=8, act_bits=12), "at most 8-bit"),
    (dict(bits=6), "has no w6a6; it was trained at w2a2, w4a4, w8a8"),
    (dict(bits=8, kernels=("gpu",)), "kernel sets"),
    (dict(bits=8, kernels=()), "kernel sets"),
    (dict(bits=8, images=np.zeros((2, 8, 8, 3), np.float32)), "images must be uint8"),
    (dict(bits=8, images=np.zeros((0, 8, 8, 3), np.uint8)), "images must be uint8"),
])
def test_bad_requests(tiny_checkpoint, tmp_path, kwargs, match):
    out = tmp_path / "m.tflite"
    with pytest.raises(QadtrError, match=match):
        T.export_tflite(tiny_checkpoint, out, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_suffix(tiny_checkpoint, tmp_path):
    with pytest.raises(QadtrError, match="must end in .tflite"):
        T.export_tflite(tiny_checkpoint, tmp_path / "m.onnx", bits=8)


def test_float_checkpoint(float_checkpoint, tmp_path):
    with pytest.raises(QadtrError, match="is a float model"):
        T.export_tflite(float_checkpoint, tmp_path / "m.tflite", bits=8)
    assert not (tmp_path / "m.tflite").exists()


def test_failed_parity_writes_nothing_under_the_final_name(tiny_checkpoint, tiny_images, tmp_path, monkeypatch):
    monkeypatch.setitem(P.MIN_ARGMAX, "xnnpack", 1.01)  # unreachable: forces the failure branch
    with pytest.raises(QadtrError, match=r"parity check failed \(xnnpack.*nothing written under m\.tflite"):
        T.export_tflite(tiny_checkpoint, tmp_path / "m.tflite", bits=8, images=tiny_images[:4])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite.rejected", "m.tflite.rejected.json"]
    rejected = config_from_dict(read_json(tmp_path / "m.tflite.rejected.json"))
    assert not rejected and rejected.artifact == "m.tflite.rejected" and not rejected.parity["xnnpack"]["passed"]


def test_unexportable_networks(tiny_checkpoint):
    import brevitas.nn as qnn

    from qadtr.checkpoint import load_checkpoint
    from qadtr.models import at_bits

    with pytest.raises(QadtrError, match="not a Linear; use export.onnx"):
        T.check_exportable(torch.nn.Linear(2, 2))
    model, _ = load_checkpoint(tiny_checkpoint)
    with pytest.raises(QadtrError, match="BatchNorm left unfolded"):
        T.check_exportable(at_bits(model, 8))
    net, _ = deploy_model(tiny_checkpoint, 8)
    net.relu = qnn.QuantHardTanh(max_val=1.0, min_val=-1.0, return_quant_tensor=True)
    with pytest.raises(QadtrError, match="relu: QuantHardTanh has no TFLite mapping; use export.onnx"):
        T.check_exportable(net)


@pytest.mark.slow  # three CLI subprocesses: ~20 s
def test_cli_success_and_bad_input(tiny_checkpoint, tmp_path):
    out = tmp_path / "m.tflite"
    r = subprocess.run([sys.executable, "-m", "export.tflite", str(tiny_checkpoint), "--bits", "8", "--out", str(out),
                        "--n-check", "8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASSED |") and out.is_file() and Path(f"{out}.json").is_file()
    r = subprocess.run([sys.executable, "-m", "export.tflite", str(tmp_path / "nope.pt"), "--bits", "8"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(errors) == 1 and "not found" in errors[0] and r.stderr.splitlines()[-1].startswith("FAILED |")
