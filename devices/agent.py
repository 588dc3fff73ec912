"""The board-side agent: runs one replay job on a board and prints one JSON line per batch, or serves queries.

devices/ssh.py copies the runner layer to the board: this file, its query loop (devices/_agent_serve.py), the
Runner contract and registry (devices/_runner.py, devices/runtimes.py: rows, feed encoding, logits), each board
backend (devices/onnxrt.py, litert.py, tensorrt.py, null.py), the fingerprint (devices/_host.py), the power meters
(devices/power/*.py) and qadtr/_errors.py, under a folder laid out as the checkout is (BOARD_FILES). The
board needs the standard library, numpy and the runtime (onnxruntime, ai_edge_litert or tensorrt): no
torch, no Brevitas, no export or eval code. The agent itself keeps only the job and the line protocol:
the sessions, feed bytes and timed call are the very files devices/local.py runs, so host and board
cannot drift. It runs on Python >= 3.8 (JetPack 5) and TensorRT >= 8.5.

    python3 agent.py info                  -> {"type": "info", machine, cpu, os, python, numpy, runtimes, meters}
    python3 agent.py run JOB.json START [--watch-stdin]
    python3 agent.py serve JOB.json        -> a query session: requests on stdin, one answer line each

The job file, written by the host at WORK/jobs/<name>.json (paths relative to it):
    {"version": 1, "runtime": "onnxrt", "options": {}, "batch_size": 100, "warmup": 3,
     "artifact": {"path": "../blobs/<sha256>.onnx", "sha256": "..."},
     "images": {"path": "../blobs/<sha256>.npy", "sha256": "..."},       # uint8 (N, H, W, 3)
     "power": null | {"meter": "tegrastats", "idle_s": 0}, "engines": "../engines"}
`run` prints, one JSON object per line:
    {"type": "need", "files": [...], "corrupt": [...]}   exit 3: files missing or failing their sha256
                                                          (corrupt ones are deleted) before anything ran
    {"type": "hello", "runner", "kernels", "feed", "batch", "versions", "power"}   after loading and warm-up
                                                          (batch: images per batch line, the last may be short)
    {"type": "batch", "first", "n", "k", "logits": base64 of n*k float32 little-endian, "seconds", "energy_j"}
    {"type": "done", "batches": m}                        exit 0
    {"type": "error", "message": "..."}                   exit 2
`serve` takes the same job file without `images` (its batch_size and warmup are unused), makes the same checks
and need line (exit 3), then prints {"type": "hello", "runner", "kernels", "feed", "versions", "power": null,
"inputs": [{"name", "shape", "dtype"}], "input_quantization": {name: [scale, zero]} | null} and answers one
line per request line on stdin (devices/_agent_serve.py: infer -> logits, close -> done and exit 0; a bad
request -> error, exit 2; stdin closed -> exit 4).
The agent is confined to WORK, the folder above the job's jobs/: it opens, writes and deletes only
WORK/blobs/<sha256><suffix> named by the job's own checksums (the only path form a job may give), the job
itself, and TensorRT engines in WORK/engines; it follows no link. Any other path is refused (exit 2) before a
file is touched.
With --watch-stdin the agent exits (code 4) as soon as its stdin closes: the host went away (a dropped
SSH connection or a timeout), so no orphaned agent keeps a board busy.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import platform
import re
import sys
import threading
from importlib import metadata
from typing import TYPE_CHECKING

HERE = os.path.dirname(os.path.abspath(__file__))  # devices/ (in the checkout, or in the folder pushed to a board)
ROOT = os.path.dirname(HERE)  # holds devices/ and qadtr/: the repository, or the board's copy of the runner layer
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == HERE:
    del sys.path[0]  # `import tensorrt` must find TensorRT, never devices/tensorrt.py beside this file
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from devices import _host  # noqa: E402  (the runner layer: importable only once ROOT is on sys.path)
from devices._agent_serve import Requests, input_specs, serve_loop  # noqa: E402
from devices.power import METERS, open_meter  # noqa: E402
from devices.runtimes import board_runtimes, feed_format, make_runner, probe, read_logits  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402

if TYPE_CHECKING:  # annotations only: numpy is imported where it is used, after the job's checks
    import numpy as np

    from devices._runner import Runner
    from devices.power import PowerMeter
    from devices.runtimes import FeedFormat

VERSION = 1  # of the job file and the line protocol; the host refuses an agent speaking another
BOARD = board_runtimes()  # runtime -> devices.runtimes.RuntimeInfo: the rows a board runs
# The one path form of a job's files, as devices/ssh.py writes it: a blob in WORK/blobs named by its sha256 and the
# artifact's suffix. A checksum name cannot climb out of the folder nor name anything but the file it checks.
BLOB = re.compile(r"\.\./blobs/([0-9a-f]{64})((?:\.[A-Za-z0-9_-]{1,16})?)")
JOB_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.json")  # jobs/<key>.json: the host's key is 24 hex digits
ENGINES = "../engines"  # the only engine folder a job may name (WORK/engines)


class AgentError(QadtrError):
    """A job the agent refuses or cannot run; printed as {"type": "error"} and exit 2."""


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- the board ----------------------------------------------------------------------------------------------
def _version(dist: str | None) -> str | None:
    try:
        return metadata.version(dist) if dist else None
    except metadata.PackageNotFoundError:
        return None


def runtime_status(name: str) -> dict:
    reason = probe(name, board=True)  # the host's own check, worded for a board
    if reason is not None:
        return {"available": False, "reason": reason}
    row = BOARD[name]
    version = _version(row.dist)
    if row.gpu and row.requires:
        version = version or getattr(importlib.import_module(row.requires[0]), "__version__", None)  # apt installs
    return {"available": True, "version": version}


def meter_status(name: str) -> dict:
    try:
        meter = open_meter(name)
    except Exception as e:  # noqa: BLE001 - MeterUnavailable, or anything else that stops it opening
        return {"available": False, "reason": str(e)}
    meter.close()
    return {"available": True, "scope": meter.scope}


def info() -> dict:
    try:
        with open("/proc/device-tree/model") as f:  # e.g. "NVIDIA Jetson Orin Nano Developer Kit"
            model = f.read().strip("\x00\n ")
    except OSError:
        model = ""
    return {"type": "info", "agent": VERSION, "machine": platform.machine(), "cpu": _host.cpu_model(), "board": model,
            "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "numpy": _version("numpy"), "runtimes": {r: runtime_status(r) for r in BOARD},
            "meters": {m: meter_status(m) for m in METERS}, "host": _host.fingerprint()}


# -- the job ------------------------------------------------------------------------------------------------
def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inside(work: str, *parts: str) -> str:
    """WORK/parts..., refused when it is a link or resolves anywhere else (a linked blobs/ or jobs/ folder too)."""
    path = os.path.join(work, *parts)
    if os.path.islink(path) or (os.path.lexists(path)
                                and os.path.realpath(path) != os.path.join(os.path.realpath(work), *parts)):
        raise AgentError(f"{path} is a link or leads out of the agent's work folder {work}; the agent follows no "
                         "link: delete it on the board (the host pushes what is missing again)")
    return path


def work_folder(job_path: str) -> str:
    """The agent's work folder: the one holding the job's jobs/ folder; refused unless the job is jobs/<name>.json."""
    folder, name = os.path.split(os.path.abspath(job_path))
    if os.path.basename(folder) != "jobs" or not JOB_NAME.fullmatch(name):
        raise AgentError(f"job file {job_path[:200]!r}: this agent runs only WORK/jobs/<name>.json (as devices/ssh.py "
                         "pushes it); run the replay from the host")
    work = os.path.dirname(folder)
    _inside(work, "jobs")
    _inside(work, "jobs", name)
    return work


def job_files(job: dict, work: str, *, serve: bool = False) -> dict:
    """{"artifact", "images", "engines": path in WORK}, every one checked before any file is opened; a `serve` job
    may have no images."""
    files = {}
    _inside(work, "blobs")
    keys = (("artifact", None),) + ((("images", (".npy",)),) if not serve or job.get("images") is not None else ())
    for key, suffixes in keys:
        entry = job.get(key)
        named = entry.get("path") if isinstance(entry, dict) else None
        found = BLOB.fullmatch(named) if isinstance(named, str) else None
        if found is None or found.group(1) != entry.get("sha256") or (suffixes and found.group(2) not in suffixes):
            raise AgentError(f"the job names its {key} as {str(named)[:120]!r}: this agent opens only "
                             f"../blobs/<the file's sha256>{'.npy' if suffixes else '.<suffix>'} in its work folder "
                             f"{work}, nothing else; re-run the replay from the host, which writes that form")
        files[key] = _inside(work, "blobs", found.group(1) + found.group(2))
    if job.get("engines", ENGINES) != ENGINES:
        raise AgentError(f"the job names engine folder {str(job.get('engines'))[:120]!r}: this agent keeps engines "
                         f"only in {ENGINES} (its work folder's engines/); re-run the replay from the host")
    files["engines"] = _inside(work, "engines")
    return files


def check_files(job: dict, files: dict) -> tuple[list[str], list[str]]:
    """(missing, corrupt) among the job's files (paths from job_files); a corrupt file is deleted so that it is
    pushed again."""
    missing, corrupt = [], []
    for key in [k for k in ("artifact", "images") if k in files]:
        path = files[key]
        if not os.path.isfile(path):
            missing.append(key)
        elif sha256_file(path) != job[key]["sha256"]:
            corrupt.append(key)
            os.remove(path)
    return missing, corrupt


def open_runner(job: dict, files: dict):
    """The job's runner, made by the registry exactly as on the host, and activated."""
    runtime, options = job["runtime"], dict(job.get("options") or {})
    if runtime not in BOARD:
        raise AgentError(f"this agent runs {', '.join(BOARD)}, not {runtime!r}")
    unknown = sorted(set(options) - set(BOARD[runtime].board))
    if unknown:
        raise AgentError(f"runtime {runtime!r} on a board takes no option {', '.join(unknown)}")
    status = runtime_status(runtime)
    if not status["available"]:
        raise AgentError(f"runtime {runtime!r} is not available on this board: {status['reason']}")
    if runtime == "tensorrt":  # engines are built on the board once, then reused from its engine folder
        options["engine_cache"] = files["engines"]
        options["onnx_sha256"] = job["artifact"]["sha256"]  # checked by check_files above: not hashed twice
    return make_runner(runtime, files["artifact"], **options).activate()


# -- the run ------------------------------------------------------------------------------------------------
def _read_job(job_path: str) -> tuple[dict, str]:
    """(the job, its WORK folder): the folder checked before the job file is opened, the version after."""
    work = work_folder(job_path)  # before the job file is opened
    with open(job_path) as f:
        job = json.load(f)
    if not isinstance(job, dict) or job.get("version") != VERSION:
        raise AgentError(f"job version {job.get('version') if isinstance(job, dict) else None}, this agent speaks "
                         f"{VERSION}; the host pushes its own agent with each job: re-run")
    return job, work


def _read_images(path: str, start: int) -> np.ndarray:
    """The job's images, (N, H, W, 3) uint8, with START one of them."""
    import numpy as np

    images = np.load(path, allow_pickle=False)  # (N, H, W, 3) uint8
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise AgentError(f"the images file holds {images.dtype} {images.shape}, not uint8 (N, H, W, 3)")
    if not 0 <= start < len(images):
        raise AgentError(f"start {start} is outside the {len(images)} images")
    return images


def _batch(images: np.ndarray, first: int, *, fmt: FeedFormat, step: int) -> tuple[dict, int]:
    """(the feed of the batch starting at `first`, its real rows): a fixed-batch model's last batch is padded."""
    import numpy as np

    chunk = images[first:first + step]  # (B, H, W, 3)
    real = len(chunk)
    if real < step and fmt.batch is not None:  # pad a fixed-batch model's last batch, keep the real rows
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - real, axis=0)])
    return fmt.feed(chunk), real


def _open_power(job: dict) -> tuple[PowerMeter | None, dict | None]:
    """(the job's power meter, its hello entry), its idle baseline measured; a meter that fails is None, and why."""
    meter, power = None, None
    if job.get("power"):
        try:
            meter = open_meter(job["power"]["meter"])
            idle = float(job["power"].get("idle_s") or 0)
            if idle > 0:
                meter.measure_idle(idle)
            power = {"meter": job["power"]["meter"], "scope": meter.scope, "idle_w": meter.idle_w}
        except Exception as e:  # noqa: BLE001 - a meter that fails leaves energy null, with the reason
            meter, power = None, {"meter": job["power"]["meter"], "unavailable": str(e)}
    return meter, power


def _stream(runner: Runner, images: np.ndarray, start: int, *, fmt: FeedFormat, step: int,
            meter: PowerMeter | None) -> int:
    """Emit one batch line per batch from `start` on, energy read around each timed call; the batch count."""
    import numpy as np

    count = 0
    for first in range(start, len(images), step):
        x, real = _batch(images, first, fmt=fmt, step=step)
        if meter is not None:
            meter.start()
        out = runner.infer(x)  # the Runner contract's timed call
        energy = meter.stop()[0] if meter is not None else None
        logits = read_logits(runner, out)[:real]  # (real, K)
        emit({"type": "batch", "first": first, "n": real, "k": int(logits.shape[1]),
              "seconds": runner.last_inference_time, "energy_j": energy,
              "logits": base64.b64encode(np.ascontiguousarray(logits, "<f4").tobytes()).decode()})
        count += 1
    return count


def run(job_path: str, start: int) -> int:
    """Run one job from image START: the need line (exit 3) or hello, a batch line per batch, done (exit 0)."""
    import numpy as np

    job, work = _read_job(job_path)
    files = job_files(job, work)  # every path, before any file is touched
    missing, corrupt = check_files(job, files)  # before anything is loaded or run
    if missing or corrupt:
        emit({"type": "need", "files": missing + corrupt, "corrupt": corrupt})
        return 3
    images = _read_images(files["images"], start)
    runner = open_runner(job, files)
    fmt = feed_format(runner)  # the same bytes as on the host: devices.runtimes.FeedFormat
    step = fmt.batch or int(job["batch_size"])  # a fixed-batch model runs at its batch
    meter, power = _open_power(job)
    x, _ = _batch(images, start, fmt=fmt, step=step)
    for _ in range(int(job["warmup"])):  # caches, lazy allocations, XNNPACK packing: run, never reported
        runner.infer(x)
    emit({"type": "hello", "agent": VERSION, "runner": runner.name, "kernels": runner.kernels, "feed": str(fmt),
          "batch": step, "versions": {**runner.versions, "numpy": np.__version__, "python": platform.python_version()},
          "power": power, "samples": len(images)})
    count = _stream(runner, images, start, fmt=fmt, step=step, meter=meter)
    if meter is not None:
        meter.close()
    runner.deactivate()
    emit({"type": "done", "batches": count})
    return 0


def serve(job_path: str) -> int:
    """Serve queries on one job's runner (devices/_agent_serve.py): the need line (exit 3) or hello, one answer
    per request, done (exit 0); stdin closed: exit 4."""
    import numpy as np

    job, work = _read_job(job_path)  # the job's checks first: a refused job is refused whatever stdin does
    files = job_files(job, work, serve=True)
    missing, corrupt = check_files(job, files)
    if missing or corrupt:
        emit({"type": "need", "files": missing + corrupt, "corrupt": corrupt})
        return 3
    requests = Requests()  # reading from here on: a host gone while the runner loads ends the agent (exit 4)
    runner = open_runner(job, files)
    try:
        feed = str(feed_format(runner))
    except QadtrError:  # not an image classifier's input: the host's feed_format says why when it asks
        feed = ""
    quant = runner.input_quantization() if hasattr(runner, "input_quantization") else None
    hello = {"type": "hello", "agent": VERSION, "runner": runner.name, "kernels": runner.kernels, "feed": feed,
             "versions": {**runner.versions, "numpy": np.__version__, "python": platform.python_version()},
             "power": None, "inputs": input_specs(runner),
             "input_quantization": None if quant is None else {k: [float(s), int(z)] for k, (s, z) in quant.items()}}
    return serve_loop(runner, requests, emit=emit, hello=hello)


def _watch_stdin() -> None:
    """Exit as soon as stdin closes: the host (its ssh client) went away."""
    def watch() -> None:
        try:  # the raw fd, not sys.stdin: a daemon thread holding stdin's buffer lock aborts interpreter shutdown
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(4)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


USAGE = "usage: agent.py info | agent.py run JOB.json START [--watch-stdin] | agent.py serve JOB.json"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv == ["info"]:
            emit(info())
            return 0
        if len(argv) in (3, 4) and argv[0] == "run" and argv[2].isdigit() and argv[3:] in ([], ["--watch-stdin"]):
            if argv[3:]:
                _watch_stdin()
            return run(argv[1], int(argv[2]))
        if len(argv) == 2 and argv[0] == "serve":
            return serve(argv[1])
        raise AgentError(USAGE)
    except QadtrError as e:  # AgentError, and RunnerError from the runner layer: one line each
        emit({"type": "error", "message": str(e)})
    except Exception as e:  # noqa: BLE001 - the host gets one line; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        emit({"type": "error", "message": f"{type(e).__name__}: {str(e)[:500]}"})
    return 2


if __name__ == "__main__":
    sys.exit(main())
