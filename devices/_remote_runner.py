"""A runtime on a board behind the Runner contract: one `agent.py serve` session that every infer() goes through.

    with board.open_runner("onnxrt", Path("w8.onnx")) as r:    # devices.ssh.SshDevice.open_runner
        out = r.infer(feed_format(r).feed(images))             # {"logits": (B, K) float32}, computed on the board
        r.last_inference_time                                  # the board's timed call; r.round_trip_time: this host's

activate() pushes what the board lacks exactly as a replay does (the agent folder, the job file, then the files
the agent's need line names: devices.ssh.SshDevice.push_job / push_needed) and starts ONE long-lived ssh process
running `agent.py serve JOB` (devices/_agent_serve.py); its hello line gives the input spec, the input
quantization where the board's runner has one, the runner's name, kernels and versions. infer() sends the feed
as one request line (a batch over MAX_ROWS rows or MAX_FEED_BYTES bytes as several) and reads the answer, checked
by devices/_board_lines.py like a replay's batch line; the logits come back float32 under "logits", so
`devices.runtimes.read_logits` takes them as they are. deactivate() sends close, waits for done, and kills the
session after `limits.step` seconds. A session that dies (ssh dropped, the agent stopped or refused a request)
raises one SshError line naming the fix; the runner then answers nothing more.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from devices import _board_lines as lines
from devices._runner import Runner, TensorSpec
from devices._ssh import MAX_LINE, ConnectionLost, LineTooLong, SshError, Stream, clean, tail

# Array bytes per request: base64 makes 48 MiB 64 MiB, the agent's longest request line (devices/_agent_serve.py).
MAX_FEED_BYTES = 48 << 20
# Rows per request: the answer holds rows x classes float32 in base64; 1024 x 1000 classes is 5.5 MB, under the
# 8 MiB the host reads of one board line (devices/_ssh.py MAX_LINE).
MAX_ROWS = 1024
MAX_RANK = 8  # dimensions of an input a board may announce (an image classifier's is 4)
# Input dtypes a board may announce: numpy names of what the registered runners take (float and integer tensors).
DTYPES = frozenset({"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"})
SERVE_TYPES = ("need", "hello", "logits", "done", "error")  # the lines `agent.py serve` prints


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class RemoteRunner(Runner):
    """The Runner proxy of `job`'s runtime on `device` (an SshDevice); `local`: the job's files here by name."""

    def __init__(self, device, job: dict, *, local: dict):
        self._board_time: float | None = None
        self.round_trip_time: float | None = None  # seconds of the last infer() here: the board's plus the link
        self.board_seconds = self.round_trip_seconds = 0.0  # summed over the infer() calls (before Runner's init,
        super().__init__()                                  # which sets last_inference_time through the setter)
        self.device, self.job, self.local, self.runtime = device, job, local, job["runtime"]
        self.name, self.kernels, self.feed = self.runtime, f"{self.runtime} on {device.name} (not activated yet)", ""
        self.starts = 0  # ssh processes started running `serve` (one that answered a need line served nothing)
        self.sessions = 0  # of them, those that served: one per activation
        self.requests = 0  # request lines sent
        self._stream: Stream | None = None  # the session's ssh process, until deactivate()
        self._failed = False  # a request failed on the way (the session is closed): nothing more is asked
        self._spec: list[TensorSpec] = []
        self._quant: dict | None = None
        self._k: int | None = None  # logits per image, from the first answer on

    # Runner.infer times _infer here (the link included) and records last_inference_time: the board's timed call
    @property
    def last_inference_time(self) -> float | None:
        return self._board_time

    @last_inference_time.setter
    def last_inference_time(self, seconds: float | None) -> None:
        self.round_trip_time = seconds
        self.round_trip_seconds += seconds or 0.0

    # -- the session -----------------------------------------------------------------------------------------
    def _activate(self) -> None:
        device, pushed = self.device, set()
        words = device.agent_words("serve", device.push_job(self.job))
        timeout = device.limits.build if self.runtime == "tensorrt" else device.limits.first
        while True:
            stream = device.link.stream(words)
            self.starts += 1
            msg, raw = self._line(stream, timeout, "starting the query session")
            if msg["type"] == "need":
                stream.close()
                need = lines.need(device.name, msg, raw)
                if set(need) - set(self.local):
                    lines.refuse(device.name, "a need line naming a file a query session has not", raw)
                device.push_needed(need, self.job, self.local, pushed=pushed)
                continue
            if msg["type"] != "hello":
                stream.close()
                lines.refuse(device.name, f"an unexpected {msg['type']!r} line before hello", raw)
            try:
                self._hello(msg, raw)
            except SshError:
                stream.close()
                raise
            self._stream, self._k, self._failed = stream, None, False
            self.sessions += 1
            return

    def _hello(self, msg: dict, raw: bytes) -> None:
        """The runner's name, kernels, versions, input spec and quantization from the hello line, or refused."""
        name = self.device.name
        self.name, self.kernels, self.feed, _ = lines.hello(name, msg, raw, version=self.job["version"], step=None,
                                                            asked=1)
        got, specs = msg.get("inputs"), []
        for entry in got if isinstance(got, list) and len(got) <= MAX_RANK else [None]:
            entry = entry if isinstance(entry, dict) else {}
            key, shape, dtype = entry.get("name"), entry.get("shape"), entry.get("dtype")
            if not (isinstance(key, str) and key and clean(key) == key and dtype in DTYPES
                    and isinstance(shape, list) and 1 <= len(shape) <= MAX_RANK
                    and all(d is None or (_count(d) and d >= 1) for d in shape)):
                lines.refuse(name, "a hello line without its inputs (a name, shape and dtype for each)", raw)
            specs.append(TensorSpec(key, np.dtype(dtype), tuple(shape)))
        if not specs:
            lines.refuse(name, "a hello line naming no input", raw)
        quant = msg.get("input_quantization")
        if quant is not None and not (isinstance(quant, dict) and set(quant) == {s.name for s in specs} and all(
                isinstance(q, list) and len(q) == 2 and isinstance(q[0], (int, float)) and not isinstance(q[0], bool)
                and _count(q[1]) for q in quant.values())):
            lines.refuse(name, "a hello line whose input_quantization is not {input: [scale, zero point]}", raw)
        versions = msg.get("versions") if isinstance(msg.get("versions"), dict) else {}
        self.versions = {clean(k, 80): None if v is None else clean(v) for k, v in versions.items()}
        self._spec = specs
        self._quant = None if quant is None else {k: (float(s), int(z)) for k, (s, z) in quant.items()}

    def _line(self, stream: Stream, timeout: float, what: str) -> tuple[dict, bytes]:
        """The session's next line as (a dict of a serve type, its bytes); an error line, silence, the end of the
        stream or a malformed line closes the session and raises one SshError line."""
        name = self.device.name
        try:
            raw = stream.line(timeout)
        except TimeoutError:
            stream.close()
            raise SshError(f"device {name!r}: no answer from the agent for {timeout:g} s ({self.runtime}, {what}): the "
                           "board hangs or is overloaded; check it, then re-run (a query attack continues with "
                           "--resume)") from None
        except LineTooLong as e:
            stream.close()
            lines.refuse(name, f"a line over {MAX_LINE >> 20} MiB ({what})", e.head)
        if raw is None:
            rc = stream.finish(timeout=self.device.limits.step)
            err = stream.stderr()
            stream.close()
            if rc == 255:
                lost = self.device.link.error(f"the query session ({what})", rc, err)
                if not isinstance(lost, ConnectionLost):
                    raise lost  # a host key or login refused: its own fix
                raise SshError(f"device {name!r}: the query session to {self.device.link.where} was lost ({what}: "
                               f"{lost.reason}); check that the board is up, then re-run (a query attack continues "
                               "with --resume)")
            raise SshError(f"device {name!r}: the query session's agent stopped ({what}; exit {rc}: "
                           f"{tail(err, 1) or 'no message'}); check the board, then re-run (a query attack continues "
                           "with --resume)")
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError):
            msg = None
        if not isinstance(msg, dict) or msg.get("type") not in SERVE_TYPES:
            stream.close()
            lines.refuse(name, f"a malformed line ({what})", raw)
        if msg["type"] == "error":
            stream.close()
            raise SshError(f"device {name!r}: the agent on the board stopped {self.runtime} ({what}): "
                           f"{lines.error_text(msg)}")
        return msg, raw

    def _deactivate(self) -> None:
        """Send close, wait for done (at most `limits.step` s, then the session is killed)."""
        stream, self._stream = self._stream, None
        if stream is None or self._failed:  # a failed session was closed where it failed (close() again is harmless)
            if stream is not None:
                stream.close()
            return
        try:
            stream.proc.stdin.write(b'{"type": "close"}\n')
            stream.proc.stdin.flush()
            stream.line(self.device.limits.step)  # the done line: the board's runner is released
        except (OSError, TimeoutError, LineTooLong):
            pass  # a session that is gone is gone: nothing is left to release here
        finally:
            stream.finish(timeout=self.device.limits.step)
            stream.close()

    # -- the Runner contract -----------------------------------------------------------------------------------
    def _input_spec(self) -> list[TensorSpec]:
        return list(self._spec)

    def input_quantization(self) -> dict[str, tuple[float, int]]:
        """The board runner's (scale, zero point) per input; (0.0, 0), what `devices.runtimes.feed_format` assumes
        of a runner without quantized inputs, where the board's runner reports none."""
        self._require_active("input_quantization")
        return dict(self._quant) if self._quant is not None else {s.name: (0.0, 0) for s in self._spec}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(feed.values())))
        if rows == 0:  # nothing to ask the board
            self._board_time = 0.0
            return {"logits": np.zeros((0, self._k or 0), np.float32)}
        step = rows
        if all(s.shape[0] is None for s in self._spec):  # a dynamic batch may be split; a fixed one never
            per_row = sum(a[:1].nbytes for a in feed.values()) or 1
            step = max(1, min(step, MAX_ROWS, MAX_FEED_BYTES // per_row))
        parts, seconds = [], 0.0
        for first in range(0, rows, step):
            logits, took = self._request({k: v[first:first + step] for k, v in feed.items()})
            parts.append(logits)
            seconds += took
        self._board_time = seconds
        self.board_seconds += seconds
        return {"logits": np.concatenate(parts)}

    def _request(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """One request line and its checked answer: ((n, K) float32 logits, the board's seconds)."""
        stream, name = self._stream, self.device.name
        if stream is None or self._failed:
            raise SshError(f"device {name!r}: the query session ended after an earlier failure; re-run (a query "
                           "attack continues with --resume)")
        self.requests += 1
        request = {"type": "infer", "id": self.requests, "feeds": {
            k: {"dtype": a.dtype.name, "shape": list(a.shape),
                "data": base64.b64encode(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()).decode()}
            for k, a in feed.items()}}
        what = f"request {self.requests}"
        self._failed = True  # until its answer is in: a failure on the way leaves no half-used session behind
        try:
            stream.proc.stdin.write(json.dumps(request).encode() + b"\n")
            stream.proc.stdin.flush()
        except OSError:
            pass  # the session is gone: reading its end below says how
        timeout = self.device.limits.first if self.requests == 1 else self.device.limits.line
        msg, raw = self._line(stream, timeout, what)
        rows = len(next(iter(feed.values())))
        try:
            if msg["type"] != "logits" or msg.get("id") != self.requests:
                lines.refuse(name, f"a {msg['type']!r} line answering {what}", raw)
            batch = lines.batch(name, {**msg, "first": 0}, raw, expected=0, total=rows, k=self._k, step=rows)
        except SshError:
            stream.close()
            raise
        self._k, self._failed = batch.logits.shape[1], False
        return batch.logits, batch.seconds

    def session_info(self) -> dict:
        """What the session did, for the record: sessions that served, ssh starts, requests, board and round-trip
        seconds (the link's cost is their difference)."""
        return {"sessions": self.sessions, "ssh_starts": self.starts, "requests": self.requests,
                "board_seconds": self.board_seconds, "round_trip_seconds": self.round_trip_seconds}
