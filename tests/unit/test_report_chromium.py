"""The HTML report renders in headless Chromium (Debian's `chromium`): DOM with every section, every image
decoded, no console error. A copy of the page gets a probe script (the report itself has none) that, on
load, writes how many <img> elements decoded into a body attribute read back from --dump-dom."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from eval.report import SECTIONS, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                                "(Debian: apt-get install -y chromium)")
PROBE = ("<script>window.addEventListener('load', () => {const imgs = [...document.images];"
         "const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
         "document.body.dataset.imgcheck = imgs.length + ':' + bad;});</script>")


def render(page: Path, tmp: Path) -> tuple[str, list[str]]:
    """(DOM after load, console lines) of `page` with the probe added."""
    probed = tmp / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}",
                        "--enable-logging=stderr", "--v=0", "--dump-dom", probed.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, [line for line in r.stderr.splitlines() if ":CONSOLE" in line]


def test_report_renders(report_inputs, tmp_path):
    store, cmp, transfer, pdir = report_inputs
    page = write_report(store, tmp_path / "report", compare=cmp, transfer=transfer, patches=pdir)
    n_img = page.read_text().count("<img ")
    dom, console = render(page, tmp_path)
    assert console == []
    assert "<title>qadtr-edge report: fake-quant vs deployed</title>" in dom
    for sid, title in SECTIONS:
        assert re.search(f'<section id="{sid}"><h2>{title}</h2>', dom), sid
    assert n_img >= 9 and f'data-imgcheck="{n_img}:0"' in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # escaped text stays text in the DOM


def test_probe_catches_broken_images_and_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><head><title>bad</title></head><body>'
                    '<img alt="ok" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42'
                    'mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="><img alt="broken" src="data:image/png;base64,AAAA">'
                    "<script>undefinedFunction();</script></body></html>")
    dom, console = render(page, tmp_path)
    assert 'data-imgcheck="2:1"' in dom
    assert any("undefinedFunction" in line for line in console)
