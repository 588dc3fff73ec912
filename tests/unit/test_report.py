"""eval.report from a synthetic store: every section, inline PNGs that decode, every file-borne string escaped."""

from __future__ import annotations

import base64
import html
import io
import json
import re

from eval.compare import TIE_RULE
from eval.report import SECTIONS, main, write_report


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_sections_images_and_json(report_inputs, tmp_path):
    from PIL import Image

    store, cmp, transfer, pdir = report_inputs
    path = write_report(store, tmp_path / "report", compare=cmp, transfer=transfer, patches=pdir)
    page = path.read_text()
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>{title}</h2>' in page
    assert "<title>qadtr-edge report" in page and html.escape(TIE_RULE.split(";")[0]) in page and "Tango" in page
    imgs = _images(page)
    # ASR plot, latency plot, 1 transfer heatmap, 3 patches x (patch file + patched replay image)
    assert len(imgs) == page.count("<img ") == 2 + 1 + 3 * 2
    for data in imgs:
        im = Image.open(io.BytesIO(data))
        im.load()
        assert im.format == "PNG" and im.width > 0
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    onnx = next(r for r in data["runs"] if r["runtime"] == "onnxrt")
    assert onnx["emulated"] and len(onnx["asr"]) == 3 and onnx["bits"] == [4, 4] and len(onnx["latency_ms"]) > 1
    assert onnx["energy_j"] is None and "(emulated)" in page and "not measured" in page
    assert page.count("<tr><td>") >= 3 + 3  # disagreement rows and more


def test_every_file_string_escaped(report_inputs, tmp_path):
    store, cmp, transfer, pdir = report_inputs
    page = write_report(store, tmp_path / "r", compare=cmp, transfer=transfer, patches=pdir).read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page and "<i>evil" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6  # device, artifact, method, layer, reason, ...
    assert "&lt;img src=x onerror=alert(2)&gt;" in page and "&lt;/pre&gt;&lt;script&gt;alert(3)" in page
    assert "&lt;i&gt;evil&amp;&quot;$q&#x27;.npz" in page


def test_without_compare_or_patches(report_inputs, tmp_path):
    store, *_ = report_inputs
    page = write_report(store, tmp_path / "bare").read_text()
    assert all(f'id="{sid}"' in page for sid, _ in SECTIONS)
    assert "No comparisons" in page and "No transfer.json given" in page
    assert "patch file not given" in page and len(_images(page)) == 2 + 3  # plots + patched replay images


def test_cli(report_inputs, tmp_path, capsys):
    store, cmp, _, _ = report_inputs
    (tmp_path / "compare.json").write_text(json.dumps(cmp))
    assert main(["--store", str(store), "--out", str(tmp_path / "c"), "--compare", str(tmp_path / "compare.json")]) == 0
    assert "PASSED" in capsys.readouterr().out and (tmp_path / "c" / "report.html").is_file()
    assert main(["--store", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "missing.sqlite not found" in err and "FAILED" in err and "Traceback" not in err
