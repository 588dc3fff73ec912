"""What every exporter shares: the deployable network it starts from, the one failure rule, reuse.

    net, ck = deploy_model(checkpoint, 4)                  # what is exported and what the proof compares with
    return publish(staged, out, failure=why, **fields)     # proven: under `out`; failed: `<out>.rejected`, raises

The one failure rule: an exporter writes and proves its artifact in a temporary folder; `publish` puts it
under its final name only when the proof passed. A failed one is kept as `<out>.rejected` (a suffix no runtime
takes) with its ExportRecord (passed: False) beside it as `<out>.rejected.json`, and ProofFailed (carrying
that record) is raised; nothing under the final name is written or changed. `reusable` never accepts an
artifact whose proof failed or whose exporter version differs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from devices._host import fingerprint
from devices.export_record import ExportRecord, read_record
from devices.runtimes import record_path
from export.registry import get_exporter
from qadtr._config import atomic_write_bytes, config_from_dict, config_to_dict, sha256_file, write_json
from qadtr._errors import QadtrError

REJECTED = ".rejected"  # appended to a failed artifact's name: no runtime takes the suffix, so none runs it


@dataclass(frozen=True)
class ExportResult:
    """What every exporter returns: the artifact, its record's path and the record (as saved and read back)."""

    path: Path
    record_path: Path
    record: ExportRecord

    def __bool__(self) -> bool:
        return self.record.passed


class ProofFailed(QadtrError):
    """An artifact whose proof failed: it is `<out>.rejected`, `record` (passed False) beside it."""

    def __init__(self, message: str, result: ExportResult):
        super().__init__(message)
        self.result = result
from qadtr.checkpoint import Checkpoint, load_checkpoint
from qadtr.models import bits_of, deploy_net
from qadtr.bits import bits_name


def deploy_model(checkpoint: str | Path, w: int, a: int | None = None) -> tuple[nn.Module, Checkpoint]:
    """Load `checkpoint` at (w, a) in deployable form (BatchNorm folded, int32 bias, eval mode).

    This network is what an exporter writes out and the fake-quant reference its parity check
    compares against.

    Raises:
        QadtrError: a float checkpoint, or bits the checkpoint was not trained at.
    """
    a = w if a is None else a
    model, ck = load_checkpoint(checkpoint)
    if not ck.model.is_quant:
        raise QadtrError(f"{checkpoint} is a float model; exporters take a quantized one "
                         "(train with `python -m qadtr.train --bits 8`)")
    if (w, a) not in bits_of(model):
        have = ", ".join(bits_name(b) for b in bits_of(model))
        raise QadtrError(f"{checkpoint} has no {bits_name((w, a))}; it was trained at {have}: pass one of those to --bits")
    return deploy_net(model, w, a), ck


def default_out(checkpoint: str | Path, bits: int | None, float_model: bool = False, *, suffix: str = ".onnx",
                act_bits: int | None = None) -> Path:
    """An exporter CLI's output when --out is absent: `./<arch>_w<W>a<A><suffix>` in the working directory, never
    beside the checkpoint (a zoo folder is the source tree's, not a scratch folder)."""
    from qadtr.checkpoint import read_checkpoint_info

    arch = read_checkpoint_info(checkpoint).model.arch
    a = bits if act_bits is None else act_bits
    return Path(f"{arch}_{'fp32' if float_model else bits_name((bits, a))}{suffix}")


def rejected_path(out: str | Path) -> Path:
    """Where the artifact of a failed proof for `out` is kept (its record: record_path of that)."""
    return Path(f"{out}{REJECTED}")


def publish(staged: Path, out: Path, *, failure: str, **fields) -> ExportResult:
    """Apply the one failure rule to `staged` (a proven-or-not artifact outside `out`'s folder), then write its record.

    Args:
        staged: the artifact as written and proven in a temporary folder.
        out: its final name.
        failure: what failed, for the error when `fields["passed"]` is False.
        fields: the ExportRecord's fields but the artifact's name, sha256 and size (taken from `staged` here).

    Raises:
        ProofFailed: the proof failed; the artifact is `<out>.rejected`, its record beside it, `out` untouched.
    """
    dest = out if fields["passed"] else rejected_path(out)
    data = staged.read_bytes()
    record = ExportRecord(artifact=dest.name, artifact_sha256=sha256_file(staged), artifact_bytes=len(data), **fields)
    saved = json.loads(json.dumps(config_to_dict(record)))  # what the file holds: lists, not tuples
    record = config_from_dict(saved)
    atomic_write_bytes(dest, data)  # the artifact first: until its record is written, no old record matches it
    write_json(record_path(dest), saved)
    result = ExportResult(dest, record_path(dest), record)
    if not record.passed:
        raise ProofFailed(f"{failure}; nothing written under {out.name}: the rejected artifact and its record are "
                          f"{dest} and {result.record_path.name}", result)
    for stale in (rejected_path(out), record_path(rejected_path(out))):  # an earlier failed attempt's leftovers
        stale.unlink(missing_ok=True)
    return result


@dataclass(frozen=True)
class Source:
    """What an export came from, as its record names it: a checkpoint, or a module source (export.module)."""

    path: str  # as given; the record's `source`
    sha256: str  # of its model.pt; the record's `source_sha256`
    arch: str  # the checkpoint's arch, or the module's class name
    dataset: str = "cifar10"  # where real proof images come from (--data-dir)


def checkpoint_source(checkpoint: str | Path, ck: Checkpoint) -> Source:
    return Source(str(checkpoint), ck.sha256, ck.model.arch, getattr(ck.train, "data", None) or "cifar10")


def record_fields(exporter: str, source: Source, bits: tuple[int, int] | None, **fields) -> dict:
    """The ExportRecord fields every exporter fills the same way (row, version, source, host, argv) plus `fields`."""
    return {"exporter": exporter, "exporter_version": get_exporter(exporter).version, "source": source.path,
            "source_sha256": source.sha256, "arch": source.arch, "bits": bits, "host": fingerprint(),
            "argv": tuple(sys.argv), **fields}


def reusable(artifact: str | Path, source_sha256: str, exporter_version: int) -> str | None:
    """None when `artifact` may be reused for `source_sha256`, else why not: its record is missing or unreadable,
    names another source, another exporter version, another file (sha256), or a proof that failed."""
    artifact = Path(artifact)
    path = record_path(artifact)
    if not artifact.is_file() or not path.is_file():
        return "no artifact and record yet"
    try:
        record = read_record(path)
    except QadtrError:
        return f"{path.name} is unreadable"
    if record.source_sha256 != source_sha256:
        return "another source checkpoint"
    if record.exporter_version != exporter_version:
        return f"another exporter version ({record.exporter_version})"
    if record.artifact_sha256 != sha256_file(artifact):
        return "another file (the artifact changed after export)"
    if not record.passed:
        return "its proof failed (or was never run)"
    return None
