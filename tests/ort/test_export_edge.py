"""The edge architectures through export.onnx and the integer executor: the tiny MobileNetV2 (depthwise convs,
linear bottlenecks, a residual add) and the tiny ResNet-18 layout at 2, 4 and 8 bits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from devices._intexec_onnx import OnnxIntGraph  # noqa: E402
from export import onnx as exp  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402

CONVS = {"test_mbv2": 10, "test_resnet18": 12}  # QuantConv2d per tiny model (resnet: stem + 8 + 3 projections)
DEPTHWISE = ["blocks.0.conv2", "blocks.1.conv2", "blocks.2.conv2"]  # test_mbv2's depthwise convs (16, 16, 24 ch)


@pytest.fixture(scope="module")
def checkpoints(edge_checkpoints) -> dict[str, Path]:
    return edge_checkpoints


@pytest.fixture(scope="module")
def exported(checkpoints, tiny_images, tmp_path_factory):
    """(arch, bits) -> ExportResult, proven by export.onnx."""
    out = tmp_path_factory.mktemp("edge_onnx")
    return {(arch, b): exp.export_onnx(ck, out / f"{arch}_w{b}.onnx", bits=b, images=tiny_images)
            for arch, ck in checkpoints.items() for b in (2, 4, 8)}


@pytest.fixture(scope="module")
def feed(tiny_images) -> np.ndarray:
    return tiny_images.transpose(0, 3, 1, 2).astype(np.float32) / 255  # (32, 3, 8, 8)


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("arch", sorted(CONVS))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_parity_passes_and_every_conv_runs_integer(exported, arch, bits):
    r = exported[(arch, bits)]
    assert r and r.record.passed and r.record.summary.startswith("PASSED")
    p = r.record.parity
    assert p["int_max_step_local"] <= exp.MAX_INT_STEP and p["logits"]["argmax_agree"] >= exp.MIN_ARGMAX_AGREE
    assert r.record.fusion["qlinearconv"] == CONVS[arch] and r.record.fusion["float_conv"] == 0
    assert p["deployed"]["explained_by"] is not None  # the integer executor reproduces ORT_ENABLE_ALL here


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_depthwise_convs_are_fused_and_recorded(exported, bits):
    r = exported[("test_mbv2", bits)]
    model = onnx.load(str(r.path))
    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in model.graph.node
              if n.op_type == "Conv"}
    depthwise = [n for n, g in groups.items() if g > 1]
    assert len(depthwise) == len(DEPTHWISE)
    for module in DEPTHWISE:  # every depthwise conv is among the integer nodes the record lists
        scope = "/{}/{}/".format(*module.rsplit(".", 1))  # TorchScript scope: /blocks/blocks.0/conv2/Conv_token_11
        assert any(scope in name for name in r.record.fusion["integer_nodes"]), module
    assert r.record.fusion["ops"].get("QLinearAdd", 0) == 1  # the residual add on integers too


@pytest.mark.parametrize("arch", sorted(CONVS))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_intexec_bit_exact_with_ort(exported, feed, arch, bits):
    from devices._host import ort_u8s8

    path = exported[(arch, bits)].path
    native = "single" if ort_u8s8() == "exact" else "single-u8s8sat"
    assert np.array_equal(OnnxIntGraph(path).run(feed, native)[0]["logits"], ort_logits(path, feed))


@pytest.mark.slow  # ORT under qemu-x86_64 -cpu Haswell (AVX2, no VNNI): 4-9 s each
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mbv2_bit_exact_with_ort_avx2_under_haswell(exported, feed, bits, tmp_path):
    from test_intexec_onnx import haswell_run

    path = exported[("test_mbv2", bits)].path
    (ref,) = haswell_run(path.read_bytes(), feed, tmp_path)
    assert np.array_equal(OnnxIntGraph(path).run(feed, "single-u8s8sat")[0]["logits"], ref)


@pytest.mark.parametrize("runtime", ["onnxrt", "intexec-single"])
def test_runners_take_the_mbv2_export(exported, tiny_images, runtime):
    from devices.runtimes import make_runner, prepare_feed, read_logits

    path = exported[("test_mbv2", 8)].path
    with make_runner(runtime, path) as r:
        logits = read_logits(r, r.infer(prepare_feed(r, tiny_images)))
    assert logits.shape == (len(tiny_images), 10)
    with make_runner("onnxrt", path) as r:  # the deployed kernels of this host: intexec-single reproduces them
        ref = read_logits(r, r.infer(prepare_feed(r, tiny_images)))
    assert np.array_equal(logits.argmax(1), ref.argmax(1))


def test_replay_on_devices_runs_the_mbv2_export(exported, tiny_dataset, tiny_patches, tmp_path):
    from eval import fleet

    path = exported[("test_mbv2", 8)].path
    result = fleet.replay_on_devices(models=[str(path)], patches=str(tiny_patches), eval_subset=16,
                                     store_path=tmp_path / "s.sqlite", batch_size=8, warmup=1)
    runs = {r["runtime"]: r for r in result["runs"]}
    assert {"fakequant", "onnxrt"} <= set(runs) and runs["onnxrt"]["bits"] == "w8a8"


@pytest.mark.parametrize("arch", sorted(CONVS))
def test_tflite_exports_or_refuses_in_one_line(checkpoints, tiny_images, tmp_path, arch):
    """Until the TFLite lowering is generic a model it can't lower is refused in one line naming its type, with
    nothing written; once it is (a parallel change to export/_tflite_graph.py), its proof must pass."""
    pytest.importorskip("ai_edge_litert")
    from export.tflite import export_tflite

    try:
        r = export_tflite(checkpoints[arch], tmp_path / "m.tflite", bits=8, images=tiny_images)
    except QadtrError as e:
        assert "\n" not in str(e) and ("MobileNetV2" in str(e) or "ResNet" in str(e)), str(e)
        assert list(tmp_path.iterdir()) == []
    else:
        assert r and r.record.passed



@pytest.mark.parametrize("bits", [2, 4, 8])
def test_trt_bound_mbv2_exports_its_zero_point_streams_exactly(checkpoints, tiny_images, bits, tmp_path):
    """The bottleneck streams (uint8 with a learned zero point near 128) have no symmetric int8 form: they are
    computed in float with their zero point (Div, Round, Add z, Clip, Sub z, Mul), no uint8 and no nonzero
    zero point is left for TensorRT's parser, and the proof (every integer tensor vs Brevitas) passes."""
    from onnx import numpy_helper

    from export.trt import export_trt

    r = export_trt(checkpoints["test_mbv2"], tmp_path / "trt", bits=bits, images=tiny_images)
    assert r.record.passed, r.record.summary
    model = onnx.load(str(tmp_path / "trt" / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    assert any(n.op_type == "Add" and n.name.endswith("_add_zp") and "q_out" in n.name for n in model.graph.node)
