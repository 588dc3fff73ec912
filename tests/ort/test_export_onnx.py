"""export.onnx on the tiny checkpoint: the artifact, its proof, its JSON and every refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from export import onnx as exp  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tiny_images, tmp_path_factory):
    """bits -> ExportResult, one export per bit width for the whole module."""
    out = tmp_path_factory.mktemp("onnx")
    return {b: exp.export_onnx(tiny_checkpoint, out / f"w{b}.onnx", bits=b, images=tiny_images) for b in (2, 4, 8)}


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory) -> Path:
    import torch

    from qadtr.checkpoint import save_checkpoint
    from qadtr.models import ModelConfig, create_model

    torch.manual_seed(0)
    cfg = ModelConfig("test_qnet")
    return save_checkpoint(create_model(cfg).eval(), tmp_path_factory.mktemp("float") / "model.pt", model_cfg=cfg)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_export_proves_itself(exported, bits):
    r = exported[bits]
    assert r and r.path.is_file() and r.info_path == r.path.with_suffix(".json")
    p = r.parity
    assert p.int_tensors == 7  # quant_input, relu, relu1, q_main, q_short, relu2, pool_quant
    assert p.int_max_step_local <= exp.MAX_INT_STEP
    assert p.int_mismatches_local <= exp.MAX_INT_MISMATCH * p.int_elements
    assert p.logits["argmax_agree"] == 1.0
    if bits == 2:
        assert p.exact  # ternary weights, 2-bit activations: ORT is bit-exact with Brevitas here
    assert r.info.fusion["qlinearconv"] == 3 and r.info.fusion["float_conv"] == 0  # all convs on int8 kernels


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_export_graph_is_quantized(exported, bits):
    model = onnx.load(str(exported[bits].path))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3 and all(producer[n.input[1]] == "DequantizeLinear" for n in convs)
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].dim_value  # dynamic batch


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_export_info_json(exported, tiny_checkpoint, bits):
    from qadtr._config import config_from_dict, sha256_file

    r = exported[bits]
    d = json.loads(r.info_path.read_text())
    assert d["_type"] == "ExportInfo" and d["_version"] == exp.ExportInfo.VERSION
    info = config_from_dict(d)
    assert info.artifact_sha256 == sha256_file(r.path) and info.bits == (bits, bits)
    assert info.source_sha256 == sha256_file(tiny_checkpoint)
    assert {"onnx", "onnxruntime", "brevitas", "torch"} <= set(info.versions)
    assert info.parity["passed"] is True


def test_float_export(float_checkpoint, tiny_images, tmp_path):
    r = exp.export_onnx(float_checkpoint, tmp_path / "fp32.onnx", bits=None, images=tiny_images, float_model=True)
    assert r and r.info.bits == () and r.info.graph.get("QuantizeLinear", 0) == 0
    assert r.parity.logits["argmax_agree"] == 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=3), r"has no w3a3; it was trained at w2a2, w4a4, w8a8"),
    (dict(bits=None), r"pass --bits \(the checkpoint has 2, 4, 8\)"),
    (dict(bits=None, float_model=True), r"is quantized .*drop --float"),
])
def test_unsupported_requests_write_nothing(tiny_checkpoint, tiny_images, tmp_path, kwargs, match):
    with pytest.raises(QadtrError, match=match):
        exp.export_onnx(tiny_checkpoint, tmp_path / "x.onnx", images=tiny_images, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_float_checkpoint_needs_float_flag(float_checkpoint, tiny_images, tmp_path):
    with pytest.raises(QadtrError, match=r"is a float model; pass --float"):
        exp.export_onnx(float_checkpoint, tmp_path / "x.onnx", bits=8, images=tiny_images)
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_raises_after_writing_json(tiny_checkpoint, tiny_images, tmp_path, monkeypatch):
    monkeypatch.setattr(exp, "MAX_INT_STEP", -1)  # any comparison now fails
    with pytest.raises(QadtrError, match=r"FAILED parity .*see .*x\.json"):
        exp.export_onnx(tiny_checkpoint, tmp_path / "x.onnx", bits=2, images=tiny_images)
    assert json.loads((tmp_path / "x.json").read_text())["_data"]["parity"]["passed"] is False


def test_checker_rejection_is_a_user_error(tiny_checkpoint, tiny_images, tmp_path, monkeypatch):
    def reject(*a, **k):
        raise onnx.checker.ValidationError("bad node\nmore")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(QadtrError, match=r"onnx.checker rejected the export: bad node$"):
        exp.export_onnx(tiny_checkpoint, tmp_path / "x.onnx", bits=2, images=tiny_images)
    assert not (tmp_path / "x.onnx").exists()


def _deploy(checkpoint, bits):
    from export._common import deploy_model

    return deploy_model(checkpoint, bits)[0]


def test_check_graph_rejects_float_layers(exported, tiny_checkpoint):
    from onnx import helper

    model = onnx.load(str(exported[4].path))
    net = _deploy(tiny_checkpoint, 4)
    bad = onnx.ModelProto.FromString(model.SerializeToString())
    conv = next(n for n in bad.graph.node if n.op_type == "Conv")
    conv.input[1] = "float_weight"
    with pytest.raises(QadtrError, match=r"weight 'float_weight' is float"):
        exp.check_graph(bad, net, quantized=True)
    bn = onnx.ModelProto.FromString(model.SerializeToString())
    bn.graph.node.append(helper.make_node("BatchNormalization", ["a", "b", "c", "d", "e"], ["f"]))
    with pytest.raises(QadtrError, match=r"BatchNormalization"):
        exp.check_graph(bn, net, quantized=True)
    with pytest.raises(QadtrError, match=r"fp32 export contains QuantizeLinear"):
        exp.check_graph(model, net, quantized=False)
    fewer = onnx.ModelProto.FromString(model.SerializeToString())
    fewer.graph.node.remove(next(n for n in fewer.graph.node if n.op_type == "QuantizeLinear"))
    with pytest.raises(QadtrError, match=r"op counts \(found, expected\) \{'QuantizeLinear': \(6, 7\)\}"):
        exp.check_graph(fewer, net, quantized=True)


def test_parity_pairing_errors(exported, tiny_checkpoint, tiny_images):
    net = _deploy(tiny_checkpoint, 4)
    with pytest.raises(QadtrError, match=r"cannot pair ONNX activations"):
        exp.check_parity(net, exported[4].path, tiny_images[:2], bits=4, tensors={"x": "nowhere.act_quant"})
    with pytest.raises(QadtrError, match=r"shape inference gave no type for nope"):
        exp._with_outputs(onnx.load(str(exported[4].path)), ["nope"])


def test_activation_names_map_to_modules(exported):
    modules = set(exp.activation_dq_inputs(onnx.load(str(exported[4].path))).values())
    assert {"quant_input.act_quant", "relu.act_quant", "layers.0.0.relu1.act_quant", "layers.0.0.q_main.act_quant",
            "layers.0.0.q_short.act_quant", "layers.0.0.relu2.act_quant", "pool_quant.act_quant"} == modules


def test_parity_images_sources(tiny_images):
    imgs, source = exp.parity_images(images=tiny_images, data_dir=None, dataset="cifar10")
    assert imgs.shape == tiny_images.shape and "given" in source
    imgs, source = exp.parity_images(images=None, data_dir=None, dataset="cifar10")
    assert imgs.shape == (64, 32, 32, 3) and "random" in source


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export.onnx", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_cli_bad_input_is_one_line(tmp_path):
    r = _cli(str(tmp_path / "missing.pt"), "--bits", "4", "--out", str(tmp_path / "x.onnx"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not found" in errors[0] and "FAILED |" in r.stderr


def test_cli_missing_bits(tiny_checkpoint, tmp_path):
    r = _cli(str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "pass --bits" in r.stderr


def test_cli_exports(tiny_checkpoint, tmp_path):
    r = _cli(str(tiny_checkpoint), "--bits", "2", "--out", str(tmp_path / "w2.onnx"))
    assert r.returncode == 0, r.stderr
    assert "PASSED parity" in r.stdout and r.stdout.strip().splitlines()[-1].startswith("PASSED |")
    assert (tmp_path / "w2.onnx").is_file() and (tmp_path / "w2.json").is_file()
