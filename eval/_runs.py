"""Which runs of a result store go together: the model a run ran (source checkpoint, bits) and its reference run.

A deployed run (.onnx, .tflite, ...) is compared with the fake-quant run of the same source checkpoint,
bit width and replay file. What a run ran is read from its options (eval.on_device records `bits` and
`source_sha256`), else from the exporter's JSON beside the artifact, else from the checkpoint itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError
from qadtr.bits import bits_name

LSB_SOURCE = ("fake-quant logit grid: input scale of the last QuantLinear times its per-class weight scale, the "
              "step of its int32 accumulator (export.onnx.reference_run), from {checkpoint} at w{w}a{a}")


@functools.lru_cache(maxsize=8)
def deploy_cached(checkpoint: str, bits: tuple[int, int]):
    """The fake-quant deploy net of `checkpoint` at `bits`, loaded once per comparison session."""
    from export._common import deploy_model

    return deploy_model(checkpoint, *bits)[0]


def logit_lsb(checkpoint: str | Path, bits: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
    """(K,) one step of each class's logit on the fake-quant deploy net (any input: the grid is fixed)."""
    from export.onnx import reference_run

    return reference_run(deploy_cached(str(checkpoint), tuple(bits)), np.zeros((1, *hw, 3), np.uint8), 1)[2]


@dataclass(frozen=True)
class ModelKey:
    """What a run ran: the source checkpoint and bit width (a fake-quant run is paired by this)."""

    source_sha256: str
    bits: tuple[int, int] | None  # None = float
    checkpoint: str  # path of the source checkpoint ("" when not found)


def model_key(run) -> ModelKey:
    """Source checkpoint and bits of a store run, from its options, its export record or the checkpoint itself."""
    import re

    from devices.runtimes import export_record
    from qadtr.checkpoint import resolve

    art, opts = Path(run.artifact), run.options
    checkpoint, sha = "", opts.get("source_sha256", "")
    bits = tuple(opts["bits"]) if opts.get("bits") else None
    if art.suffix in (".onnx", ".tflite", ".engine"):
        record = export_record(art)
        if record is not None:
            sha, bits = sha or record.source_sha256, bits or record.bits
            src = Path(record.source)
            if record.source and not src.exists() and (art.parent / src.name).exists():
                src = art.parent / src.name  # moved together with the export (as devices.fakequant does)
            checkpoint = str(src) if record.source and src.exists() else ""
    else:
        pt = resolve(art)[0]
        checkpoint, sha = (str(pt) if pt.exists() else ""), sha or run.artifact_sha256
    if bits is None:
        found = re.search(r"w(\d+)a(\d+)", run.kernels or "")  # devices.fakequant: "..., deploy_net w4a4"
        bits = (int(found[1]), int(found[2])) if found else None
    return ModelKey(sha, None if bits is None else (int(bits[0]), int(bits[1])), checkpoint)


def pair_runs(runs: list, *, reference: str = "fakequant", only: Sequence[str] = ()) -> tuple[list, list[dict]]:
    """[(ref_run, run)] for every complete deployed run with a complete `reference` run of the same model,
    bits and replay (same device preferred), and [{run, runtime, reason}] for the runs left out."""
    chosen = [r for r in runs if r.runtime != reference]
    if only:
        chosen = [r for r in chosen if any(r.run_id.startswith(p) for p in only)]
        unknown = [p for p in only if not any(r.run_id.startswith(p) for r in runs)]
        if unknown:
            raise QadtrError(f"no runs {unknown} in the store; list them with "
                             "`python -m eval.on_device --store S --list-runs`")
    refs = [(model_key(r), r) for r in runs if r.runtime == reference and r.complete]
    pairs, skipped = [], []
    for run in chosen:
        if not run.complete:
            skipped.append({"run": run.run_id, "runtime": run.runtime, "reason": "incomplete; resume it first"})
            continue
        key = model_key(run)
        match = [r for k, r in refs if r.replay_sha256 == run.replay_sha256 and k.bits == key.bits
                 and k.source_sha256 == key.source_sha256]
        match.sort(key=lambda r: (r.device != run.device, r.created))
        if not match:
            skipped.append({"run": run.run_id, "runtime": run.runtime, "reason":
                            f"no complete {reference} run of the same model ({bits_name(key.bits)}) on replay "
                            f"{run.replay_sha256[:12]}; add {reference} to --runtimes"})
            continue
        pairs.append((match[0], run))
    return pairs, skipped




def output_step(artifact: str | Path) -> float | None:
    """One step of a .tflite's quantized logits (the input of its final DEQUANTIZE); None for other artifacts.

    `export.tflite` writes int16 logits with a step set by the worst-case |logit|, which can be coarser than
    the fake-quant accumulator grid: the deployed logits then differ by up to half this step even when
    every integer activation agrees.
    """
    path = Path(artifact)
    if path.suffix != ".tflite" or not path.is_file():
        return None
    try:
        from ai_edge_litert import schema_py_generated as S
    except ImportError:
        return None
    m = S.ModelT.InitFromObj(S.Model.GetRootAsModel(path.read_bytes(), 0))
    sg = m.subgraphs[0]
    codes = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    for op in sg.operators:
        kind = codes.get(m.operatorCodes[op.opcodeIndex].builtinCode)
        if list(op.outputs) == [sg.outputs[0]] and kind == "DEQUANTIZE":
            q = sg.tensors[op.inputs[0]].quantization
            return float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else None
    return None
