"""SSH devices: a Linux board (Jetson, Raspberry Pi, any aarch64/x86 box) replaying through devices/agent.py.

    board = open_device(load_inventory()["jetson"])        # [devices.jetson] kind = "ssh", see inventory.py
    board.status()      # the board's runtimes and power meters, from `agent.py info` on the board
    with board.replay("onnxrt", Path("w8.onnx"), images, batch_size=100, start=0) as batches:
        for b in batches: ...                               # the same Batch objects as devices/local.py

For devices built on this one (devices/arm_emu.py):
  * The Device contract is unchanged: `replay(runtime, artifact, images, ...)` takes the in-memory uint8
    images; the device saves them as `<sha256>.npy` and pushes that (once per board: blobs are cached).
  * Subclass `SshDevice`, set `kind`, and pass a spec with host/port/user/key/known_hosts/python filled
    (`dataclasses.replace(spec, ...)` before `super().__init__`). `emulated` follows `spec.emulated`
    (kind "arm-emu"): energy is then null and status() says why. A slow board sets the class attribute
    `limits = Limits(first=..., line=...)` (devices/_ssh.py).
  * The board needs sshd with the sftp subsystem (scp speaks SFTP), and a Python 3 with numpy and the runtimes.

A replay: (1) once per device: `mkdir -p` the workdir and push the agent folder (the runner layer,
BOARD_FILES + devices/power/*.py, laid out as in the checkout, named by their hash; the board runs
devices/agent.py from it, on the very runner files the host runs); (2) push the job file (runtime, options, batch size, warm-up, meter, and the
sha256 of the artifact and the images); (3) run `agent.py run JOB START`: the agent checks every
file's sha256 before loading anything; what is missing or corrupt it names (and deletes), the host
pushes it and runs the agent again, and a file that fails its check right after being pushed is
refused; (4) stream one JSON line per batch back, each checked by devices/_board_lines.py (order, the
batch size, the same k >= 2 logits per image in every batch and the artifact's k when the host can read it,
base64 length, finite numbers, lines of at most devices._ssh.MAX_LINE bytes) before it becomes a Batch; the
board's text (errors, its info line) is cleaned of control characters before it is printed or stored.
Board layout under `workdir` (default ~/.qadtr):
agent-<hash>/, blobs/<sha256>.onnx|.tflite|.npy, jobs/<key>.json, engines/ (TensorRT, by version and GPU).

A query session (`open_runner`, devices/_remote_runner.py): the same push, job and need steps, then one
`agent.py serve JOB` connection that answers one request line per batch until close.

Faults: a dropped connection is retried `limits.retries` times, resuming after the last batch
received (nothing lost, nothing twice); then the error says to re-run, and the run loop resumes from
the store. A board silent for `limits.line` seconds is a hang: the stream is cut (the agent exits when
its stdin closes) and what arrived stays stored. Malformed or short results are refused with the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devices import _board_lines as lines
from devices._device import Availability, Batch, BatchStream, Device, check_replay_args
from devices._ssh import (MAX_LINE, ConnectionLost, LineTooLong, Limits, RemoteFailed, SshError, Stream, Transport,
                          clean)
from devices.runtimes import accepts, board_runtimes, get_runtime
from qadtr._errors import QadtrError
from qadtr._scratch import make_scratch

if TYPE_CHECKING:
    from devices._remote_runner import RemoteRunner

AGENT_VERSION = 1  # devices/agent.py VERSION: the job file and line protocol
BOARD = board_runtimes()  # runtime -> its row (devices/runtimes.py): the runtimes a board runs, their options
BOARD_RUNTIMES = {n: (r.requires[0] if r.requires else None) for n, r in BOARD.items()}  # -> module on the board
# The runner layer as the board gets it, laid out as in the checkout (paths relative to the repository): the agent
# (job + line protocol, and its query loop), the Runner contract and registry, each board backend, the fingerprint,
# QadtrError and the registry shape (qadtr/_registry.py).
# Everything here needs the standard library and numpy only (tests/unit/test_agent.py checks it).
BOARD_FILES = ("devices/agent.py", "devices/_agent_serve.py", "devices/_runner.py", "devices/runtimes.py",
               "devices/_host.py", "devices/onnxrt.py", "devices/litert.py", "devices/tensorrt.py", "devices/null.py",
               "qadtr/_errors.py", "qadtr/_registry.py")
BOARD_PACKAGES = {"devices/__init__.py": '"""The runner layer, as devices/ssh.py pushed it to this board."""\n',
                  "qadtr/__init__.py": '"""qadtr/_errors.py and _registry.py, as devices/ssh.py pushed them."""\n'}
AUTO_METERS = ("tegrastats", "ina", "nvml", "rapl")  # power = "auto" on a board: the first one that reads


def agent_files(agent: Path) -> list[tuple[Path, str]]:
    """(local file, path inside the agent folder) of the runner layer pushed to a board (`agent`: devices/agent.py,
    or a test's stand-in for it)."""
    root = Path(__file__).resolve().parents[1]
    power = Path(__file__).with_name("power")
    meters = [(p, f"devices/power/{p.name}") for p in sorted(power.glob("*.py"))]
    return [(agent if rel == "devices/agent.py" else root / rel, rel) for rel in BOARD_FILES] + meters


def write_board_folder(agent: Path, folder: Path) -> Path:
    """The folder a board runs the agent from (FOLDER/devices/agent.py); returns FOLDER."""
    for path, name in agent_files(agent):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / name)
    for name, text in BOARD_PACKAGES.items():
        (folder / name).write_text(text)
    return folder


def trt_batch(artifact: Path) -> tuple[int, int, int] | None:
    """(min, opt, max) batch of the optimization profile in trt_build.json beside a TensorRT-bound ONNX."""
    spec = artifact.with_name("trt_build.json")
    try:
        profile = json.loads(spec.read_text())["profile"]
        return tuple(int(profile[k][0]) for k in ("min", "opt", "max"))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


class SshDevice(Device):
    kind = "ssh"
    limits = Limits()
    agent_source = Path(__file__).with_name("agent.py")  # tests push a stub agent instead

    def __init__(self, spec):
        super().__init__(spec)
        self.emulated = spec.emulated
        if spec.key and not Path(spec.key).is_file():
            raise QadtrError(f"device {spec.name!r}: key {spec.key} not found; fix `key` in {spec.source} or make "
                             f"one with `ssh-keygen -t ed25519 -f {spec.key}`")
        self.link = Transport(spec, lambda: self.limits)
        self._info: dict | None = None
        self._agent: str | None = None  # the agent folder on the board, once pushed
        self._jobs: set[str] = set()  # job files pushed in this session
        self._tmp: Path | None = None

    def _work(self, *parts: str) -> str:
        return "/".join([self.spec.workdir.rstrip("/"), *parts])

    def _scratch(self) -> Path:
        """This device's local folder (the agent folder, job files, the images' .npy): <temp>/qadtr-<kind>-<pid>-*,
        removed by close(); one a kill -9 left is swept by the next replay of this kind (qadtr._scratch)."""
        if self._tmp is None:
            self._tmp = make_scratch(self.kind)
        return self._tmp

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- the board --------------------------------------------------------------------------------------
    def _ensure_agent(self) -> str:
        if self._agent is None:
            files = agent_files(self.agent_source)
            digest = hashlib.sha256(b"".join(name.encode() + path.read_bytes() for path, name in files)).hexdigest()
            local = write_board_folder(self.agent_source, self._scratch() / f"agent-{digest[:16]}")
            self.link.run(["mkdir", "-p", "--", self._work("blobs"), self._work("jobs"), self._work("engines")],
                          what="creating the work folder")
            self.link.push(local, self._work() + "/", what="pushing the agent", recursive=True)
            self._agent = self._work(local.name)
        return self._agent

    def board_info(self) -> dict:
        """`agent.py info` from the board (cached for the device's lifetime)."""
        if self._info is None:
            try:
                out = self.link.run([self.spec.python, f"{self._ensure_agent()}/devices/agent.py", "info"], what="agent info",
                                    timeout=self.limits.first)
            except ConnectionLost as e:
                raise SshError(f"device {self.name!r} is unreachable at {self.link.where} ({e.reason}); check that the "
                               f"board is on and that `ssh -p {self.spec.port} {self.link.where.rsplit(':', 1)[0]} true` "
                               "works") from None
            except RemoteFailed as e:
                raise SshError(f"{e}; is python = {self.spec.python!r} a Python 3 with numpy on the board?") from None
            info = lines.info(self.name, out, AGENT_VERSION, python=self.spec.python)
            self._info = info
        return self._info

    def status(self) -> list[Availability]:
        info, rows = self.board_info(), []
        for name in self.spec.runtimes:
            board = info["runtimes"].get(name)
            if name not in BOARD_RUNTIMES or board is None:
                rows.append(Availability("runtime", name, False, "runs on the host only (needs torch); its reference "
                                         "runs on --device local"))
            elif info.get("numpy") is None and name != "null":
                rows.append(Availability("runtime", name, False, "numpy not installed on the board: "
                                         f"`{self.spec.python} -m pip install numpy`"))
            else:
                module = BOARD_RUNTIMES[name]
                detail = f"{module} {board.get('version')} on the board" if module else "zeros, on the board"
                rows.append(Availability("runtime", name, board["available"], board.get("reason") or detail))
        return rows + self._power_rows(info)

    def _power_rows(self, info: dict) -> list[Availability]:
        if self.emulated:
            return [Availability("power", "none", False, "emulated board: its energy cannot be observed")]
        if self.spec.power == "none":
            return [Availability("power", "none", False, "disabled in the inventory (power = \"none\")")]
        names = AUTO_METERS if self.spec.power == "auto" else (self.spec.power,)
        meters = info.get("meters", {})
        return [Availability("power", n, bool(meters.get(n, {}).get("available")),
                             meters.get(n, {}).get("scope") or meters.get(n, {}).get("reason") or "unknown to the agent")
                for n in names]

    def _meter_job(self) -> dict | None:
        """The job's power entry: the first readable meter the spec allows, or None (energy null)."""
        chosen = [a.name for a in self._power_rows(self.board_info()) if a.available]
        return {"meter": chosen[0], "idle_s": self.spec.power_idle_s} if chosen else None

    def power_meter(self):
        return None  # a board's meter is read on the board, by the agent, around each batch

    def describe(self) -> dict:
        info = self.board_info()
        versions = {BOARD_RUNTIMES[r]: info["runtimes"].get(r, {}).get("version") for r in self.spec.runtimes
                    if BOARD_RUNTIMES.get(r)}
        return {"name": self.name, "kind": self.kind, "emulated": self.emulated, "where": self.spec.where(),
                "cpu": info.get("cpu"), "board": info.get("board"), "machine": info.get("machine"),
                "cores": info.get("cores"), "os": info.get("os"), "python": info.get("python"),
                "numpy": info.get("numpy"), "runtimes": versions, "power": self._meter_job(),
                "host": info.get("host")}  # the board's fingerprint (devices/_host.py, run there by the agent)

    # -- replay -----------------------------------------------------------------------------------------
    def replay(self, runtime: str, artifact: Path, images: np.ndarray, *, batch_size: int = 100, warmup: int = 3,
               start: int = 0, options: dict | None = None) -> BatchStream:
        """Batches of `images[start:]` through `runtime` on the board; see `devices._device.Device.replay`."""
        check_replay_args(images, batch_size, warmup, start=start)
        artifact = Path(artifact)
        options = self._board_options(runtime, artifact, options, batch_size=batch_size)
        return BatchStream(lambda rep: self._batches(rep, runtime, artifact, images=images, batch_size=batch_size,
                                                     warmup=warmup, start=start, options=options))

    def open_runner(self, runtime: str, artifact: Path, **options) -> RemoteRunner:
        """An inactive Runner for `runtime` on the board (devices/_remote_runner.py): activate() pushes what the
        board lacks, as a replay does, and starts the one `agent.py serve` session every infer() goes through."""
        from devices._remote_runner import RemoteRunner

        artifact = Path(artifact)
        options = self._board_options(runtime, artifact, options, batch_size=1)  # the batch: the caller's calls
        return RemoteRunner(self, self._job(runtime, artifact, options, power=None), local={"artifact": artifact})

    def _board_options(self, runtime: str, artifact: Path, options: dict | None, *, batch_size: int) -> dict:
        """The job's runner options, refused unless this board runs `runtime` on `artifact` with them."""
        get_runtime(runtime)
        if runtime not in self.spec.runtimes:
            raise QadtrError(f"device {self.name!r} does not offer runtime {runtime!r} (its inventory entry lists "
                             f"{', '.join(self.spec.runtimes)}); add it to `runtimes` or pick one of those")
        if runtime not in BOARD_RUNTIMES:
            raise QadtrError(f"runtime {runtime!r} runs on the host only (torch + Brevitas); use --device local for it")
        problem = accepts(runtime, artifact) or (f"{artifact.name}: a board builds its own TensorRT engine; pass the "
                                                 "TensorRT-bound .onnx" if artifact.suffix == ".engine" else None)
        if problem:
            raise QadtrError(problem)
        options = dict(options or {})
        unknown = sorted(set(options) - set(BOARD[runtime].board))
        if unknown:
            raise QadtrError(f"runtime {runtime!r} on a board has no option {', '.join(unknown)}; it takes "
                             f"{', '.join(BOARD[runtime].board) or 'none'}")
        if runtime == "tensorrt":
            batch = tuple(options.get("batch") or trt_batch(artifact) or (1, 32, 128))  # export.trt's default
            if batch_size > batch[2]:
                raise QadtrError(f"--batch-size {batch_size} exceeds the engine profile's maximum {batch[2]} "
                                 f"(trt_build.json); pass --batch-size {batch[2]} or re-export with a larger --max-batch")
            options["batch"] = list(batch)
        return options

    def _job(self, runtime: str, artifact: Path, options: dict, **fields) -> dict:
        """The job file of `runtime` on `artifact` (devices/agent.py), plus `fields` (images, batch, power...)."""
        from qadtr._config import sha256_file

        art_sha = sha256_file(artifact)
        return {"version": AGENT_VERSION, "runtime": runtime, "options": options, "engines": "../engines",
                "artifact": {"path": f"../blobs/{lines.blob_name(art_sha, artifact.suffix)}", "sha256": art_sha},
                **fields}

    def _images_file(self, images: np.ndarray) -> tuple[Path, str]:
        """The images as a .npy in the scratch folder, named by its sha256 (the board caches it by that name)."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(images), allow_pickle=False)
        sha = hashlib.sha256(buf.getbuffer()).hexdigest()
        path = self._scratch() / f"{sha}.npy"
        if not path.is_file():
            path.write_bytes(buf.getbuffer())
        return path, sha

    def _batches(self, rep: BatchStream, runtime: str, artifact: Path, *, images: np.ndarray, batch_size: int,
                 warmup: int, start: int, options: dict) -> Iterator[Batch]:
        if start == len(images):
            return
        images_path, images_sha = self._images_file(images)
        job = self._job(runtime, artifact, options, batch_size=batch_size, warmup=warmup,
                        images={"path": f"../blobs/{lines.blob_name(images_sha, '.npy')}", "sha256": images_sha})
        job["power"] = None if self.emulated else self._meter_job()  # asks the board: after the names are checked
        local = {"artifact": artifact, "images": images_path}
        step, k = lines.expected_layout(runtime, artifact, options, batch_size=batch_size)
        known = {"step": step, "asked": batch_size, "k": k}  # k: the artifact's, else the run's first batch's
        expected, attempt, pushed = start, 0, set()  # pushed: blobs sent in this replay (a second need = corrupt)
        while True:
            try:
                for batch in self._session(rep, job, local, first=expected, total=len(images), pushed=pushed,
                                           known=known):
                    yield batch
                    expected += len(batch.logits)
                return
            except ConnectionLost as e:
                attempt += 1
                if attempt > self.limits.retries:
                    raise SshError(f"{e}; gave up after {attempt} attempt(s): the samples received so far are kept, "
                                   "re-run the same command to resume") from None
                time.sleep(self.limits.backoff * 2 ** (attempt - 1))

    def _session(self, rep: BatchStream, job: dict, local: dict, *, first: int, total: int, pushed: set,
                 known: dict) -> Iterator[Batch]:
        """One connection: push what is missing, run the agent from `first`, yield its checked batches."""
        words = self.agent_words("run", self.push_job(job), str(first), "--watch-stdin")
        while True:
            with self.link.stream(words) as stream:
                need = yield from self._read(stream, rep, job["runtime"], first=first, total=total, known=known)
            if need is None:
                return
            self.push_needed(need, job, local, pushed=pushed)

    def agent_words(self, *args: str) -> list[str]:
        """The remote command running the pushed agent with `args` (pushed first if it is not yet)."""
        return [self.spec.python, f"{self._ensure_agent()}/devices/agent.py", *args]

    def push_job(self, job: dict) -> str:
        """The job file's path on the board, pushed once per device session (named by its content's hash) after
        the agent folder (which makes the work folder)."""
        self._ensure_agent()
        text = json.dumps(job, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()[:24]
        if key not in self._jobs:
            (self._scratch() / f"{key}.json").write_text(text)
            self.link.push(self._scratch() / f"{key}.json", self._work("jobs", f"{key}.json"), what="pushing the job")
            self._jobs.add(key)
        return self._work("jobs", f"{key}.json")

    def push_needed(self, need: list[str], job: dict, local: dict, *, pushed: set) -> None:
        """Push the files the agent's need line named (`local`: name -> file here); a file that fails the board's
        check right after being pushed in this run (`pushed`) is refused instead."""
        again = sorted(set(need) & pushed)
        if again:
            raise SshError(f"device {self.name!r}: the {' and '.join(again)} failed the sha256 check on the board "
                           "right after being pushed (corrupted in transfer or on the board's storage), so nothing "
                           "ran; the board deleted it: re-run to push it again, and check the board's disk if it "
                           "repeats")
        for name in need:
            self.link.push(local[name], self._work("blobs", Path(job[name]["path"]).name), what=f"pushing the {name}")
            pushed.add(name)

    def _read(self, stream: Stream, rep: BatchStream, runtime: str, *, first: int, total: int, known: dict):
        """Yield the stream's batches; return the files the agent needs (a list) or None when it is done.
        `known`: {"step", "asked", "k"} of the run (k is set by its first batch when the artifact did not say)."""
        expected, hello, step = first, False, None
        timeout = self.limits.build if runtime == "tensorrt" else self.limits.first
        while True:
            try:
                raw = stream.line(timeout)
            except TimeoutError:
                raise SshError(f"device {self.name!r}: no answer from the agent for {timeout:g} s ({runtime}, "
                               f"{expected} of {total} samples done): the board hangs or is overloaded; the samples "
                               "received are kept, re-run the same command to resume") from None
            except LineTooLong as e:
                lines.refuse(self.name, f"a line over {MAX_LINE >> 20} MiB (at sample {expected})", e.head,
                             fix="a batch line holds batch size x classes x 5.3 bytes: pass a smaller --batch-size, or "
                             "the board's agent is not this host's; the batches before it are kept, re-run to resume")
            if raw is None:
                break
            msg = lines.message(self.name, raw, expected)
            if msg["type"] == "need" and not hello:
                return lines.need(self.name, msg, raw)
            if msg["type"] == "error":
                raise SshError(f"device {self.name!r}: the agent on the board stopped {runtime}: "
                               f"{lines.error_text(msg)}")
            if msg["type"] == "hello" and not hello:
                rep.runner, rep.kernels, rep.feed, step = lines.hello(self.name, msg, raw, version=AGENT_VERSION,
                                                                      step=known["step"], asked=known["asked"])
                hello, timeout = True, self.limits.line
            elif msg["type"] == "batch" and hello:
                batch = self._batch(msg, raw, expected, total=total, k=known["k"], step=step)
                known["k"] = batch.logits.shape[1]
                yield batch
                expected += len(batch.logits)
            elif msg["type"] == "done" and hello:
                if expected != total:
                    self._bad(f"'done' after {expected} of {total} samples (short results)", raw)
                return None
            else:
                self._bad(f"an unexpected {msg['type']!r} line", raw)
        rc, err = stream.finish(), stream.stderr()
        if rc == 255:
            raise self.link.error(f"the replay ({expected} of {total} samples done)", rc, err)
        raise SshError(f"device {self.name!r}: the agent stopped after {expected} of {total} samples without finishing "
                       f"(exit {rc}: {clean((err.strip().splitlines() or ['no message'])[-1])}); the samples received "
                       "are kept, re-run the same command to resume")

    def _bad(self, what: str, raw: bytes):
        lines.refuse(self.name, what, raw)

    def _message(self, raw: bytes, expected: int) -> dict:
        return lines.message(self.name, raw, expected)

    def _batch(self, msg: dict, raw: bytes, expected: int, *, total: int, k: int | None,
               step: int | None = None) -> Batch:
        """A result line -> Batch, refused unless every field is right (devices/_board_lines.py batch)."""
        return lines.batch(self.name, msg, raw, expected=expected, total=total, k=k, step=step)
