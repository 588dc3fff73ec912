"""What a board sends, checked once where it enters the host: devices/ssh.py reads every agent line through here.

A board is a computer someone else may control, so nothing it sends is believed: a line is a JSON object of a
known type or it is refused; a batch has the rows asked for (its first row, n equal to the batch size the run
uses, the last one short), k logits per image where k >= 2, the same k in every batch of the run and the k
the artifact's output has when the host can read it (`expected_layout`), exactly n*k float32 and only finite
values; the `info` line has the types the agent writes. Board text that reaches a message or a stored field
goes through `devices._ssh.clean` (no terminal escapes). Every refusal is one SshError naming what the board
sent and the fix; nothing of a refused line is stored.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from pathlib import Path

import numpy as np

from devices._device import Batch
from devices._ssh import SshError, clean

TYPES = ("need", "hello", "batch", "done", "error")  # the agent's line types (devices/agent.py)
MIN_CLASSES = 2  # a classifier's logits per image: with one, argmax is always 0 and every metric is void
# Bytes of the `info` answer: the agent's is ~3 KB (runtimes, meters, the host fingerprint); 64 KiB leaves room
# for many more meters and refuses a board that pads it (it is stored with every run).
INFO_MAX = 64 << 10
DEPTH = 4  # nesting kept in the board's host fingerprint (the agent's is 2 deep); deeper values become null
SUFFIX = re.compile(r"(?:\.[A-Za-z0-9_-]{1,16})?")  # of a blob name: the agent takes no other (devices/agent.py BLOB)
RESUME = "an agent of another version, or output corrupted on the way; re-run to resume"
COMPUTED = ("the board's model or runtime computed it: compare with --device local on the same artifact and check "
            "the board's runtime version; the batches before it are kept, re-run to resume")


def refuse(device: str, what: str, raw: bytes | str, *, fix: str = RESUME):
    raise SshError(f"device {device!r}: the board sent {what}: {raw[:120]!r}...; nothing of it was stored ({fix})")


def blob_name(sha256: str, suffix: str) -> str:
    """WORK/blobs/<name> of a file pushed to a board: the only form the agent opens, so the host never sends another."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256) or not SUFFIX.fullmatch(suffix):
        raise SshError(f"cannot push a file with suffix {clean(suffix, 40)!r} to a board (blobs are named "
                       "<sha256>.<letters, digits, '_' or '-'>): rename the artifact")
    return f"{sha256}{suffix}"


def message(device: str, raw: bytes, expected: int) -> dict:
    """One line -> a dict of a known type, or refused."""
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deeper than the parser goes
        msg = None
    if not isinstance(msg, dict) or msg.get("type") not in TYPES:
        refuse(device, f"a malformed line (expected the batch from sample {expected})", raw)
    return msg


def need(device: str, msg: dict, raw: bytes) -> list[str]:
    files = msg.get("files")
    if not isinstance(files, list) or not files or not all(f in ("artifact", "images") for f in files):
        refuse(device, "a need line naming no file (or another than artifact and images)", raw)
    return list(dict.fromkeys(files))


def error_text(msg: dict) -> str:
    text = msg.get("message")
    return clean(text, 500) if text is not None else "no message"


def hello(device: str, msg: dict, raw: bytes, *, version: int, step: int | None,
          asked: int) -> tuple[str, str, str, int]:
    """(runner, kernels, feed, images per batch) of a hello line; `step`: the batch the host knows the run uses
    (None: unknown, the agent's word is taken), `asked`: the batch size the job asked for (a hello without one)."""
    batch = msg.get("batch", step or asked)
    if msg.get("agent") != version or not all(isinstance(msg.get(f), str) for f in ("runner", "kernels", "feed")):
        refuse(device, "a hello line of another agent version", raw)
    if not _count(batch) or batch < 1 or (step is not None and batch != step):
        refuse(device, f"a hello line announcing {batch!r} images per batch"
               + (f" (the run asked for {step})" if step is not None else ""), raw)
    return clean(msg["runner"]), clean(msg["kernels"], 1000), clean(msg["feed"]), batch


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def batch(device: str, msg: dict, raw: bytes, *, expected: int, total: int, k: int | None,
          step: int | None = None) -> Batch:
    """A result line -> Batch, refused unless every field is right: rows from `expected`, n = min(step, rows left)
    when the batch is known, k >= 2 and equal to `k` when known, n*k float32, finite numbers."""
    ints = [msg.get(f) for f in ("first", "n", "k")]
    if not all(_count(v) for v in ints) or not isinstance(msg.get("logits"), str):
        refuse(device, "a batch line without integer first/n/k and base64 logits", raw)
    first, n, width = ints
    if first != expected:
        refuse(device, f"rows from {first}, expected {expected} (a skipped or repeated batch)", raw)
    if n < 1 or first + n > total or (step is not None and n != min(step, total - first)):
        refuse(device, f"a batch of {n}x{width} logits at row {first} (the replay has {total} rows"
               + (f", {step} per batch" if step is not None else "") + ")", raw)
    if width < MIN_CLASSES or (k is not None and width != k):
        refuse(device, f"a batch of {n}x{width} logits at row {first} (the replay has {total} rows"
               + (f", {k} logits per image" if k else f", a classifier has {MIN_CLASSES} or more logits per image")
               + ")", raw, fix=COMPUTED if k is None or width < MIN_CLASSES else RESUME)
    try:
        data = base64.b64decode(msg["logits"], validate=True)
    except (binascii.Error, ValueError):
        data = None
    if data is None or len(data) != 4 * n * width:
        refuse(device, f"{'undecodable' if data is None else f'{len(data)} bytes of'} logits for {n}x{width} float32 "
               "(short results)", raw)
    seconds, energy = msg.get("seconds"), msg.get("energy_j")
    numbers = [seconds] + ([] if energy is None else [energy])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers) \
            or seconds < 0:
        refuse(device, f"inference time {seconds!r} / energy {energy!r} (need finite numbers, time >= 0)", raw)
    logits = np.frombuffer(data, dtype="<f4").reshape(n, width).astype(np.float32)  # (n, K), native order
    bad = ~np.isfinite(logits)  # (n, K)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        refuse(device, f"{int(bad.sum())} NaN/inf logits in the {n}x{width} batch at row {first} (first at row "
               f"{first + row})", raw, fix=COMPUTED)
    return Batch(first, logits, float(seconds), None if energy is None else float(energy))


# -- the info line ------------------------------------------------------------------------------------------
def info(device: str, out: str, version: int, *, python: str) -> dict:
    """The agent's `info` answer -> a dict of the fields the host reads, typed and cleaned, or refused."""
    fix = (f"the agent this host pushes writes it; check what runs as python = {python!r} on the board (a "
           "modified board, or a startup file printing to stdout)")
    if len(out) > INFO_MAX:
        raise SshError(f"device {device!r}: the agent's info answer is {len(out)} bytes, over {INFO_MAX >> 10} KiB, "
                       f"refused; {fix}")
    try:
        got = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError, RecursionError):
        got = None
    if not isinstance(got, dict) or got.get("type") != "info" or got.get("agent") != version:
        raise SshError(f"device {device!r}: the agent answered {clean(out.strip(), 200)!r}, not its info line; "
                       f"is python = {python!r} a Python 3 on the board?")

    def bad(field: str, want: str):
        raise SshError(f"device {device!r}: the board's info line has {field} = {clean(repr(_at(got, field)), 80)}, "
                       f"not {want}; {fix}")

    kept = {"type": "info", "agent": version}
    for field in ("machine", "cpu", "board", "os", "python", "numpy"):
        if got.get(field) is not None and not isinstance(got[field], str):
            bad(field, "a string")
        kept[field] = None if got.get(field) is None else clean(got[field])
    if got.get("cores") is not None and not (_count(got["cores"]) and got["cores"] > 0):
        bad("cores", "a positive integer")
    kept["cores"] = got.get("cores")
    for table, texts in (("runtimes", ("version", "reason")), ("meters", ("scope", "reason"))):
        rows = got.get(table, {})
        if not isinstance(rows, dict):
            bad(table, "an object of name -> {available, ...}")
        kept[table] = {}
        for name, row in rows.items():
            if not isinstance(row, dict) or not isinstance(row.get("available"), bool):
                bad(f"{table}.{clean(name, 40)}", "an object with available = true or false")
            for f in texts:
                if row.get(f) is not None and not isinstance(row[f], str):
                    bad(f"{table}.{clean(name, 40)}.{f}", "a string")
            if clean(name, 40) == name:  # a name with control characters matches no runtime or meter: dropped
                kept[table][name] = {"available": row["available"],
                                     **{f: clean(row[f]) for f in texts if row.get(f) is not None}}
    if got.get("host") is not None and not isinstance(got["host"], dict):
        bad("host", "an object (the board's fingerprint)")
    kept["host"] = _plain(got.get("host") or {}, DEPTH)
    return kept


def _at(got: dict, field: str):
    for part in field.split("."):
        got = got.get(part) if isinstance(got, dict) else None
    return got


def _plain(value, depth: int):
    """A JSON value from the board with every string cleaned, non-finite numbers and deeper nesting made null."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dict, list)):
        if depth <= 0:
            return None
        if isinstance(value, dict):
            return {clean(k, 80): _plain(v, depth - 1) for k, v in value.items()}
        return [_plain(v, depth - 1) for v in value]
    return value  # None, a bool or an int


# -- what the host knows of a run ---------------------------------------------------------------------------
def expected_layout(runtime: str, artifact: Path, options: dict, *, batch_size: int) -> tuple[int | None, int | None]:
    """(images per batch line, logits per image) the board must send, each None where the host cannot know it.

    The null runner sends `num_classes` (default 10) at the batch asked for; an .onnx or .tflite artifact is read
    here (with onnx / ai_edge_litert when installed): its one output's dimensions after the batch give k
    (`devices.runtimes.read_logits` flattens them), a fixed input batch the step (the agent pads to it). A
    TensorRT engine's batch comes from its profile, so only k is known for it."""
    if runtime == "null":
        classes = options.get("num_classes", 10)
        return batch_size, classes if _count(classes) else None
    parse = {".onnx": _onnx, ".tflite": _tflite}.get(artifact.suffix)
    try:
        fixed, classes = parse(artifact) if parse else (None, None)
    except Exception:  # noqa: BLE001 - no parser here, or a file it cannot read: the board's first batch decides
        return None, None
    return (None if runtime == "tensorrt" or not parse else fixed or batch_size), classes


def _onnx(path: Path) -> tuple[int | None, int | None]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in graph.output[0].type.tensor_type.shape.dim]
    first = inputs[0].type.tensor_type.shape.dim[0] if len(inputs) == 1 else None
    fixed = first.dim_value if first is not None and first.HasField("dim_value") and first.dim_value > 0 else None
    one = len(graph.output) == 1  # several outputs: which one a runtime lists first is its own business
    return fixed, (int(np.prod(dims[1:])) if one and len(dims) >= 2 and min(dims[1:]) > 0 else None)


def _tflite(path: Path) -> tuple[int | None, int | None]:
    from ai_edge_litert import schema_py_generated as S

    graph = S.Model.GetRootAsModel(path.read_bytes(), 0).Subgraphs(0)

    def shape(index: int) -> list[int]:
        t = graph.Tensors(index)
        sig = t.ShapeSignatureAsNumpy()
        return [int(d) for d in (sig if not isinstance(sig, int) and len(sig) else t.ShapeAsNumpy())]

    out = shape(graph.Outputs(0))
    first = shape(graph.Inputs(0))[0] if graph.InputsLength() == 1 else -1
    one = graph.OutputsLength() == 1
    return (first if first > 0 else None), (int(np.prod(out[1:])) if one and len(out) >= 2 and min(out[1:]) > 0
                                            else None)
