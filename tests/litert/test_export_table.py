"""export.table over a one-checkpoint zoo (the tiny switchable model): every exporter, every bit width."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

pytestmark = pytest.mark.slow  # every exporter at every bit width: ~20 s


def test_table_covers_every_exporter_and_bit_width(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from export.table import main

    monkeypatch.delenv("QADTR_DATA", raising=False)
    zoo = tmp_path / "zoo" / "tiny"
    zoo.mkdir(parents=True)
    for f in ("model.pt", "model.json"):
        shutil.copy(tiny_checkpoint.with_name(f), zoo / f)
    out = tmp_path / "out"
    assert main(["--zoo", str(tmp_path / "zoo"), "--out", str(out), "--limit", "16"]) == 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert {(r["bits"], r["exporter"]) for r in rows} == {(b, e) for b in ("w2a2", "w4a4", "w8a8")
                                                          for e in ("onnx", "trt", "tflite")}
    for r in rows:
        assert "figures" in r, r.get("error")
        for f in r["figures"].values():
            assert f["int_elements"] > 0 and 0.0 <= f["argmax_agree"] <= 1.0 and f["n"] > 0
    tfl = next(r for r in rows if r["exporter"] == "tflite" and r["bits"] == "w8a8")
    assert set(tfl["figures"]) == {"litert-xnnpack", "litert-builtin"}
    md = (out / "table.md").read_text()
    assert md.count("\n") == 2 + 3 * 2 + 3 * 2  # header + onnx/trt one line each, tflite two, per bit width
    capsys.readouterr()
    assert main(["--zoo", str(tmp_path / "zoo"), "--out", str(out), "--limit", "16"]) == 0
    assert ": ok" not in capsys.readouterr().out  # resumed: nothing re-exported
    assert main(["--zoo", str(tmp_path / "nothing"), "--out", str(out)]) == 1
