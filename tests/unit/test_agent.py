"""devices/agent.py as the board runs it (a subprocess on a job folder): logits byte-identical to the local
runners on the tiny model's ONNX and TFLite, checksums before anything runs, standalone (no torch, no qadtr),
a board power meter around each batch, and its refusals."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devices import DeviceSpec
from devices.local import LocalDevice

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "devices" / "agent.py"
ORIN = next(ln.split("\t", 1)[1] for ln in (Path(__file__).with_name("fixtures") / "tegrastats.txt").read_text()
            .splitlines() if ln.startswith("orin-nano-jp6\t"))


def make_job(board: Path, runtime: str, artifact: Path, images: np.ndarray, **fields) -> Path:
    """A board folder as devices/ssh.py leaves it: blobs/<sha256>.<suffix>, jobs/<key>.json."""
    (board / "blobs").mkdir(parents=True, exist_ok=True)
    (board / "jobs").mkdir(exist_ok=True)
    art_sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    shutil.copyfile(artifact, board / "blobs" / f"{art_sha}{artifact.suffix}")
    np.save(board / "blobs" / "images.npy", images)
    img_sha = hashlib.sha256((board / "blobs" / "images.npy").read_bytes()).hexdigest()
    (board / "blobs" / "images.npy").rename(board / "blobs" / f"{img_sha}.npy")
    job = {"version": 1, "runtime": runtime, "options": {}, "batch_size": 7, "warmup": 1, "power": None,
           "artifact": {"path": f"../blobs/{art_sha}{artifact.suffix}", "sha256": art_sha},
           "images": {"path": f"../blobs/{img_sha}.npy", "sha256": img_sha}, "engines": "../engines", **fields}
    path = board / "jobs" / "job.json"
    path.write_text(json.dumps(job))
    return path


def agent_argv(*args: str, blocked: tuple[str, ...] = (), agent: Path = AGENT,
               confined: Path | None = None) -> list[str]:
    """The command running `python agent.py ARGS` where `blocked` top-level modules fail to import, and with
    `confined` the project packages (devices, qadtr) may only come from that folder (a board's copy)."""
    code = ("import importlib.machinery, runpy, sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {blocked!r}: raise ImportError(name)\n"
            f"        if {str(confined) if confined else None!r} and name.split('.')[0] in ('devices', 'qadtr'):\n"
            "            spec = importlib.machinery.PathFinder.find_spec(name, path)\n"
            f"            if spec is None or not str(spec.origin or spec.submodule_search_locations).startswith("
            f"{str(confined)!r}): raise ImportError(f'{{name}} from outside the board folder')\n"
            "            return spec\n"
            "sys.meta_path.insert(0, Block())\n"
            f"sys.argv = [{str(agent)!r}, *{list(args)!r}]\n"
            f"runpy.run_path({str(agent)!r}, run_name='__main__')\n")
    return [sys.executable, "-c", code]


def run_agent(*args: str, env: dict | None = None, blocked: tuple[str, ...] = (), agent: Path = AGENT,
              confined: Path | None = None) -> tuple[int, list[dict], str]:
    """(exit code, JSON lines, stderr) of `python agent.py ARGS` (agent_argv's `blocked` and `confined`)."""
    r = subprocess.run(agent_argv(*args, blocked=blocked, agent=agent, confined=confined), capture_output=True,
                       text=True, timeout=300, cwd="/", env={**os.environ, **(env or {})})
    return r.returncode, [json.loads(line) for line in r.stdout.splitlines()], r.stderr


def logits(msg: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(msg["logits"]), "<f4").reshape(msg["n"], msg["k"])


@pytest.mark.parametrize("runtime, kind", [("onnxrt", "onnx"), ("litert-xnnpack", "tflite"),
                                           ("litert-builtin", "tflite"), ("null", "onnx")])
def test_agent_logits_equal_local_runners(runtime, kind, tiny_exports, tiny_images, tmp_path):
    artifact = tiny_exports[kind]
    job = make_job(tmp_path / "board", runtime, artifact, tiny_images)
    local = LocalDevice(DeviceSpec("local", power="none"))
    for start in (0, 14):  # from the top, and resumed after two batches
        with local.replay(runtime, artifact, tiny_images, batch_size=7, warmup=1, start=start) as rep:
            want = list(rep)
        rc, lines, err = run_agent("run", str(job), str(start))
        assert rc == 0, err
        hello, *batches, done = lines
        assert (hello["type"], done) == ("hello", {"type": "done", "batches": len(want)})
        assert hello["runner"] == rep.runner and hello["feed"] == rep.feed  # NCHW for .onnx, NHWC for .tflite
        assert hello["kernels"].startswith(rep.kernels) and hello["power"] is None
        assert [(b["first"], b["n"]) for b in batches] == [(w.first, len(w.logits)) for w in want]
        for b, w in zip(batches, want):
            assert logits(b).tobytes() == w.logits.tobytes()  # byte for byte
            assert b["seconds"] > 0 and b["energy_j"] is None


def test_checksums_before_anything_runs(tiny_exports, tiny_images, tmp_path):
    job = make_job(tmp_path, "onnxrt", tiny_exports["onnx"], tiny_images)
    spec = json.loads(job.read_text())
    artifact, images = job.parent / spec["artifact"]["path"], job.parent / spec["images"]["path"]
    images.unlink()
    assert run_agent("run", str(job), "0")[:2] == (3, [{"type": "need", "files": ["images"], "corrupt": []}])
    np.save(images.with_suffix(""), tiny_images)  # np.save appends .npy: the same bytes again
    artifact.write_bytes(artifact.read_bytes() + b"\0")  # one byte more: corrupt
    rc, lines, _ = run_agent("run", str(job), "0")
    assert (rc, lines) == (3, [{"type": "need", "files": ["artifact"], "corrupt": ["artifact"]}])
    assert not artifact.exists() and images.exists()  # the corrupt file is deleted, so it is pushed again


@pytest.mark.parametrize("fields, args, match", [
    ({"runtime": "tensorrt"}, ("0",), (r"runtime 'tensorrt' is not available on this board: tensorrt not installed "
                                       r"on the board; install JetPack")),
    ({"options": {"threads": 2}}, ("0",), r"runtime 'onnxrt' on a board takes no option threads"),
    ({"runtime": "fakequant"}, ("0",), ("this agent runs onnxrt, litert-xnnpack, litert-builtin, litert-ref, tensorrt, null, "
                                        "not 'fakequant'")),
    ({"version": 2}, ("0",), r"job version 2, this agent speaks 1"),
    ({}, ("99",), r"start 99 is outside the 32 images"),
    ({}, ("0", "--bogus"), r"usage: agent.py info \| agent.py run JOB.json START"),
], ids=["tensorrt-absent", "unknown-option", "host-only-runtime", "job-version", "start", "usage"])
def test_agent_refusals(fields, args, match, tiny_exports, tiny_images, tmp_path):
    if fields.get("runtime") == "tensorrt" and shutil.which("nvidia-smi"):
        pytest.skip("TensorRT may be installed here")
    fields = dict(fields)
    job = make_job(tmp_path, fields.pop("runtime", "onnxrt"), tiny_exports["onnx"], tiny_images, **fields)
    rc, lines, _ = run_agent("run", str(job), *args)
    assert rc == 2 and len(lines) == 1 and lines[0]["type"] == "error"
    assert re.search(match, lines[0]["message"]), lines[0]["message"]


@pytest.mark.slow  # the agent in a bare interpreter: ~14 s loaded
def test_agent_is_standalone_and_reads_a_board_meter(tiny_exports, tiny_images, tmp_path):
    """The board gets the runner layer only (devices/ssh.py BOARD_FILES: stdlib + numpy + the runtimes, Python
    3.8 for JetPack 5) and runs from that copy alone: no torch, no Brevitas, nothing else of the project; a
    Jetson's tegrastats (here: a recorded line played back) is read around every batch, above an idle
    baseline measured first."""
    from devices.ssh import agent_files, write_board_folder

    imported = set()
    for source, _ in agent_files(AGENT):
        tree = ast.parse(source.read_text(), feature_version=(3, 8))
        imported |= {n.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module and not node.level}
    # the runtimes, numpy, NVML for its meter, the runner layer itself; onnx only behind OnnxrtRunner's
    # optimized_model_path, an option no board job may set (devices.runtimes rows: `board`)
    assert imported - set(sys.stdlib_module_names) == {"numpy", "onnxruntime", "ai_edge_litert", "tensorrt", "pynvml",
                                                       "onnx", "devices", "qadtr"}
    board_agent = write_board_folder(AGENT, tmp_path / "agent") / "devices" / "agent.py"

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "tegrastats").write_text(f"#!{sys.executable}\nimport sys, time\nwhile True:\n"
                                       f"    print({ORIN!r}, flush=True)\n    time.sleep(0.01)\n")
    (bindir / "tegrastats").chmod(0o755)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    blocked = ("torch", "brevitas", "export", "eval")
    board = {"env": env, "blocked": blocked, "agent": board_agent, "confined": tmp_path / "agent"}
    rc, (info,), err = run_agent("info", **board)
    assert rc == 0, err
    assert info["runtimes"]["onnxrt"] == {"available": True, "version": __import__("onnxruntime").__version__}
    assert info["meters"]["tegrastats"]["available"] and "VDD_IN" in info["meters"]["tegrastats"]["scope"]
    assert set(info["meters"]) == {"rapl", "tegrastats", "ina", "nvml"} and info["numpy"] == np.__version__
    for idle, rel in ((0, None), (0.05, 0.0)):
        job = make_job(tmp_path / f"b{idle}", "onnxrt", tiny_exports["onnx"], tiny_images,
                       power={"meter": "tegrastats", "idle_s": idle})
        rc, lines, err = run_agent("run", str(job), "0", **board)
        assert rc == 0, err
        hello, batches = lines[0], lines[1:-1]
        assert hello["power"]["meter"] == "tegrastats" and hello["power"]["scope"].startswith("Jetson module input")
        for b in batches:
            if idle:  # a constant 5.704 W: nothing above the idle baseline
                assert hello["power"]["idle_w"] == pytest.approx(5.704) and b["energy_j"] == pytest.approx(0, abs=1e-9)
            else:  # the meter's window holds the timed call
                assert 5.704 * b["seconds"] <= b["energy_j"] + 1e-12 < 5.704 * (b["seconds"] + 0.05)


def _escape(board: Path, how: str, job: Path) -> Path:
    """Point the job (or the board folder) at a file outside the board folder, the way `how` says; the file."""
    outside = board.parent / "outside.onnx"
    outside.write_bytes(b"precious: not the agent's to read or delete")
    spec = json.loads(job.read_text())
    blob = job.parent / spec["artifact"]["path"]
    if how == "dotdot":
        spec["artifact"]["path"] = "../../outside.onnx"
    elif how == "dotdot-in-blobs":
        spec["artifact"]["path"] = "../blobs/../../outside.onnx"
    elif how == "absolute":
        spec["artifact"]["path"] = str(outside)
    elif how == "images-absolute":
        outside = outside.with_suffix(".npy")
        outside.write_bytes(b"precious")
        spec["images"]["path"] = str(outside)
    elif how == "other-checksum":  # a blob name, but not the file the job's checksum names
        spec["artifact"]["path"] = f"../blobs/{'0' * 64}.onnx"
    elif how == "engines":
        spec["engines"] = str(board.parent)
    elif how == "symlinked-blob":  # the blob the checksum names is a link out of the folder
        blob.unlink()
        blob.symlink_to(outside)
    elif how == "symlinked-blobs-folder":
        (board / "blobs").rename(board.parent / "elsewhere")
        (board / "blobs").symlink_to(board.parent / "elsewhere")
        outside = board.parent / "elsewhere" / blob.name
    elif how == "symlinked-job":
        real = board.parent / "job.json"
        real.write_text(json.dumps(spec))
        job.unlink()
        job.symlink_to(real)
        return outside
    job.write_text(json.dumps(spec))
    return outside


ESCAPES = {  # how the job (or the board folder) leads out -> the refusal
    "dotdot": r"the job names its artifact as '\.\./\.\./outside\.onnx': this agent opens only \.\./blobs/<the "
              r"file's sha256>\.<suffix> in its work folder",
    "dotdot-in-blobs": r"the job names its artifact as '\.\./blobs/\.\./\.\./outside\.onnx'",
    "absolute": r"the job names its artifact as '/.*outside\.onnx': this agent opens only",
    "images-absolute": r"the job names its images as '/.*outside\.npy': this agent opens only \.\./blobs/<the file's "
                       r"sha256>\.npy",
    "other-checksum": r"the job names its artifact as '\.\./blobs/0{64}\.onnx'",
    "engines": r"the job names engine folder '/.*': this agent keeps engines only in \.\./engines",
    "symlinked-blob": r"blobs/[0-9a-f]{64}\.onnx is a link or leads out of the agent's work folder .*: delete it",
    "symlinked-blobs-folder": r"blobs is a link or leads out of the agent's work folder",
    "symlinked-job": r"jobs/job\.json is a link or leads out of the agent's work folder",
}


@pytest.mark.parametrize("how, match", ESCAPES.items(), ids=list(ESCAPES))
def test_agent_touches_nothing_outside_its_work_folder(how, match, tiny_exports, tiny_images, tmp_path):
    """A job naming any path but ../blobs/<its own sha256><suffix>, or a link out of the board folder, is refused in
    one error line before a file is opened: the outside file is neither read as the model nor deleted as corrupt."""
    board = tmp_path / "board"
    job = make_job(board, "onnxrt", tiny_exports["onnx"], tiny_images)
    outside = _escape(board, how, job)
    before = {p: p.read_bytes() for p in [*board.rglob("*"), outside] if p.is_file()}
    rc, lines, _ = run_agent("run", str(job), "0")
    assert rc == 2 and len(lines) == 1 and lines[0]["type"] == "error", lines
    assert re.search(match, lines[0]["message"]), lines[0]["message"]
    assert {p: p.read_bytes() for p in before if p.is_file()} == before  # every file is still there, unchanged


@pytest.mark.parametrize("where", ["board/job.json", "board/jobs/../job.json", "board/jobs/a b.json"])
def test_agent_runs_only_a_job_in_its_jobs_folder(where, tiny_exports, tiny_images, tmp_path):
    job = make_job(tmp_path / "board", "onnxrt", tiny_exports["onnx"], tiny_images)
    moved = tmp_path / where
    moved.write_text(job.read_text())
    rc, lines, _ = run_agent("run", str(moved), "0")
    assert rc == 2 and len(lines) == 1 and re.search(r"job file '.*': this agent runs only WORK/jobs/<name>\.json",
                                                     lines[0]["message"]), lines


# -- serve: a query session on stdin/stdout (devices/_agent_serve.py) ------------------------------------------
def serve_job(board: Path, runtime: str, artifact: Path, **fields) -> Path:
    """A serve job as devices/ssh.py SshDevice.open_runner writes it: make_job's folder, the job without images."""
    job = make_job(board, runtime, artifact, np.zeros((1, 8, 8, 3), np.uint8), **fields)
    spec = json.loads(job.read_text())
    for key in ("images", "batch_size", "warmup"):
        spec.pop(key)
    job.write_text(json.dumps(spec))
    return job


class Session:
    """`agent.py serve JOB` as a subprocess the test talks to line by line (killed after 120 s whatever happens)."""

    def __init__(self, job: Path, **kw):
        self.proc = subprocess.Popen(agent_argv("serve", str(job), **kw), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        import threading

        self._watchdog = threading.Timer(120, self.proc.kill)
        self._watchdog.start()

    def line(self) -> dict | None:
        raw = self.proc.stdout.readline()
        return json.loads(raw) if raw else None

    def send(self, obj) -> None:
        self.proc.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n")
        self.proc.stdin.flush()

    def end(self, close_stdin: bool = True) -> tuple[int, list[dict], str]:
        """(exit code, the lines printed after the ones read, stderr)."""
        if close_stdin:
            self.proc.stdin.close()
        out, err = self.proc.stdout.read(), self.proc.stderr.read()
        rc = self.proc.wait()
        self._watchdog.cancel()
        return rc, [json.loads(ln) for ln in out.splitlines()], err.decode()


def infer_request(k: int, feed: dict) -> dict:
    return {"type": "infer", "id": k, "feeds": {name: {"dtype": a.dtype.name, "shape": list(a.shape),
                                                       "data": base64.b64encode(a.astype(a.dtype.newbyteorder("<"))
                                                                                .tobytes()).decode()}
                                                for name, a in feed.items()}}


@pytest.mark.parametrize("runtime, kind", [("null", "onnx"), ("onnxrt", "onnx"), ("litert-xnnpack", "tflite")])
def test_serve_answers_each_request_with_the_local_runners_logits(runtime, kind, tiny_exports, tiny_images, tmp_path):
    """hello with the input spec (and LiteRT's input quantization), one logits line per request, byte for byte the
    local runner's, then close: done and exit 0."""
    from devices.runtimes import feed_format, make_runner, read_logits

    artifact = tiny_exports[kind]
    session = Session(serve_job(tmp_path / "board", runtime, artifact))
    hello = session.line()
    with make_runner(runtime, artifact) as local:
        specs = local.input_spec()
        assert hello["type"] == "hello" and hello["runner"] == local.name and hello["power"] is None
        assert hello["inputs"] == [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype.name} for s in specs]
        quant = local.input_quantization() if hasattr(local, "input_quantization") else None
        assert hello["input_quantization"] == (None if quant is None else {k: list(v) for k, v in quant.items()})
        fmt = feed_format(local)
        assert hello["feed"] == str(fmt)
        for k, (first, n) in enumerate([(0, 7), (7, 3), (10, 1)]):
            feed = fmt.feed(tiny_images[first:first + n])
            session.send(infer_request(k, feed))
            got = session.line()
            want = read_logits(local, local.infer(feed))
            assert (got["type"], got["id"], got["n"], got["k"]) == ("logits", k, n, want.shape[1])
            assert logits(got).tobytes() == want.tobytes() and got["seconds"] > 0
    session.send({"type": "close"})
    rc, rest, err = session.end()
    assert (rc, rest) == (0, [{"type": "done", "requests": 3}]), err


BAD_REQUESTS = {  # a request line after hello -> the error it gets (the null runner's input: pixels, float32 NHWC)
    "not-json": ("{infer", r"a request b'\{infer'\.\.\.: this agent answers"),
    "unknown-type": ({"type": "run"}, r"this agent answers \{\"type\": \"infer\"\} and \{\"type\": \"close\"\}"),
    "no-id": ({"type": "infer", "feeds": {}}, r"an infer request with id None, not an integer"),
    "other-input": ({"type": "infer", "id": 0, "feeds": {"x": {}}}, r"feeds \['x'\], the model's inputs are "
                    r"\['pixels'\]"),
    "dtype": ({"dtype": "uint8"}, r"input 'pixels' sent as dtype 'uint8', the model takes float32"),
    "rank": ({"shape": [2, 8, 8]}, r"sent with shape \[2, 8, 8\], the model takes \[None, None, None, 3\]"),
    "fixed-dim": ({"shape": [2, 8, 8, 4]}, r"sent with shape \[2, 8, 8, 4\]"),
    "short-data": ({"shape": [3, 8, 8, 3]}, r"input 'pixels': 1536 bytes, its shape \[3, 8, 8, 3\] of float32 holds "
                   r"2304"),
    "not-base64": ({"data": "@@@@"}, r"input 'pixels': undecodable data"),
}


@pytest.mark.parametrize("request_, match", BAD_REQUESTS.values(), ids=list(BAD_REQUESTS))
def test_serve_refuses_a_bad_request_in_one_error_line(request_, match, tiny_exports, tmp_path):
    """Each bad request is checked against the input spec before the runner sees it: one error line, exit 2, no
    traceback, even when the host closes stdin right after sending it."""
    session = Session(serve_job(tmp_path / "board", "null", tiny_exports["onnx"]))
    assert session.line()["type"] == "hello"
    good = infer_request(0, {"pixels": np.zeros((2, 8, 8, 3), np.float32)})
    if isinstance(request_, dict) and "type" not in request_:  # a field of the one feed changed
        good["feeds"]["pixels"].update(request_)
        request_ = good
    session.send(request_)
    rc, rest, err = session.end()
    assert rc == 2 and len(rest) == 1 and rest[0]["type"] == "error", (rest, err)
    assert re.search(match, rest[0]["message"]), rest[0]["message"]
    assert "Traceback" not in err


def test_serve_exits_4_when_the_host_goes_away(tiny_exports, tmp_path):
    """stdin closing is a host gone: after hello the agent answers what it read and exits 4; closed while the
    runner loads, it exits 4 at once, serving nothing."""
    job = serve_job(tmp_path / "board", "onnxrt", tiny_exports["onnx"])
    session = Session(job)
    assert session.line()["type"] == "hello"
    session.send(infer_request(0, {"input": np.zeros((1, 3, 8, 8), np.float32)}))
    rc, rest, err = session.end()
    assert rc == 4 and [m["type"] for m in rest] == ["logits"], err
    early = Session(job)
    rc, rest, err = early.end()
    assert rc == 4 and [m["type"] for m in rest] in ([], ["hello"]), (rest, err)


def test_serve_checks_its_job_as_run_does(tiny_exports, tiny_images, tmp_path):
    """The same checks as `run`: a missing artifact is a need line (exit 3), a path out of the work folder is
    refused (exit 2), while `run` still refuses a job without images and a serve job is laid out like a replay's."""
    job = serve_job(tmp_path / "board", "null", tiny_exports["onnx"])
    artifact = job.parent / json.loads(job.read_text())["artifact"]["path"]
    artifact.unlink()
    session = Session(job)
    assert session.line() == {"type": "need", "files": ["artifact"], "corrupt": []}
    assert session.end(close_stdin=False)[0] == 3
    spec = json.loads(job.read_text())
    spec["artifact"]["path"] = "../../outside.onnx"
    job.write_text(json.dumps(spec))
    rc, lines, _ = run_agent("serve", str(job))
    assert rc == 2 and re.search(r"the job names its artifact as '\.\./\.\./outside\.onnx'", lines[0]["message"])
    rc, lines, _ = run_agent("run", str(serve_job(tmp_path / "other", "null", tiny_exports["onnx"])), "0")
    assert rc == 2 and re.search(r"the job names its images as 'None'", lines[0]["message"]), lines


def test_serve_runs_from_the_board_folder_alone(tiny_exports, tiny_images, tmp_path):
    """devices/_agent_serve.py travels with the runner layer (BOARD_FILES): a serve session from the pushed copy,
    with the project's other packages and torch unimportable."""
    from devices.ssh import write_board_folder

    board_agent = write_board_folder(AGENT, tmp_path / "agent") / "devices" / "agent.py"
    assert (tmp_path / "agent" / "devices" / "_agent_serve.py").is_file()
    session = Session(serve_job(tmp_path / "board", "onnxrt", tiny_exports["onnx"]), agent=board_agent,
                      blocked=("torch", "brevitas", "export", "eval"), confined=tmp_path / "agent")
    assert session.line()["type"] == "hello"
    session.send(infer_request(0, {"input": np.zeros((2, 3, 8, 8), np.float32)}))
    assert session.line()["n"] == 2
    session.send({"type": "close"})
    rc, rest, err = session.end()
    assert rc == 0 and rest == [{"type": "done", "requests": 1}], err
