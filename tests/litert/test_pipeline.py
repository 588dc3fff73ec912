"""The main job (`python -m eval.on_device` without --model) end to end on the tiny model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

pytestmark = pytest.mark.slow  # the main job end to end, twice: ~2 min on 2 cores


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
                               for kind in ("qdq.onnx", "qdq.onnx.json", "int8.tflite", "int8.tflite.json"))
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


def test_pipeline_picks_bit_widths_of_a_switchable_checkpoint(tiny_dataset, tiny_patches, tiny_checkpoint, tmp_path,
                                                             capsys):
    from eval.on_device import main
    from eval.pipeline import _pick

    assert _pick("zoo/x@2,w4a4") == (tiny_checkpoint.__class__("zoo/x"), ((2, 2), (4, 4)))
    assert _pick("zoo/x")[1] is None
    out = tmp_path / "main"
    args = ["--checkpoint", f"{tiny_checkpoint}@4", "--patches", str(tiny_patches), "--out", str(out),
            "--eval-subset", "16", "--runtimes", "fakequant,onnxrt"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "artifacts").glob("*.onnx")) == [f"{tiny_checkpoint.parent.name}_w4a4_qdq.onnx"]
    metrics = json.loads((out / "on_device.json").read_text())
    assert {r["model"] for r in metrics["runs"] if r["runtime"] == "fakequant"} == {"model.pt@w4a4"}
    capsys.readouterr()
    assert main(["--checkpoint", f"{tiny_checkpoint}@5", "--out", str(out)]) == 1
    assert "has no w5a5; it has w2a2, w4a4, w8a8" in capsys.readouterr().err
