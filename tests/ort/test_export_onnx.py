"""export.onnx on the tiny checkpoint: the artifact, its proof, its JSON and every refusal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from devices.export_record import ExportRecord  # noqa: E402
from export import onnx as exp  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tiny_images, tmp_path_factory):
    """bits -> ExportResult (export._common), one export per bit width for the whole module."""
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
    assert r and r.path.is_file() and r.record_path == Path(f"{r.path}.json")
    p = r.record.parity
    assert p["int_tensors"] == 7  # quant_input, relu, relu1, q_main, q_short, relu2, pool_quant
    assert p["int_max_step_local"] <= exp.MAX_INT_STEP
    assert p["int_mismatches_local"] <= exp.MAX_INT_MISMATCH * p["int_elements"]
    assert p["logits"]["argmax_agree"] == 1.0
    if bits == 2:
        assert p["exact"]  # ternary weights, 2-bit activations: ORT is bit-exact with Brevitas here
    assert r.record.fusion["qlinearconv"] == 3 and r.record.fusion["float_conv"] == 0  # all convs on int8 kernels


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
    d = json.loads(r.record_path.read_text())
    assert d["_type"] == "ExportRecord" and d["_version"] == ExportRecord.VERSION
    info = config_from_dict(d)
    assert info == r.record and info.exporter == "onnx" and info.exporter_version == exp.EXPORTER_VERSION
    assert info.artifact_sha256 == sha256_file(r.path) and info.bits == (bits, bits)
    assert info.source_sha256 == sha256_file(tiny_checkpoint)
    assert {"onnx", "onnxruntime", "brevitas", "torch"} <= set(info.versions)
    assert info.parity["passed"] is True


def test_float_export(float_checkpoint, tiny_images, tmp_path):
    r = exp.export_onnx(float_checkpoint, tmp_path / "fp32.onnx", bits=None, images=tiny_images, float_model=True)
    assert r and r.record.bits is None and r.record.ops.get("QuantizeLinear", 0) == 0
    assert r.record.parity["logits"]["argmax_agree"] == 1.0


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


def test_parity_failure_rejects_the_artifact_with_its_record(tiny_checkpoint, tiny_images, tmp_path, monkeypatch):
    from export._common import ProofFailed, reusable

    monkeypatch.setattr(exp, "MAX_INT_STEP", -1)  # any comparison now fails
    with pytest.raises(ProofFailed, match=r"FAILED parity .*nothing written under x\.onnx: .*x\.onnx\.rejected\.json"):
        exp.export_onnx(tiny_checkpoint, tmp_path / "x.onnx", bits=2, images=tiny_images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx.rejected", "x.onnx.rejected.json"]
    saved = json.loads((tmp_path / "x.onnx.rejected.json").read_text())["_data"]
    assert saved["parity"]["passed"] is False and saved["passed"] is False and saved["artifact"] == "x.onnx.rejected"
    assert reusable(tmp_path / "x.onnx.rejected", saved["source_sha256"], exp.EXPORTER_VERSION) == \
        "its proof failed (or was never run)"  # a refused artifact is never reused
    assert reusable(tmp_path / "x.onnx", saved["source_sha256"], exp.EXPORTER_VERSION) == "no artifact and record yet"


def test_reuse_needs_same_source_version_file_and_a_passed_proof(exported, tiny_checkpoint, tmp_path):
    import shutil

    from export._common import reusable
    from qadtr._config import sha256_file

    src = sha256_file(tiny_checkpoint)
    art = tmp_path / "w4.onnx"
    shutil.copy(exported[4].path, art)
    shutil.copy(exported[4].record_path, f"{art}.json")
    assert reusable(art, src, exp.EXPORTER_VERSION) is None
    assert reusable(art, "0" * 64, exp.EXPORTER_VERSION) == "another source checkpoint"
    assert reusable(art, src, exp.EXPORTER_VERSION - 1).startswith("another exporter version")
    art.write_bytes(art.read_bytes() + b"\0")  # changed after export
    assert reusable(art, src, exp.EXPORTER_VERSION) == "another file (the artifact changed after export)"
    Path(f"{art}.json").write_text("[1]")
    assert reusable(art, src, exp.EXPORTER_VERSION) == "w4.onnx.json is unreadable"
    assert reusable(tmp_path / "none.onnx", src, exp.EXPORTER_VERSION) == "no artifact and record yet"


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_deployed_kernels_are_measured_apart_from_the_proof(exported, bits):
    """The proof runs node by node on every host; the fused kernels are a measured deployment fact, reproduced
    image by image by the executor semantics of this host's CPU (NOTES.md: VNNI sums exactly, AVX2 saturates)."""
    from devices._host import fingerprint
    from devices.intexec import expected_semantics

    r, p = exported[bits], exported[bits].record.parity
    dep, host = p["deployed"], fingerprint()
    assert dep["level"] == "all" and dep["int8_dot"] == host["int8_dot"] and dep["isa"] == host["isa"]
    assert r.record.host["isa"] == host["isa"] and r.record.passed is True
    assert r.record.proof.startswith("ORT_DISABLE_ALL") and r.record.exporter_version == exp.EXPORTER_VERSION
    want = expected_semantics("onnxrt", host)
    assert dep["explained_by"] == want, dep["summary"]
    assert f"{p['images']} of {p['images']} images bit-exact" in dep["summary"]
    if want == "single":  # one rounding, as Brevitas: the deployed integers are the proof's
        assert p["int_mismatches_fused"] == p["int_mismatches"]


@pytest.mark.parametrize("args, match", [
    (["--limit", "0"], r"--limit 0: must be >= 1"),
    (["--limit", "-1"], r"--limit -1: must be >= 1"),
    (["--out", "{tmp}"], r"is a folder; pass a file path"),
])
def test_cli_refuses_counts_and_outputs_before_exporting(args, match, tiny_checkpoint, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert exp.main([str(tiny_checkpoint), "--bits", "4", *args]) == 1
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err and not list(tmp_path.glob("*.onnx"))


@pytest.mark.slow  # an export in a fresh interpreter: ~13 s
def test_an_export_prints_no_brevitas_optional_kernel_warning(tiny_checkpoint, tiny_images, tmp_path):
    code = ("import sys, numpy as np\nfrom export.onnx import export_onnx\n"
            f"export_onnx({str(tiny_checkpoint)!r}, {str(tmp_path / 'w4.onnx')!r}, bits=4, "
            "images=np.load(sys.argv[1]))\n")
    np.save(tmp_path / "images.npy", tiny_images)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "images.npy")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "fast_hadamard_transform" not in r.stderr and (tmp_path / "w4.onnx").is_file()
