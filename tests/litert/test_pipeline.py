"""The main job (`python -m eval.on_device` without --model) end to end on the tiny model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")


def test_pipeline_exports_replays_compares_and_reports(tiny_dataset, tiny_patches, tiny_checkpoint, tmp_path, capsys):
    from eval.on_device import main

    out = tmp_path / "main"
    args = ["--checkpoint", str(tiny_checkpoint), "--patches", str(tiny_patches), "--out", str(out),
            "--eval-subset", "16"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"report: {out / 'report' / 'report.html'}" in text
    artifacts = sorted(p.name for p in (out / "artifacts").iterdir())
    name = tiny_checkpoint.parent.name
    assert artifacts == sorted(f"{name}_w{b}a{b}_{kind}" for b in (2, 4, 8)
                               for kind in ("qdq.onnx", "qdq.json", "int8.tflite", "int8.json"))
    compare = json.loads((out / "report" / "compare.json").read_text())
    outs = sorted(c["out"] for c in compare["comparisons"])
    assert outs == sorted(["onnxrt", "litert-xnnpack", "litert-builtin"] * 3)  # x 3 bit widths
    assert "tie_rule" in compare and "gate" in compare
    html = (out / "report" / "report.html").read_text()
    assert "fake-quant vs deployed" in html.lower()
    metrics = json.loads((out / "on_device.json").read_text())
    assert {r["runtime"] for r in metrics["runs"]} == {"fakequant", "onnxrt", "litert-xnnpack", "litert-builtin"}
    assert main(args) == 0  # a re-run reuses every artifact and every stored run
    text = capsys.readouterr().out
    assert text.count("reusing") == 6 and "exported" not in text
