"""The SSH device against a real sshd on 127.0.0.1 (tests/ssh/conftest.py): the tiny model replayed end to end
into a store, equal to the local run byte for byte, concurrently with it (a fleet); then the faults: a killed
sshd mid-run, a corrupted artifact, malformed and short results, a hung agent, and host keys."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from _sshd import SKIP, descendants

from devices._ssh import Limits, SshError
from devices.inventory import load_inventory, open_device
from devices.ssh import SshDevice
from eval import fleet as od
from eval import on_device
from eval.replay import load_replay, make_replay
from eval.store import Store
from qadtr import QadtrError

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")
pytestmark = [pytest.mark.ssh, SKIP]

AGENT = Path(__file__).resolve().parents[2] / "devices" / "agent.py"
RUNTIMES = ["onnxrt", "litert-xnnpack", "litert-builtin"]
FAST = Limits(connect=10, step=30, first=120, line=60, retries=0, backoff=0.2)


_OPENED: list[SshDevice] = []  # every board() of the running test, closed after it (else its scratch dirs stay)


@pytest.fixture(autouse=True)
def _close_boards():
    yield
    while _OPENED:
        _OPENED.pop().close()


def board(sshd, tmp_path: Path, name: str = "board", **fields) -> SshDevice:
    inv = tmp_path / f"{name}.toml"
    inv.write_text(sshd.inventory(name, **fields))
    device = open_device(load_inventory(inv)[name])
    device.limits = FAST
    _OPENED.append(device)
    return device


def stub_agent(tmp_path: Path, patch: str) -> Path:
    """The real agent with `emit` wrapped by `patch` (which sees `obj` and the real `_emit`): a misbehaving board."""
    source = AGENT.read_text()
    wrapper = "import time\n\n_emit = emit\n\n\ndef emit(obj):\n" + "".join(f"    {ln}\n" for ln in patch.splitlines()) + "\n\n"
    path = tmp_path / "stub_agent.py"
    path.write_text(source.replace('if __name__ == "__main__":', wrapper + 'if __name__ == "__main__":'))
    return path


@pytest.fixture
def replay(tiny_dataset, tiny_patches, tmp_path):
    return load_replay(make_replay(tiny_patches, "cifar10", eval_subset=16, out=tmp_path / "replays"))


def _job(artifact: Path, runtime: str = "onnxrt") -> od.Job:
    return od.Job(runtime, artifact, artifact.name, "a" * 64, (8, 8), "")


def _local_logits(runtime: str, artifact: Path, images: np.ndarray) -> np.ndarray:
    from devices import DeviceSpec
    from devices.local import LocalDevice

    with LocalDevice(DeviceSpec("local", power="none")).replay(runtime, artifact, images, batch_size=7) as rep:
        return np.concatenate([b.logits for b in rep])


# -- end to end ------------------------------------------------------------------------------------------------
def test_fleet_replay_over_ssh_equals_local(sshd, tiny_exports, tiny_dataset, tiny_patches, tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text(sshd.inventory("board", runtimes=RUNTIMES + ["fakequant"]))
    kw = dict(devices="local,board", models=[str(tiny_exports["onnx"]), str(tiny_exports["tflite"])],
              patches=str(tiny_patches), eval_subset=16, store_path=tmp_path / "s.sqlite", runtimes=RUNTIMES,
              batch_size=7, warmup=1, inventory=str(inv))
    result = od.replay_on_devices(**kw)  # both devices at once, one thread and one store connection each
    runs = {(r["device"], r["runtime"]): r for r in result["runs"]}
    assert set(runs) == {(d, r) for d in ("local", "board") for r in RUNTIMES}
    info = result["devices"]["board"]
    assert info["kind"] == "ssh" and info["where"] == f"ssh 127.0.0.1:{sshd.port}" and info["power"] is None
    with Store(tmp_path / "s.sqlite") as s:
        for r in RUNTIMES:
            remote, local = runs[("board", r)], runs[("local", r)]
            assert s.logits(remote["run_id"]).tobytes() == s.logits(local["run_id"]).tobytes()
            assert remote["kernels"].startswith(local["kernels"]) and remote["energy_per_inference_j"] is None
            assert remote["clean_accuracy"] == local["clean_accuracy"] and remote["asr"] == local["asr"]
    again = od.replay_on_devices(**kw)  # everything is stored: nothing runs twice
    assert [r["replayed_now"] for r in again["runs"]] == [0] * 6

    from eval.report import write_report

    page = write_report(tmp_path / "s.sqlite", tmp_path / "report").read_text()
    latency = page.split('<section id="latency">', 1)[1].split("</section>", 1)[0]
    for r in RUNTIMES:  # the latency table: one row per runtime and device, side by side
        assert latency.count(f"<tr><td>{r}</td>") == 2
    assert "<h3>board</h3>" in page and "<h3>local</h3>" in page


def test_status_and_a_tensorrt_job_without_tensorrt(sshd, tiny_exports, tiny_dataset, tiny_patches, tmp_path):
    device = board(sshd, tmp_path, runtimes=["onnxrt", "tensorrt", "fakequant"], power="auto")
    rows = {(a.kind, a.name): a for a in device.status()}
    assert rows[("runtime", "onnxrt")].available and "on the board" in rows[("runtime", "onnxrt")].reason
    assert rows[("runtime", "fakequant")].reason.startswith("runs on the host only")
    assert not rows[("runtime", "tensorrt")].available and "tensorrt not installed on the board" in \
        rows[("runtime", "tensorrt")].reason
    assert [n for k, n in rows if k == "power"] == ["tegrastats", "ina", "nvml", "rapl"]
    inv = tmp_path / "jetson.toml"
    inv.write_text(sshd.inventory("jetson", runtimes=["onnxrt", "tensorrt"]))
    with pytest.raises(QadtrError, match=r"nothing can run on jetson: tensorrt for .*w8.onnx: not available on "
                                         r"jetson: tensorrt not installed on the board; install JetPack"):
        od.replay_on_devices(devices="jetson", models=[str(tiny_exports["onnx"])], patches=str(tiny_patches),
                    eval_subset=16, store_path=tmp_path / "s.sqlite", runtimes=["tensorrt"], inventory=str(inv))


# -- faults ------------------------------------------------------------------------------------------------------
class KillAfter(Store):
    """A store that runs `action` after its `n`-th batch write (in the replay loop's thread: deterministic)."""

    def __init__(self, path, n: int, action):
        super().__init__(path)
        self.n, self.action, self.writes = n, action, 0

    def write_batch(self, run_id, **kw):
        super().write_batch(run_id, **kw)
        self.writes += 1
        if self.writes == self.n:
            self.action()


SLOW = "if obj.get('type') == 'batch':\n    time.sleep(0.3)\n_emit(obj)"


@pytest.mark.parametrize("retries", [0, 3], ids=["rerun-resumes", "reconnects"])
def test_sshd_killed_mid_run(retries, sshd, replay, tiny_exports, tmp_path):
    device = board(sshd, tmp_path)
    device.agent_source = stub_agent(tmp_path, SLOW)
    device.limits = Limits(connect=5, step=30, first=120, line=60, retries=retries, backoff=1.0)
    job = _job(tiny_exports["onnx"])
    if retries == 0:  # the run stops; the same command run again resumes it
        with KillAfter(tmp_path / "s.sqlite", 2, sshd.kill) as s:
            with pytest.raises(SshError, match=r"lost or cannot reach 127\.0\.0\.1.*re-run the same command to resume"):
                od.replay_run(s, device, job, replay=replay, batch_size=7, warmup=0)
            assert len(s.done_samples(s.runs()[0].run_id)) == 14  # what arrived stays
        sshd.start()
        with Store(tmp_path / "s.sqlite") as s:
            out = od.replay_run(s, device, job, replay=replay, batch_size=7, warmup=0)
    else:  # the device reconnects by itself once sshd is back (its retries wait 1 s, 2 s, 4 s)
        import threading

        def bounce():
            sshd.kill()
            threading.Timer(0.5, sshd.start).start()

        with KillAfter(tmp_path / "s.sqlite", 2, bounce) as s:
            out = od.replay_run(s, device, job, replay=replay, batch_size=7, warmup=0)
        assert out.replayed == len(replay)
    with Store(tmp_path / "s.sqlite") as s:
        rows = s.batches(out.run.run_id)
        assert out.run.complete and [b.first for b in rows] == list(range(0, len(replay), 7))  # none lost or twice
        assert s.logits(out.run.run_id).tobytes() == _local_logits("onnxrt", tiny_exports["onnx"], replay.images).tobytes()


def test_corrupted_artifact_is_refused_by_checksum(sshd, replay, tiny_exports, tmp_path):
    device = board(sshd, tmp_path)
    real_push = device.link.push

    def push_corrupting(local, remote, **kw):  # the artifact arrives with one byte flipped
        real_push(local, remote, **kw)
        if remote.endswith(".onnx"):
            path = Path(remote)
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))

    device.link.push = push_corrupting
    with Store(tmp_path / "s.sqlite") as s:
        with pytest.raises(SshError, match=r"the artifact failed the sha256 check on the board right after being "
                                           r"pushed .* so nothing ran; the board deleted it: re-run"):
            od.replay_run(s, device, _job(tiny_exports["onnx"]), replay=replay, batch_size=7, warmup=0)
        assert s.done_samples(s.runs()[0].run_id) == set()
        assert not list((Path(device.spec.workdir) / "blobs").glob("*.onnx"))
        device.link.push = real_push
        out = od.replay_run(s, device, _job(tiny_exports["onnx"]), replay=replay, batch_size=7, warmup=0)
        assert out.run.complete


@pytest.mark.parametrize("patch, match, kept", [
    ("if obj.get('type') == 'batch' and obj['first'] == 7:\n    print('{not json', flush=True)\nelse:\n    _emit(obj)",
     r"a malformed line \(expected the batch from sample 7\)", 7),
    ("if obj.get('type') == 'batch' and obj['first'] == 7:\n    obj['logits'] = obj['logits'][:16]\n_emit(obj)",
     r"12 bytes of logits for 7x10 float32 \(short results\)", 7),
    ("_emit(obj)\nif obj.get('type') == 'batch' and obj['first'] == 0:\n    _emit(obj)",
     r"rows from 0, expected 7 \(a skipped or repeated batch\)", 7),
    ("if obj.get('type') == 'batch' and obj['first'] == 14:\n    obj['n'] = 999\n_emit(obj)",
     r"a batch of 999x10 logits at row 14", 14),
    ("if obj.get('type') == 'batch' and obj['first'] == 7:\n    obj['seconds'] = float('nan')\n_emit(obj)",
     r"inference time nan", 7),
    ("if obj.get('type') == 'batch' and obj['first'] == 14:\n    sys.exit(0)\n_emit(obj)",
     r"the agent stopped after 14 of \d+ samples without finishing \(exit 0", 14),
    ("if obj.get('type') == 'done':\n    obj['type'] = 'finished'\n_emit(obj)", r"a malformed line", None),
], ids=["not-json", "short-logits", "duplicate", "out-of-range", "nan-time", "stops-early", "unknown-type"])
def test_malformed_or_short_results_are_refused(patch, match, kept, sshd, replay, tiny_exports, tmp_path):
    device = board(sshd, tmp_path)
    device.agent_source = stub_agent(tmp_path, patch)
    with Store(tmp_path / "s.sqlite") as s:
        with pytest.raises(SshError, match=match):  # the null runtime: the protocol without a runtime's start-up
            od.replay_run(s, device, _job(tiny_exports["onnx"], "null"), replay=replay, batch_size=7, warmup=0)
        done = len(s.done_samples(s.runs()[0].run_id))
        assert done == (kept if kept is not None else len(replay))  # the good batches before it are kept


def _agents_running(sshd) -> list[int]:
    found = []
    for pid in descendants(sshd.proc.pid):
        try:
            if b"agent.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:  # it just exited
            pass
    return found


def test_hung_agent_times_out_and_keeps_partial_results(sshd, replay, tiny_exports, tmp_path):
    device = board(sshd, tmp_path)
    device.agent_source = stub_agent(tmp_path, "if obj.get('type') == 'batch' and obj['first'] == 14:\n"
                                               "    time.sleep(3600)\n_emit(obj)")
    device.limits = Limits(connect=5, step=30, first=120, line=2.0, retries=0)
    with Store(tmp_path / "s.sqlite") as s:
        t0 = time.monotonic()
        with pytest.raises(SshError, match=r"no answer from the agent for 2 s \(null, 14 of \d+ samples done\): the "
                                           r"board hangs .* the samples received are kept"):
            od.replay_run(s, device, _job(tiny_exports["onnx"], "null"), replay=replay, batch_size=7, warmup=0)
        assert time.monotonic() - t0 < 30 and len(s.done_samples(s.runs()[0].run_id)) == 14
    deadline = time.monotonic() + 10
    while _agents_running(sshd) and time.monotonic() < deadline:  # its stdin closed: the board agent exits
        time.sleep(0.1)
    assert _agents_running(sshd) == []


def test_host_keys_are_verified_never_trusted(sshd, tmp_path):
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    with pytest.raises(SshError, match=rf"the host key of 127\.0\.0\.1:{sshd.port} is not in .*empty_known_hosts, and a "
                                       rf"new key is never trusted automatically; check its fingerprint .*then trust "
                                       rf"it: `ssh-keyscan -p {sshd.port} 127\.0\.0\.1 >> .*empty_known_hosts`"):
        board(sshd, tmp_path, known_hosts=str(kh)).status()
    assert kh.read_text() == ""  # nothing was added behind the user's back
    other = tmp_path / "other_key"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(Path(str(other) + '.pub').read_text().split()[:2])}\n")
    with pytest.raises(SshError, match=r"CHANGED since it was trusted .*ssh-keygen -R '\[127\.0\.0\.1\]:\d+'"):
        board(sshd, tmp_path, known_hosts=str(kh)).status()
    with pytest.raises(SshError, match=r"refused the login with .*other_key; install the public key on the board "
                                       r"\(`ssh-copy-id -i .*other_key\.pub"):
        board(sshd, tmp_path, key=str(other)).status()


def test_unreachable_board_is_one_line(tmp_path, capsys):
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.jetson]\nkind = "ssh"\nhost = "127.0.0.1"\nport = 1\nruntimes = ["tensorrt"]\n')
    assert on_device.main(["--device", "jetson", "--inventory", str(inv), "--model", __file__, "--patches", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: device 'jetson' is unreachable at 127.0.0.1:1 (")


# -- a hostile board: its agent lies; every lie is refused in one line, nothing of it is stored ------------------
def _lie(body: str, first: int | None = None) -> str:
    """An agent whose batch line at row `first` (every batch line: None) is rewritten by `body` (sees obj, np)."""
    when = "" if first is None else f" and obj['first'] == {first}"
    return (f"if obj.get('type') == 'batch'{when}:\n    import numpy as np\n"
            + "".join(f"    {ln}\n" for ln in body.splitlines()) + "_emit(obj)")


def _logits(n: str = "obj['n']", k: str = "obj['k']", poke: str = "") -> str:
    """Lines of a lie: replace the batch's logits by zeros of (n, k), `poke` applied to `a`."""
    return (f"a = np.zeros(({n}, {k}), '<f4')\n{poke}\nobj['n'], obj['k'] = a.shape\n"
            "obj['logits'] = base64.b64encode(a.tobytes()).decode()")


def _one_line(err: Exception) -> str:
    text = str(err)
    assert isinstance(err, QadtrError) and "\n" not in text and text.isprintable(), text  # no escape reaches a terminal
    return text


@pytest.mark.parametrize("patch, host_knows_k, match, kept", [
    (_lie(_logits(poke="a[1, 2] = np.nan"), 7), True, r"1 NaN/inf logits in the 7x10 batch at row 7 \(first at row 8\)"
     r".*computed it: compare with --device local", 7),
    (_lie(_logits(poke="a[:, 0] = np.inf"), 0), True, r"7 NaN/inf logits in the 7x10 batch at row 0", 0),
    (_lie(_logits(poke="a[-1, -1] = -np.inf")), False, r"1 NaN/inf logits in the 7x10 batch at row 0", 0),
    (_lie(_logits(k="1")), True, r"a batch of 7x1 logits at row 0 \(the replay has \d+ rows, 10 logits per image\)", 0),
    (_lie(_logits(k="1")), False, r"a batch of 7x1 logits at row 0 \(.*a classifier has 2 or more logits per image\)",
     0),
    (_lie(_logits(k="12")), True, r"a batch of 7x12 logits at row 0 \(the replay has \d+ rows, 10 logits per image\)",
     0),
    (_lie(_logits(k="5"), 7), False, r"a batch of 7x5 logits at row 7 \(the replay has \d+ rows, 10 logits per image\)",
     7),
    (_lie(_logits(n="3"), 7), True, r"a batch of 3x10 logits at row 7 \(the replay has \d+ rows, 7 per batch\)", 7),
    ("if obj.get('type') == 'hello':\n    obj['batch'] = 3\n_emit(obj)", True,
     r"a hello line announcing 3 images per batch \(the run asked for 7\)", 0),
    (_lie("obj = {'type': 'batch', 'pad': 'x' * (9 << 20)}", 7), True,
     r"a line over 8 MiB \(at sample 7\).*pass a smaller --batch-size", 7),
    (_lie("obj = {'type': 'error', 'message': '\\x1b[2J\\x1b]0;owned\\x07boom\\r\\nnext \\u202egnp.exe'}", 7), True,
     r"the agent on the board stopped null: \[2J\]0;ownedboom  next gnp\.exe$", 7),
    (_lie("sys.stderr.write('\\x1b[31mred\\x1b[0m\\n')\nsys.exit(0)", 14), True,
     r"without finishing \(exit 0: \[31mred\[0m\)", 14),
], ids=["nan", "inf", "-inf-k-unknown", "k1", "k1-k-unknown", "k-not-the-artifacts", "k-changes-mid-run", "n-wrong",
        "hello-batch", "oversized-line", "escapes-in-error", "escapes-in-stderr"])
def test_a_lying_board_is_refused_and_the_run_resumes(patch, host_knows_k, match, kept, sshd, replay, tiny_exports,
                                                      tmp_path, monkeypatch):
    """Each lie ends the run with one printable line naming what the board sent; the batches before it stay, none
    of it is stored, and the same command on an honest board resumes from there to a complete, finite run."""
    if not host_knows_k:  # a host that cannot read the artifact: k is the run's first batch's
        monkeypatch.setattr("devices._board_lines.expected_layout", lambda *a, **k: (None, None))
    device = board(sshd, tmp_path)
    device.agent_source = stub_agent(tmp_path, patch)
    job = _job(tiny_exports["onnx"], "null")
    with Store(tmp_path / "s.sqlite") as s:
        with pytest.raises(QadtrError) as caught:
            od.replay_run(s, device, job, replay=replay, batch_size=7, warmup=0)
        assert re.search(match, _one_line(caught.value)), str(caught.value)
        run_id = s.runs()[0].run_id
        assert s.done_samples(run_id) == set(range(kept))  # what arrived before the lie stays, the lie is not stored
        out = od.replay_run(s, board(sshd, tmp_path), job, replay=replay, batch_size=7, warmup=0)
        assert out.run.run_id == run_id and out.replayed == len(replay) - kept and out.run.complete
        logits = s.logits(run_id)
        assert logits.shape == (len(replay), 10) and not logits.any()  # the null runner's zeros, every row


@pytest.mark.parametrize("patch, match", [
    ("obj['runtimes'] = ['onnxrt', 'null']", r"runtimes = \['onnxrt', 'null'\], not an object of name"),
    ("obj['runtimes']['null'] = {'version': None}", r"runtimes\.null = \{'version': None\}, not an object with "
                                                    r"available = true or false"),
    ("obj['runtimes']['onnxrt'] = 'yes'", r"runtimes\.onnxrt = 'yes', not an object with available"),
    ("obj['runtimes']['onnxrt']['version'] = [1, 2]", r"runtimes\.onnxrt\.version = \[1, 2\], not a string"),
    ("obj['meters'] = 'none'", r"meters = 'none', not an object"),
    ("obj['cpu'] = {'model': 'x'}", r"cpu = \{'model': 'x'\}, not a string"),
    ("obj['cores'] = '4'", r"cores = '4', not a positive integer"),
    ("obj['host'] = [1]", r"host = \[1\], not an object"),
    ("obj = {'type': 'info', 'agent': 1, 'pad': 'x' * 70000}", r"info answer is \d+ bytes, over 64 KiB"),
    ("print('\\x1b[31mGARBAGE\\x1b[0m', flush=True)\nobj = {}",
     r"the agent answered '\[31mGARBAGE\[0m \{\}', not its info"),
    ("obj = '[' * 30000", r"the agent answered '\[\[\[\[.*not its info line"),
], ids=["runtimes-list", "no-available", "entry-not-dict", "version-list", "meters-string", "cpu-dict", "cores-string",
        "host-list", "oversized", "garbage", "deeply-nested"])
def test_a_malformed_info_line_is_refused(patch, match, sshd, replay, tiny_exports, tmp_path):
    device = board(sshd, tmp_path)
    device.agent_source = stub_agent(tmp_path, "if obj.get('type') == 'info':\n"
                                               + "".join(f"    {ln}\n" for ln in patch.splitlines())
                                               + "if isinstance(obj, str):\n    print(obj, flush=True)\nelse:\n"
                                                 "    _emit(obj)")
    with pytest.raises(SshError) as caught:
        device.status()
    assert re.search(match, _one_line(caught.value)), str(caught.value)
    with Store(tmp_path / "s.sqlite") as s:  # the device is described before a run opens: nothing is stored
        with pytest.raises(SshError, match=match):
            od.replay_run(s, device, _job(tiny_exports["onnx"], "null"), replay=replay, batch_size=7, warmup=0)
        assert s.runs() == []


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_board_text_is_cleaned_before_it_is_shown_or_stored(sshd, replay, tiny_exports, tmp_path):
    """Terminal escapes and control characters in what the board says of itself never reach a status line, the
    device description stored with every run, nor the kernels a run records."""
    evil = "\\x1b[31m\\x1b]0;pwned\\x07\\r\\n\\u202e"
    patch = (f"if obj.get('type') == 'info':\n    obj['cpu'] = '{evil}Cortex'\n    obj['os'] = 'Linux{evil}'\n"
             f"    obj['runtimes']['onnxrt'] = {{'available': False, 'reason': '{evil}gone'}}\n"
             f"    obj['meters']['rapl'] = {{'available': False, 'reason': 'no{evil}'}}\n"
             f"    obj['host']['cpu'] = '{evil}'\n    obj['host']['{evil}'] = ['{evil}', {{'a': '{evil}'}}]\n"
             f"if obj.get('type') == 'hello':\n    obj['kernels'] = 'none{evil}'\n_emit(obj)")
    device = board(sshd, tmp_path, runtimes=["onnxrt", "null"], power="rapl")
    device.agent_source = stub_agent(tmp_path, patch)
    rows = device.status()
    reasons = {(a.kind, a.name): a.reason for a in rows}
    assert reasons[("runtime", "onnxrt")] == "[31m]0;pwned  gone" and reasons[("power", "rapl")] == "no[31m]0;pwned  "
    described = device.describe()
    assert described["cpu"] == "[31m]0;pwned  Cortex" and described["os"] == "Linux[31m]0;pwned  "
    assert all(text.isprintable() for text in _strings(described)) and all(a.line().isprintable() for a in rows)
    with Store(tmp_path / "s.sqlite") as s:
        out = od.replay_run(s, device, _job(tiny_exports["onnx"], "null"), replay=replay, batch_size=7, warmup=0)
        assert out.run.complete and s.run(out.run.run_id).kernels == "none[31m]0;pwned  "


# -- a query attack through one agent session (devices/_remote_runner.py, `agent.py serve`) ------------------------
def _attack(tiny_exports, out: Path, *extra: str) -> dict:
    """sparse-rs per image on 6 images, budget 20, through eval.query_attack's CLI; result.json's fields."""
    import json

    from eval.query_attack import main

    argv = ["--artifact", str(tiny_exports["onnx"]), "--runtime", "onnxrt", "--images", "6", "--budget", "20",
            "--size", "0.2", "--seed", "3", "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads((out / "result.json").read_text())["_data"]


def test_a_query_attack_on_a_board_is_the_local_attack_through_one_session(sshd, tiny_dataset, tiny_exports,
                                                                           tmp_path, monkeypatch):
    """The same attack, seed and runtime on the same host's cores: through --device the result is the local one
    (ASR, queries, the patch), and every query of the attack travels through ONE `agent.py serve` connection (on a
    fresh board one more start answers the need line that pushes the artifact, and serves nothing)."""
    from devices._ssh import Transport
    from qadtr.attacks import load_patch

    inv = tmp_path / "devices.toml"
    inv.write_text(sshd.inventory("board", runtimes=["onnxrt", "null"]))
    local = _attack(tiny_exports, tmp_path / "local")
    assert local["device"] == {"name": "local", "kind": "local", "where": "local: this machine"}
    serves, real_stream = [], Transport.stream

    def counted(self, words):  # the real ssh process, counted by the command it runs on the board
        serves.extend(["serve"] if "serve" in words else [])
        return real_stream(self, words)

    monkeypatch.setattr(Transport, "stream", counted)
    for name, starts in (("fresh", 2), ("cached", 1)):  # the second board run finds the artifact on the board
        serves.clear()
        remote = _attack(tiny_exports, tmp_path / name, "--device", "board", "--inventory", str(inv))
        assert remote["asr"] == local["asr"] and remote["queries"] == local["queries"]
        assert remote["kernels"] == local["kernels"] and remote["n"] == local["n"]
        a, b = load_patch(tmp_path / "local" / "patch.npz"), load_patch(tmp_path / name / "patch.npz")
        assert np.array_equal(a.values, b.values) and np.array_equal(a.placement.x, b.placement.x)
        device, session = remote["device"], remote["device"]["session"]
        assert (device["name"], device["kind"], device["where"]) == ("board", "ssh", f"ssh 127.0.0.1:{sshd.port}")
        assert device["host"]["machine"] == local["host"]["machine"]  # the board's fingerprint (the same box here)
        assert session["sessions"] == 1 and session["ssh_starts"] == starts == len(serves)
        assert session["requests"] >= 10 and 0 < session["board_seconds"] <= session["round_trip_seconds"]
    assert _agents_running(sshd) == []  # closed: no agent is left serving on the board


def test_a_dead_query_session_is_one_line(sshd, tiny_exports, tiny_images, tmp_path):
    """ssh dropped mid-session: the next infer raises one SshError line naming the fix, and the runner closes."""
    from devices.runtimes import feed_format

    runner = board(sshd, tmp_path, runtimes=["onnxrt"]).open_runner("onnxrt", tiny_exports["onnx"])
    with runner:
        feed = feed_format(runner).feed(tiny_images[:4])
        assert runner.infer(feed)["logits"].shape == (4, 10) and runner.last_inference_time > 0
        sshd.kill()
        with pytest.raises(SshError) as caught:
            runner.infer(feed)
        assert re.search(r"device 'board': .*query session.*re-run \(a query attack continues with --resume\)",
                         _one_line(caught.value)), str(caught.value)
        with pytest.raises(SshError, match=r"the query session ended after an earlier failure"):
            runner.infer(feed)
    assert not runner.is_active and runner.sessions == 1


def test_query_devices_are_refused_in_one_line(sshd, tiny_dataset, tiny_exports, tmp_path, capsys):
    from eval.query_attack import main

    inv = tmp_path / "devices.toml"
    inv.write_text(sshd.inventory("board", runtimes=["null"], groups=["lab"]) + sshd.inventory("other"))
    base = ["--artifact", str(tiny_exports["onnx"]), "--runtime", "onnxrt", "--images", "4", "--budget", "4",
            "--inventory", str(inv)]
    for i, (device, match) in enumerate([
            ("jetson", r"no device or group 'jetson'; devices: local, .*board, other"),
            ("board", r"device 'board' does not offer runtime 'onnxrt' \(its inventory entry lists null\)"),
            ("board,other", r"--device board,other: a query attack runs on one device, this names 2")]):
        assert main([*base, "--device", device, "--out", str(tmp_path / f"q{i}")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and re.search(match, err[0]), err


@pytest.mark.parametrize("patch, match", [
    ("if obj.get('type') == 'hello':\n    obj.pop('inputs')\n_emit(obj)", r"a hello line without its inputs"),
    ("if obj.get('type') == 'hello':\n    obj['input_quantization'] = {'pixels': ['x', 0]}\n_emit(obj)",
     r"input_quantization is not \{input: \[scale, zero point\]\}"),
    ("if obj.get('type') == 'logits':\n    obj['id'] += 1\n_emit(obj)", r"a 'logits' line answering request 1"),
    (_lie(_logits(poke="a[0, 0] = np.nan")).replace("'batch'", "'logits'"), r"1 NaN/inf logits in the 4x10 batch"),
    ("if obj.get('type') == 'logits':\n    obj['n'] = 3\n_emit(obj)", r"a batch of 3x10 logits at row 0"),
], ids=["no-inputs", "bad-quantization", "wrong-id", "nan", "short"])
def test_a_lying_query_session_is_refused_in_one_line(patch, match, sshd, tiny_exports, tiny_images, tmp_path):
    """What the serving agent sends is checked as a replay's lines are: each lie is one SshError line, and the
    session is closed (the next infer says so)."""
    from devices.runtimes import feed_format

    device = board(sshd, tmp_path, runtimes=["null"])
    device.agent_source = stub_agent(tmp_path, patch)
    runner = device.open_runner("null", tiny_exports["onnx"])
    with pytest.raises(SshError) as caught:
        with runner:
            runner.infer(feed_format(runner).feed(tiny_images[:4]))
    assert re.search(match, _one_line(caught.value)), str(caught.value)
    assert not runner.is_active
