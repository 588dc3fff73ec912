"""Fuzzing what a board sends the host (devices/_board_lines.py, and SshDevice._read around it): whatever the
lines, the only exception is an SshError of one printable line, and every Batch that comes out holds finite
logits of the rows and width the run expects."""

from __future__ import annotations

import base64
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import BatchStream, DeviceSpec
from devices import _board_lines as lines
from devices._ssh import SshError, clean
from devices.ssh import SshDevice

# fast enough for every run (a second or two per test), many enough to reach each check of each line type
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=12)
# board text: printable, control characters, terminal escapes, bidi overrides
TEXT = st.text(st.sampled_from(["a", " ", "\x1b", "[", "2", "J", "\x07", "\r", "\n", "\t", "\u202e", "\x00", "é",
                                "\x9b"]), max_size=12)


def _one_line(err: SshError) -> None:
    assert "\n" not in str(err) and str(err).isprintable(), str(err)


@st.composite
def batch_dicts(draw) -> dict:
    """Batch lines near the valid ones: small n and k, logits of about n*k float32 (finite, or with a NaN or an
    inf among them), and sometimes one field replaced by any JSON."""
    n, k = draw(st.integers(1, 4) | st.integers(-1, 6)), draw(st.integers(2, 4) | st.integers(-1, 6))
    count = max(draw(st.sampled_from([n * k] * 3 + [n * k + 1, n * k - 1])), 0)
    values = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=count, max_size=count))
    if values and draw(st.booleans()):
        values[draw(st.integers(0, count - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    d = {"type": "batch", "first": draw(st.sampled_from([0, 3, 4]) | st.integers(-3, 20)), "n": n, "k": k,
         "logits": base64.b64encode(np.array(values, "<f4").tobytes()).decode(),
         "seconds": draw(st.floats(0, 1) | st.floats() | JSON), "energy_j": draw(st.none() | st.floats() | JSON)}
    if draw(st.integers(0, 3)) == 0:
        d[draw(st.sampled_from(sorted(d)))] = draw(JSON)
    return d


OTHER = st.fixed_dictionaries({"type": st.sampled_from(lines.TYPES) | JSON}, optional={
    "agent": st.just(1) | JSON, "runner": TEXT | JSON, "kernels": TEXT | JSON, "feed": TEXT | JSON,
    "batch": st.integers(-1, 5) | JSON, "files": st.lists(st.sampled_from(["artifact", "images", "x"])) | JSON,
    "message": TEXT | JSON, "batches": JSON})
LINE = (batch_dicts() | OTHER).map(lambda d: json.dumps(d).encode()) | st.binary(max_size=40) \
    | st.sampled_from([b"[" * 5000, b"{" * 3000 + b"}" * 3000, b"\x1b[2J", b'{"type": "batch"'])


@SETTINGS
@given(batch_dicts(), st.integers(0, 9) | st.just("line's"),
       *[st.sampled_from([None, "line's"]) | st.integers(1, 5)] * 2)
def test_a_batch_line_is_a_finite_batch_or_one_line_error(d, expected, k, step):
    """expected row, k and step: the line's own (so that valid lines are common), none, or another."""
    raw = json.dumps(d).encode()
    if expected == "line's":
        expected = d["first"] if isinstance(d["first"], int) and 0 <= d["first"] < 10 else 3
    k, step = (d["k"] if k == "line's" else k), (d["n"] if step == "line's" else step)
    try:
        batch = lines.batch("pi", d, raw, expected=expected, total=10, k=k, step=step)
    except SshError as e:
        _one_line(e)
        return
    n, width = batch.logits.shape
    assert np.isfinite(batch.logits).all() and batch.logits.dtype == np.float32
    assert batch.first == expected and n == d["n"] and 1 <= n and expected + n <= 10 and width >= lines.MIN_CLASSES
    assert (k is None or width == k) and (step is None or n == min(step, 10 - expected))
    assert np.isfinite(batch.seconds) and batch.seconds >= 0 and (batch.energy_j is None or np.isfinite(batch.energy_j))


class FakeStream:
    """The lines of one agent run, as devices._ssh.Stream hands them out; the agent then exits 1."""

    def __init__(self, raw: list[bytes]):
        self.raw = list(raw)

    def line(self, timeout: float) -> bytes | None:
        return self.raw.pop(0) if self.raw else None

    def finish(self) -> int:
        return 1

    def stderr(self) -> str:
        return "\x1b[31mboom\n"


HELLO = {"type": "hello", "agent": 1, "runner": "null", "kernels": "none", "feed": "pixels", "batch": 3}


@st.composite
def runs(draw) -> tuple[list[bytes], int]:
    """The lines of an honest 10-row run at 3 images per batch (hello, 4 batches, done), then up to 3 edits: a line
    replaced by any line, one field of a line set to any JSON, a line dropped, or one inserted. Its k."""
    k = draw(st.integers(2, 4))
    out = [dict(HELLO)]
    for first in range(0, 10, 3):
        n = min(3, 10 - first)
        values = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=n * k, max_size=n * k))
        out.append({"type": "batch", "first": first, "n": n, "k": k, "seconds": 0.01, "energy_j": None,
                    "logits": base64.b64encode(np.array(values, "<f4").tobytes()).decode()})
    out.append({"type": "done", "batches": 4})
    raw = [json.dumps(d).encode() for d in out]
    for _ in range(draw(st.integers(0, 3))):
        i, how = draw(st.integers(0, len(raw) - 1)), draw(st.sampled_from(["replace", "field", "drop", "insert"]))
        if how == "field" and i < len(out):
            d = dict(out[i])
            d[draw(st.sampled_from(sorted(d)))] = draw(JSON | st.sampled_from([np.nan, np.inf, 1, 5, 0]))
            raw[i] = json.dumps(d).encode()
        elif how == "drop":
            del raw[i]
        else:
            raw[i:i + (how == "replace")] = [draw(LINE)]
    return raw, k


@SETTINGS
@given(runs(), st.sampled_from([None, "run's"]) | st.integers(2, 4))
def test_the_read_loop_yields_only_finite_contiguous_batches(run, k):
    raw, run_k = run
    k = run_k if k == "run's" else k
    device = SshDevice(DeviceSpec(name="pi", kind="ssh", host="10.1.2.3", power="none", runtimes=("null",)))
    known = {"step": None, "asked": 3, "k": k}
    got = []
    try:
        read = device._read(FakeStream(raw), BatchStream(lambda r: iter(())), "null", first=0, total=10, known=known)
        while True:
            got.append(next(read))
    except StopIteration as done:
        if done.value is None:  # "done": only after every row
            assert sum(len(b.logits) for b in got) == 10
        else:  # "need": before the hello, naming files
            assert not got and done.value and set(done.value) <= {"artifact", "images"}
    except SshError as e:
        _one_line(e)
    first = 0
    for b in got:
        assert b.first == first and np.isfinite(b.logits).all() and b.logits.shape == (min(3, 10 - first), k or run_k)
        first += len(b.logits)


ROW = st.fixed_dictionaries({}, optional={"available": st.booleans() | JSON, "version": TEXT | JSON,
                                          "reason": TEXT | JSON, "scope": TEXT | JSON})
INFO = st.fixed_dictionaries({"type": st.just("info") | JSON, "agent": st.just(1) | JSON}, optional={
    "runtimes": st.dictionaries(st.sampled_from(["onnxrt", "null", "\x1b[1m"]) | TEXT, ROW, max_size=3) | JSON,
    "meters": st.dictionaries(st.sampled_from(["rapl", "ina"]) | TEXT, ROW, max_size=3) | JSON,
    "cpu": TEXT | JSON, "board": TEXT | JSON, "os": TEXT | JSON, "machine": TEXT | JSON, "python": TEXT | JSON,
    "numpy": TEXT | JSON, "cores": st.integers(-1, 64) | JSON, "host": st.dictionaries(TEXT, JSON | TEXT) | JSON})


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, (dict, list)):
        for item in (value.items() if isinstance(value, dict) else enumerate(value)):
            yield from _strings(item[0] if isinstance(value, dict) else None)
            yield from _strings(item[1])


@SETTINGS
@given(INFO.map(json.dumps) | st.text(max_size=40), st.sampled_from(["", "Warning: banner\n"]))
def test_the_info_line_is_typed_and_clean_or_one_line_error(out, banner):
    try:
        info = lines.info("pi", banner + out, 1, python="python3")
    except SshError as e:
        _one_line(e)
        return
    assert all(s.isprintable() for s in _strings(info))
    for table in ("runtimes", "meters"):
        assert all(isinstance(row["available"], bool) for row in info[table].values())
    assert info["cores"] is None or (type(info["cores"]) is int and info["cores"] > 0)
    texts = ("cpu", "board", "os", "machine", "python", "numpy")
    assert all(info[f] is None or isinstance(info[f], str) for f in texts)


@SETTINGS
@given(st.text() | TEXT, st.integers(4, 50))
def test_clean_leaves_one_printable_line(text, limit):
    out = clean(text, limit)
    assert out.isprintable() and len(out) <= limit
    if text.isprintable() and len(text) <= limit:
        assert out == text  # ordinary text is left as it is
