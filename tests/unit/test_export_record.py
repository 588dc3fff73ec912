"""The exporter contract: the registry, the one record (and records of the previous format), the failure rule."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest

from devices.export_record import ExportRecord, read_record
from devices.runtimes import export_record, record_path
from export._common import ProofFailed, publish, rejected_path, reusable
from export.registry import EXPORTERS, export, get_exporter, list_exporters, load
from qadtr._config import config_from_dict, config_to_dict, sha256_file
from qadtr._errors import QadtrError

FIXTURES = Path(__file__).with_name("fixtures")
ENTRY = ("bits", "images", "data_dir", "limit")  # the keyword-only arguments every exporter takes


@pytest.mark.parametrize("name", list_exporters())
def test_every_exporter_row_creates_with_the_one_signature(name):
    info = get_exporter(name)
    fn = load(info.function)
    params = list(inspect.signature(fn).parameters.values())
    assert [p.kind for p in params[:2]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2  # checkpoint, out
    assert [p.name for p in params[2:6]] == list(ENTRY)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
    assert callable(load(info.table_row)) and info.version >= 1
    assert fn.__module__ == f"export.{name}"  # one file per exporter, named as its row


def test_versions_live_in_the_registry():
    from export import onnx, tflite

    assert onnx.EXPORTER_VERSION == EXPORTERS["onnx"].version
    assert tflite.EXPORTER_VERSION == EXPORTERS["tflite"].version  # also written into every .tflite's description


def test_unknown_exporter_and_option_are_one_line():
    with pytest.raises(QadtrError, match=r"^unknown exporter 'tvm'; known: onnx, trt, tflite$"):
        export("tvm", "m.pt", "m.x", bits=4)
    with pytest.raises(QadtrError, match=r"^unknown exporter 'tvm'; known: onnx, trt, tflite$"):
        get_exporter("tvm")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    with pytest.raises(QadtrError, match=r"^exporter 'onnx' has no option kernels; it takes .*float_model$"):
        export("onnx", "m.pt", "m.onnx", bits=4, kernels=("xnnpack",))


def _record(**kw) -> ExportRecord:
    fields = dict(exporter="onnx", exporter_version=2, artifact="w4.onnx", artifact_sha256="a" * 64, artifact_bytes=3,
                  source="zoo/x/model.pt", source_sha256="b" * 64, arch="resnet20", bits=(4, 4), passed=True,
                  proof="ORT_DISABLE_ALL", reference="Brevitas fake-quant deploy net", summary="PASSED parity",
                  images=32, image_source="32 given images",
                  parity={"logits": {"worst_index": [0, 1], "argmax_agree": 1.0}, "deployed": {}},
                  ops={"Conv": 3}, fusion={"qlinearconv": 3}, extra={"opset": 13}, versions={"onnx": "1.17"},
                  host={"isa": "avx2"}, argv=("python", "-m", "export.onnx"))
    return ExportRecord(**{**fields, **kw})


def test_record_round_trip(tmp_path):
    from qadtr._config import write_json

    record = _record()
    assert config_from_dict(json.loads(json.dumps(config_to_dict(record)))) == record
    write_json(tmp_path / "w4.onnx.json", config_to_dict(record))
    assert read_record(tmp_path / "w4.onnx.json") == record
    (tmp_path / "w4.onnx").write_bytes(b"abc")
    assert export_record(tmp_path / "w4.onnx") == record  # the devices view is the same dataclass
    assert record and not _record(passed=False) and _record(bits=None).bits is None
    with pytest.raises(ValueError, match=r"bits=\(4,\); write a \(w, a\) pair"):
        _record(bits=(4,))
    with pytest.raises(ValueError, match=r"artifact_bytes=-1 is negative; re-export"):
        _record(artifact_bytes=-1)


def test_unreadable_record_is_one_line_naming_the_fix(tmp_path):
    path = tmp_path / "w4.onnx.json"
    for text in ("[1]", json.dumps({"_type": "ReplayInfo", "_version": 1, "_data": {}}), "{"):
        path.write_text(text)
        with pytest.raises(QadtrError, match=r"w4\.onnx\.json: .*; re-export w4\.onnx \(python -m export\.<name>\)$"):
            read_record(path)
        assert export_record(tmp_path / "w4.onnx") is None  # the devices view: no usable record


@pytest.mark.parametrize("fixture, exporter, bits, extra", [
    ("previous_export_info.onnx.json", "onnx", (4, 4), {"opset": 13}),
    ("previous_tflite_export.tflite.json", "tflite", (2, 2), {"headroom": True}),
])
def test_records_of_the_previous_format_load(fixture, exporter, bits, extra, tmp_path):
    """An ExportInfo / TfliteExport version 2 file, as export.onnx / export.tflite wrote them before the contract."""
    old = json.loads((FIXTURES / fixture).read_text())["_data"]
    art = tmp_path / f"m.{exporter}"  # m.onnx / m.tflite, its record m.onnx.json / m.tflite.json
    shutil.copy(FIXTURES / fixture, record_path(art))
    record = read_record(record_path(art))
    assert isinstance(record, ExportRecord) and export_record(art) == record
    assert (record.exporter, record.exporter_version, record.bits) == (exporter, 2, bits)
    assert record.source == old["source"] and record.source_sha256 == old["source_sha256"]
    assert record.artifact == Path(old["artifact"]).name and record.artifact_sha256 == old["artifact_sha256"]
    assert record.passed is True and record.summary == old["proof"]["summary"] and record.parity == old["parity"]
    assert record.images == 32 and record.image_source == "32 given images" and extra.items() <= record.extra.items()
    assert record.ops == old.get("graph", old.get("op_counts")) and record.versions == old["versions"]
    art.write_bytes(b"not the exported file")
    assert reusable(art, old["source_sha256"], 2) == "another file (the artifact changed after export)"
    assert reusable(art, old["source_sha256"], 3) == "another exporter version (2)"  # issue 12: never reused


def test_the_one_failure_rule(tmp_path):
    """A failed proof: nothing under the final name (an earlier artifact there is left as it was), the rejected
    file and its record (passed False) beside it; a passed one: the artifact, its record, no rejected leftovers."""
    fields = {k: v for k, v in vars(_record()).items() if not k.startswith("artifact")}
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    out.write_bytes(b"earlier, proven")
    staged = tmp_path / "staged.onnx"
    staged.write_bytes(b"new bytes")
    failed = r"^logits off; nothing written under m\.onnx: .*m\.onnx\.rejected\.json$"
    with pytest.raises(ProofFailed, match=failed) as e:
        publish(staged, out, failure="logits off", **{**fields, "passed": False})
    assert out.read_bytes() == b"earlier, proven" and not record_path(out).exists()
    rejected = e.value.result
    assert rejected.path == rejected_path(out) and rejected.path.read_bytes() == b"new bytes"
    assert read_record(rejected.record_path) == rejected.record and not rejected.record
    assert rejected.record.artifact == "m.onnx.rejected" and rejected.record.artifact_sha256 == sha256_file(staged)
    result = publish(staged, out, failure="unused", **fields)
    assert result and result.path == out and out.read_bytes() == b"new bytes"
    assert read_record(record_path(out)) == result.record and result.record.artifact == "m.onnx"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.json"]  # the rejected pair is gone
    assert reusable(out, fields["source_sha256"], fields["exporter_version"]) is None
