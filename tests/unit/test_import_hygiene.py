"""P13: importing the packages loads no device runtime, and `python -m export.trt --help` needs no TensorRT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorrt", "tensorrt_rtx", "ai_edge_litert", "tflite_runtime", "pycuda")
MODULES = ("qadtr", "export", "devices", "eval", "export.onnx", "export.trt", "devices.onnxrt")


def test_imports_load_no_runtime():
    code = (f"import sys\nfor m in {MODULES!r}:\n    __import__(m)\n"
            f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"heavy runtimes imported: {r.stdout.strip()}"


def test_trt_help_without_tensorrt():
    # A meta-path blocker makes every TensorRT import fail, as on a machine without it.
    code = ("import sys, runpy\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {HEAVY!r}: raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "sys.argv = ['export.trt', '--help']\n"
            "runpy.run_module('export.trt', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "--bits" in r.stdout and "INT4" in r.stdout and "--max-batch" in r.stdout


def test_trt_help_plain():
    r = subprocess.run([sys.executable, "-m", "export.trt", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "usage: python -m export.trt" in r.stdout
