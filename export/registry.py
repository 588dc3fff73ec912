"""Exporters by name (P7), the way devices/runtimes.py holds runtimes: a frozen row each, imported on first use.

    result = export("tflite", "zoo/resnet20_w4a4/model.pt", "w4.tflite", bits=4, images=images)
    result.path, result.record.passed, result.record.summary   # export._common.ExportResult, ExportRecord

Every exporter has one entry signature, `fn(checkpoint, out, *, bits, images=None, data_dir=None, limit=...,
**its own options) -> ExportResult`, proves its artifact before it is under its final name (the one failure
rule: export._common.publish) and writes its ExportRecord as `<artifact>.json`. `export.onnx.export_onnx`,
`export.trt.export_trt` and `export.tflite.export_tflite` are those functions under their own names. Nothing
here imports an exporter until it is used; `probe` only looks for the modules a row requires.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

from devices.runtimes import missing_modules
from qadtr._errors import QadtrError
from qadtr._registry import Registry, resolve


@dataclass(frozen=True)
class ExporterInfo:
    name: str  # what export.table and the record's `exporter` say: "onnx" | "trt" | "tflite"
    function: str  # "module:function" with the one entry signature, imported on first use
    suffix: str  # the artifact's suffix
    requires: tuple[str, ...]  # top-level modules that must be importable
    install: str  # how to get `requires`, quoted when one is missing
    version: int  # of what it writes and how it proves it: an artifact of another version is redone
    out: str = "file"  # "file": `out` is the artifact; "folder": `out` is a folder holding model<suffix> and more
    fp32_refusal: str = ""  # why a float checkpoint has no artifact here ("": exported as fp32 with float_model=True)
    table_row: str = ""  # "module:function": ExportRecord -> export.table's columns for it
    doc: str = ""

    def __post_init__(self) -> None:
        for attr in ("function", "table_row"):
            if ":" not in getattr(self, attr):
                raise ValueError(f"ExporterInfo {self.name!r}: {attr}={getattr(self, attr)!r}; write 'module:function'")
        if self.out not in ("file", "folder"):
            raise ValueError(f"ExporterInfo {self.name!r}: out={self.out!r}; write 'file' or 'folder'")
        if not self.suffix.startswith(".") or self.version < 1:
            raise ValueError(f"ExporterInfo {self.name!r}: suffix {self.suffix!r} and version {self.version}; "
                             "write a suffix such as '.onnx' and a version >= 1")


EXPORTERS: Registry[ExporterInfo] = Registry("exporter")
register_exporter = EXPORTERS.register  # a second row of one name: ValueError


_ONNX = {"requires": ("onnx", "onnxruntime", "brevitas"), "install": "pip install 'qadtr-edge[onnx]'"}
# 2: the proof runs at ORT_DISABLE_ALL and the deployed kernels are recorded apart (version 1 artifacts are redone)
register_exporter(ExporterInfo(
    "onnx", "export.onnx:export_onnx", ".onnx", **_ONNX, version=2, table_row="export.onnx:table_row",
    doc="ONNX QDQ for ONNX Runtime, proven node by node against Brevitas (`python -m export.onnx`)"))
# 2: builds on export.onnx's export and proof (version 2 there)
register_exporter(ExporterInfo(
    "trt", "export.trt:export_trt", ".onnx", **_ONNX, version=2, out="folder", table_row="export.trt:table_row",
    fp32_refusal="a float checkpoint has no INT8 TensorRT form here; use export.onnx --float",
    doc="TensorRT-bound QDQ ONNX + the device's engine build recipe (`python -m export.trt`)"))
# 2: the record saves the proof's verdict and the host fingerprint (version 1 artifacts are redone)
register_exporter(ExporterInfo(
    "tflite", "export.tflite:export_tflite", ".tflite", ("ai_edge_litert", "brevitas"),
    "pip install 'qadtr-edge[litert]'", version=2, table_row="export.tflite:table_row",
    fp32_refusal="the TFLite exporter writes full-integer models; export a quantized checkpoint",
    doc="full-integer TFLite for LiteRT, proven under XNNPACK and builtin kernels (`python -m export.tflite`)"))


def list_exporters() -> list[str]:
    return EXPORTERS.names()


def get_exporter(name: str) -> ExporterInfo:
    """The row of exporter `name`; QadtrError listing the known exporters for any other name."""
    return EXPORTERS.get(name)


def probe(name: str) -> str | None:
    """None when exporter `name` can run here, else what is missing and how to install it (nothing is imported)."""
    info = get_exporter(name)
    missing = missing_modules(info.requires)
    return f"{', '.join(missing)} not installed; {info.install}" if missing else None


def load(target: str):
    """The object a row names as 'module:attr' (qadtr._registry.resolve)."""
    return resolve(target)


def export(name: str, checkpoint: str | Path, out: str | Path, *, bits: int | None, images=None,
           data_dir: str | Path | None = None, limit: int | None = None, **options):
    """Export `checkpoint` at `bits` with exporter `name` to `out`, proven; its own `options` go through.

    Returns:
        export._common.ExportResult (truthy: a failed proof raises export._common.ProofFailed instead).

    Raises:
        QadtrError: unknown exporter, one not installed here, an option it does not take, or its own refusals.

    Example:
        >>> export("onnx", "zoo/resnet20_w4a4/model.pt", "/tmp/w4.onnx", bits=4, data_dir="../shared/data")
    """
    info = get_exporter(name)
    reason = probe(name)
    if reason is not None:
        raise QadtrError(f"exporter {name!r} is not available here: {reason}")
    fn = load(info.function)
    own = [p for p in inspect.signature(fn).parameters][2:]  # [0], [1]: the checkpoint and out path
    unknown = sorted(set(options) - set(own))
    if unknown:
        raise QadtrError(f"exporter {name!r} has no option {', '.join(unknown)}; it takes {', '.join(own)}")
    if limit is not None:
        options["limit"] = limit
    return fn(checkpoint, out, bits=bits, images=images, data_dir=data_dir, **options)
