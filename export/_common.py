"""What every exporter starts from: a checkpoint's deployable network at one bit width."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from devices.runtimes import export_record, record_path
from qadtr._config import sha256_file
from qadtr._errors import QadtrError
from qadtr.checkpoint import Checkpoint, load_checkpoint
from qadtr.models import bits_of, deploy_net


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
        have = ", ".join(f"w{x}a{y}" for x, y in bits_of(model))
        raise QadtrError(f"{checkpoint} has no w{w}a{a}; it was trained at {have}: pass one of those to --bits")
    return deploy_net(model, w, a), ck


def reusable(artifact: str | Path, source_sha256: str, exporter_version: int) -> str | None:
    """None when `artifact` may be reused for `source_sha256`, else why not: its record is missing or unreadable,
    names another source, another exporter version, another file (sha256), or a proof that failed."""
    artifact = Path(artifact)
    record = record_path(artifact)
    if not artifact.is_file() or not record.is_file():
        return "no artifact and record yet"
    data = export_record(artifact)
    if data is None:
        return f"{record.name} is unreadable"
    checks = (("source_sha256", source_sha256, "another source checkpoint"),
              ("exporter_version", exporter_version, f"another exporter version ({data.get('exporter_version')})"),
              ("artifact_sha256", sha256_file(artifact), "another file (the artifact changed after export)"))
    for key, want, why in checks:
        if data.get(key) != want:
            return why
    proof = data.get("proof")
    if not isinstance(proof, dict) or proof.get("passed") is not True:
        return "its proof failed (or was never run)"
    return None
