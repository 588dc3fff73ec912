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
from test_report import two_runs  # noqa: F401 (a fixture: an agreeing and a diverging run)

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
    assert n_img >= 10 and f'data-imgcheck="{n_img}:0"' in dom
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


def screenshot(page: Path, png: Path, tmp: Path, *, size: tuple[int, int] = (1400, 1000)) -> Path:
    """The first screen of `page` (a `size` viewport) as a PNG at `png`."""
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'shot'}",
                        "--hide-scrollbars", f"--window-size={size[0]},{size[1]}", f"--screenshot={png}",
                        page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and png.is_file(), r.stderr[-2000:]
    return png


def test_first_screen_shows_the_verdict(two_runs, tmp_path):
    """The verdict comes first and its colours are on the first screen; the screenshot is kept in tmp_path."""
    import numpy as np
    from PIL import Image

    store, doc = two_runs
    page = write_report(store, tmp_path / "report", compare=doc)
    dom, console = render(page, tmp_path)
    assert console == []
    first = re.search(r'<section id="(\w+)">', dom)[1]
    assert first == "verdict" and "Does the deployed model behave like its fake-quant simulation?" in dom
    png = screenshot(page, tmp_path / "report" / "first_screen.png", tmp_path)
    im = np.asarray(Image.open(png).convert("RGB")).astype(int)  # (H, W, 3)
    assert im.shape[:2] == (1000, 1400)

    def share(rgb: tuple[int, int, int]) -> float:
        return float((np.abs(im - np.array(rgb)).sum(-1) < 12).mean())

    # the cells' fill: green (#dafbe1) for the run that agrees, red (#ffebe9) for the one that diverges
    assert share((0xda, 0xfb, 0xe1)) > 0.005 and share((0xff, 0xeb, 0xe9)) > 0.005
