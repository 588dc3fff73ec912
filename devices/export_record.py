"""The record every exporter writes beside its artifact (`<artifact>.json`, devices.runtimes.record_path).

    record = read_record(Path("w4.onnx.json"))    # ExportRecord, or QadtrError naming the fix
    record.source, record.bits, record.passed      # where it came from, at what width, whether its proof passed

It lives in `devices/` because runners read it (devices.fakequant finds an export's source checkpoint here,
devices.runtimes.accepts who made it); `export/` writes it (export._common.publish) and `eval/` reads it.
Records of the previous format (`ExportInfo` of export.onnx / export.trt, `TfliteExport` of export.tflite,
both version 2 or older) load as the same dataclass (`_from_previous`). Not a board file: boards get
artifacts without records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qadtr._config import check_value, config_from_dict, read_json, register_config
from qadtr._errors import QadtrError

PREVIOUS = {"ExportInfo": "", "TfliteExport": "tflite"}  # the previous record classes -> exporter ("": in the record)
_PREVIOUS_EXPORTER = {"export.onnx": "onnx", "export.trt": "trt", "export.tflite": "tflite"}  # module -> row name
_PREVIOUS_TFLITE_HEADROOM = True  # TfliteExport's default: weights scaled by 2^k per channel (export.tflite)


@register_config
@dataclass(frozen=True)
class ExportRecord:
    """What an exported artifact is, where it came from, and its proof: truthy when the proof passed."""

    VERSION = 1
    exporter: str  # the export.registry row that made it: "onnx" | "trt" | "tflite" ("" = unknown, a previous record)
    exporter_version: int  # the row's version; an artifact of another version is redone (export._common.reusable)
    artifact: str  # file name, beside this record (a rejected one ends in .rejected: export._common.publish)
    artifact_sha256: str
    artifact_bytes: int
    source: str  # the source checkpoint as given
    source_sha256: str  # of its model.pt
    arch: str
    bits: tuple[int, int] | None  # (w, a); None = an fp32 export
    passed: bool  # the proof's verdict; False: the artifact was rejected, never under its final name
    proof: str  # what ran the artifact for the proof
    reference: str  # what it was compared with
    summary: str  # the proof's numbers in one line
    images: int  # how many images the proof ran
    image_source: str  # which images
    parity: dict  # the proof's figures: export.onnx.Parity.to_dict(), or LiteRT kernel set -> figures (export.tflite)
    ops: dict = field(default_factory=dict)  # op counts of the artifact
    fusion: dict = field(default_factory=dict)  # what ORT_ENABLE_ALL runs integer vs float ({}: not an ONNX export)
    extra: dict = field(default_factory=dict)  # exporter-specific settings: opset, headroom, the TensorRT build
    versions: dict = field(default_factory=dict)  # the exporter stack: torch, brevitas, onnx, ai-edge-litert, ...
    host: dict = field(default_factory=dict)  # devices._host.fingerprint() of the machine that exported and proved it
    argv: tuple[str, ...] = ()  # the command that exported it

    def __post_init__(self) -> None:
        if self.bits is not None and (len(self.bits) != 2 or min(self.bits) < 1):
            raise ValueError(f"bits={self.bits!r}; write a (w, a) pair of positive widths, or None for fp32")
        for name in ("exporter_version", "artifact_bytes", "images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is negative; re-export the artifact")

    def __bool__(self) -> bool:
        return self.passed


def read_record(path: str | Path) -> ExportRecord:
    """The ExportRecord in `path` (an `<artifact>.json`), of this format or the previous one.

    Raises:
        QadtrError: missing, not JSON, or not an export record; the message names the file and the fix.
    """
    path = Path(path)
    artifact = path.name.removesuffix(".json")
    fix = f"re-export {artifact} (python -m export.<name>)"
    try:
        d = read_json(path)
        kind = d.get("_type") if isinstance(d, dict) else None
        if kind == "ExportRecord":
            return config_from_dict(d)
        previous = kind is None or kind in PREVIOUS
        if not isinstance(d, dict) or not isinstance(d.get("_data"), dict) or not previous:
            raise QadtrError(f"not an export record (_type {kind!r}, expected ExportRecord)")
        return _from_previous(d["_data"], PREVIOUS.get(kind, ""), path.parent)
    except (QadtrError, TypeError, ValueError) as e:
        raise QadtrError(f"{path}: {e}; {fix}") from None


def _from_previous(data: dict, exporter: str, folder: Path) -> ExportRecord:
    """An ExportRecord from the `_data` of an ExportInfo / TfliteExport (version 2 or older, or untyped)."""
    def get(key: str, tp, default):
        return check_value(data[key], tp, key) if key in data else default

    exporter = exporter or _PREVIOUS_EXPORTER.get(get("exporter", str, ""), "")
    artifact = Path(get("artifact", str, "")).name  # TfliteExport kept the path as given, ExportInfo the name
    proof = get("proof", dict, {})  # {"passed", "on", "reference", "images", "summary"}; absent: never run
    parity = get("parity", dict, {})
    size = (folder / artifact).stat().st_size if artifact and (folder / artifact).is_file() else 0
    bits = tuple(get("bits", tuple, ())) or None
    if exporter == "tflite":
        extra = {"headroom": get("headroom", bool, _PREVIOUS_TFLITE_HEADROOM), **{
            k: data[k] for k in ("input", "output") if k in data}}
        first = next(iter(parity.values()), {}) if parity else {}
        image_source = first.get("images", "") if isinstance(first, dict) else ""
        images = first.get("logits", {}).get("n", 0) if isinstance(first, dict) else 0
    else:
        extra = {"opset": get("opset", int, 13), **get("extra", dict, {})}
        image_source, images = parity.get("image_source", ""), parity.get("images", 0)
    return ExportRecord(
        exporter=exporter, exporter_version=get("exporter_version", int, 0), artifact=artifact,
        artifact_sha256=get("artifact_sha256", str, ""), artifact_bytes=get("artifact_bytes", int, size),
        source=get("source", str, ""), source_sha256=get("source_sha256", str, ""), arch=get("arch", str, ""),
        bits=None if bits is None else (int(bits[0]), int(bits[1])), passed=proof.get("passed") is True,
        proof=str(proof.get("on", "")), reference=str(proof.get("reference", "")),
        summary=str(proof.get("summary", "")),
        images=int(proof.get("images", images) or 0), image_source=str(image_source), parity=parity,
        ops=get("graph", dict, {}) or get("op_counts", dict, {}), fusion=get("fusion", dict, {}), extra=extra,
        versions=get("versions", dict, {}), host=get("host", dict, {}),
        argv=tuple(str(a) for a in get("argv", tuple, ())))
