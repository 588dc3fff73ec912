"""export.table.table_md: each architecture's sizes are relative to its own float ONNX, never another's."""

from __future__ import annotations

from export.table import table_md


def _row(name: str, arch: str, bits: str, exporter: str, size: int) -> dict:
    fig = {"int_off_per_layer": 0, "int_off_end_to_end": 0, "int_elements": 10, "argmax_agree": 1.0, "ties": 0,
           "max_dlogit_lsb": 0.0, "passed": True}
    return {"checkpoint": name, "arch": arch, "bits": bits, "exporter": exporter, "bytes": size,
            "figures": {"onnxrt": fig}}


def test_sizes_are_relative_to_the_float_onnx_of_the_same_architecture():
    rows = [_row("a_float", "resnet20/10", "float", "onnx", 1000 * 1024),
            _row("b_float", "mobilenetv2_cifar/10", "float", "onnx", 400 * 1024),
            _row("a_w4", "resnet20/10", "w4a4", "onnx", 250 * 1024),
            _row("b_w4", "mobilenetv2_cifar/10", "w4a4", "onnx", 100 * 1024),
            _row("c_w4", "resnet20/43", "w4a4", "onnx", 300 * 1024)]  # no float model of its own: no ratio
    lines = {line.split(" | ")[0].strip("| "): line for line in table_md(rows).splitlines()[2:]}
    assert "| 250 (0.25x) |" in lines["a_w4"] and "| 100 (0.25x) |" in lines["b_w4"]
    assert "| 300 |" in lines["c_w4"] and "x)" not in lines["c_w4"]
