"""The README's "Bring your own model" example, extracted and run as written: it cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARK = "<!-- byo-example -->"  # the README comment right above the example's code block


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(re.escape(MARK) + r"\n```python\n(.*?)\n```", text, re.S)
    assert found, f"README.md has no python block after {MARK}"
    return found[1]


def test_the_readme_example_is_there_and_compiles():
    compile(readme_example(), "README.md:byo-example", "exec")


@pytest.mark.slow  # trains a few steps, exports and proves three formats, replays: about a minute on 2 cores
@pytest.mark.data
def test_the_readme_example_runs(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from qadtr.data import load_split

    try:
        load_split("cifar10", "test")
    except Exception as e:  # noqa: BLE001 - no data here: the example cannot run
        pytest.skip(f"CIFAR-10 not available ({str(e)[:80]})")
    script = tmp_path / "byo.py"
    script.write_text(readme_example())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("onnx", "tflite", "trt"):
        assert f"{name}: " in done.stdout and (tmp_path / "out").is_dir()
    assert "fakequant" in done.stdout and "onnxrt" in done.stdout and "litert" in done.stdout, done.stdout[-2000:]
