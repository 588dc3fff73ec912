"""The board side of a query session: `agent.py serve JOB.json` (devices/agent.py), the loop after the runner is up.

The host (devices/_remote_runner.py) sends one request line on the agent's stdin and waits for its answer line on
stdout, so a query attack's thousands of batches travel through one SSH session:

    -> {"type": "infer", "id": k, "feeds": {name: {"dtype": "float32", "shape": [B, ...], "data": base64}}}
    <- {"type": "logits", "id": k, "n": B, "k": K, "logits": base64 of B*K float32 little-endian, "seconds": s}
    -> {"type": "close"}
    <- {"type": "done", "requests": m}                   exit 0

`data` is the array's bytes, C order, little-endian; every feed is checked against the runner's input spec
(names, dtype, rank, fixed dimensions, byte count) before `runner.infer`, which checks it again. A request that
is not one of these is answered {"type": "error"} and exit 2; the logits are `devices.runtimes.read_logits` of
the runner's first output (float32, a quantized output dequantized), as in a replay's batch lines. stdin closing
means the host went away: while the runner loads the agent exits at once (code 4), and once it serves it answers
the requests already read, then exits 4. Standard library and numpy only, Python >= 3.8: this file is pushed
to boards with the rest of the runner layer (devices/ssh.py BOARD_FILES).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import queue
import threading
from typing import TYPE_CHECKING, Callable

from devices.runtimes import read_logits
from qadtr._errors import QadtrError

if TYPE_CHECKING:
    from devices._runner import Runner

# Bytes of one request line. The host splits a larger batch into requests of at most ~48 MiB of array bytes
# (devices/_remote_runner.py), which base64 makes 64 MiB; a longer line is a host of another version, refused.
MAX_REQUEST = 64 << 20
READ = 1 << 16  # bytes per read of stdin (the raw fd: a thread holding sys.stdin's lock aborts shutdown)
CLOSE_PEEK = 1024  # a line this short may be the close request, which ends reading (the host then closes stdin)
EOF, TOO_LONG = "eof", "too long"  # what the reader queues besides request lines


class RequestError(QadtrError):
    """A request the agent cannot answer; printed as {"type": "error"} and exit 2."""


class Requests:
    """Request lines read from stdin by a thread, started before the runner loads (so a host that goes away
    meanwhile ends the agent at once, exit 4); `serving` is set once the hello line is out."""

    def __init__(self, fd: int = 0):
        self._fd, self.serving = fd, False
        self._queue: queue.Queue = queue.Queue(maxsize=4)  # the host waits for each answer: one line at a time
        threading.Thread(target=self._read, name="requests", daemon=True).start()

    def _read(self) -> None:
        buf = bytearray()
        while True:
            try:
                block = os.read(self._fd, READ)
            except OSError:
                block = b""
            if not block:
                if not self.serving:
                    os._exit(4)  # the host went away while the runner loaded: no orphan keeps the board busy
                self._queue.put(EOF)
                return
            start = len(buf)
            buf += block
            end = buf.find(b"\n", start)  # only the new bytes are searched: a long line is scanned once
            while end >= 0:
                line = bytes(buf[:end])
                del buf[:end + 1]
                self._queue.put(line)
                if len(line) < CLOSE_PEEK and _is_close(line):
                    return  # nothing follows a close: the host closes stdin, which must not read as a lost host
                end = buf.find(b"\n")  # what is left is the rest of one block
            if len(buf) > MAX_REQUEST:
                self._queue.put(TOO_LONG)
                return

    def next(self):
        """The next request line (bytes), EOF or TOO_LONG."""
        return self._queue.get()


def _is_close(line: bytes) -> bool:
    try:
        msg = json.loads(line)
    except ValueError:
        return False
    return isinstance(msg, dict) and msg.get("type") == "close"


def input_specs(runner: Runner) -> list[dict]:
    """The runner's inputs as the hello line carries them: name, shape (None = any), dtype name."""
    return [{"name": s.name, "shape": [None if d is None else int(d) for d in s.shape], "dtype": s.dtype.name}
            for s in runner.input_spec()]


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def decode_feeds(feeds, specs: list) -> dict:
    """A request's `feeds` -> {name: array}, refused unless every input of `specs` (TensorSpec) is there with its
    dtype, rank, fixed dimensions and exactly the bytes its shape holds."""
    import numpy as np

    names = [s.name for s in specs]
    if not isinstance(feeds, dict) or sorted(feeds) != sorted(names):
        got = sorted(map(str, feeds))[:8] if isinstance(feeds, dict) else type(feeds).__name__
        raise RequestError(f"a request feeds {got}, the model's inputs are {names}")
    out = {}
    for spec in specs:
        entry = feeds[spec.name]
        entry = entry if isinstance(entry, dict) else {}
        dtype, shape, data = entry.get("dtype"), entry.get("shape"), entry.get("data")
        if dtype != spec.dtype.name:
            raise RequestError(f"input {spec.name!r} sent as dtype {str(dtype)[:40]!r}, the model takes {spec.dtype}")
        want = tuple(spec.shape)
        if not (isinstance(shape, list) and len(shape) == len(want) and all(_count(d) and d >= 0 for d in shape)
                and all(w is None or w == d for w, d in zip(want, shape))):
            raise RequestError(f"input {spec.name!r} sent with shape {str(shape)[:80]}, the model takes {list(want)} "
                               "(None = any)")
        try:
            raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        except (binascii.Error, ValueError):
            raw = None
        size = int(np.prod(shape)) * spec.dtype.itemsize
        if raw is None or len(raw) != size:
            raise RequestError(f"input {spec.name!r}: {'undecodable data' if raw is None else f'{len(raw)} bytes'}, "
                               f"its shape {shape} of {spec.dtype} holds {size}")
        out[spec.name] = np.frombuffer(raw, spec.dtype.newbyteorder("<")).astype(spec.dtype).reshape(shape)
    return out


def _answer(runner: Runner, msg: dict, specs: list) -> dict:
    """The logits line of one infer request."""
    import numpy as np

    if not _count(msg.get("id")):
        raise RequestError(f"an infer request with id {str(msg.get('id'))[:40]}, not an integer")
    out = runner.infer(decode_feeds(msg.get("feeds"), specs))  # the Runner contract's timed call
    logits = read_logits(runner, out)  # (n, K) float32
    return {"type": "logits", "id": msg["id"], "n": int(logits.shape[0]), "k": int(logits.shape[1]),
            "seconds": runner.last_inference_time,
            "logits": base64.b64encode(np.ascontiguousarray(logits, "<f4").tobytes()).decode()}


def serve_loop(runner: Runner, requests: Requests, *, emit: Callable[[dict], None], hello: dict) -> int:
    """Emit `hello`, then answer each request until close (exit 0) or the host's EOF (exit 4); RequestError for a
    request that is not one (main prints it as the error line, exit 2)."""
    specs = runner.input_spec()
    requests.serving = True  # before hello: from here a lost host is answered in order, then exit 4
    emit(hello)
    count = 0
    while True:
        raw = requests.next()
        if raw == EOF:
            runner.deactivate()
            return 4
        if raw == TOO_LONG:
            raise RequestError(f"a request line over {MAX_REQUEST >> 20} MiB: the host splits larger batches; is it "
                               "the host that pushed this agent?")
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError):
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "close":
            runner.deactivate()
            emit({"type": "done", "requests": count})
            return 0
        if kind != "infer":
            raise RequestError(f"a request {raw[:80]!r}...: this agent answers {{\"type\": \"infer\"}} and "
                               "{\"type\": \"close\"} lines only")
        emit(_answer(runner, msg, specs))
        count += 1
