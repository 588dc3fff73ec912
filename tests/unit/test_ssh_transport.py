"""devices/ssh.py and devices/_ssh.py without a board: the ssh/scp argument lists, how ssh's failures are told
apart, replay refusals before any connection, and the checks on every result line (tests/ssh has the real sshd)."""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from devices import BatchStream, DeviceSpec
from devices._ssh import ConnectionLost, Limits, RemoteFailed, SshError, Transport, tail
from devices.ssh import SshDevice, trt_batch
from qadtr import QadtrError


def _spec(**kw) -> DeviceSpec:
    base = dict(name="pi", kind="ssh", host="10.1.2.3", port=2201, user="pi", python="venv/bin/python3",
                workdir="work/qadtr", power="none")
    return DeviceSpec(**{**base, **kw})


def test_argv_lists_and_the_one_remote_string(tmp_path):
    key = tmp_path / "id"
    key.write_text("")
    link = Transport(_spec(key=str(key), known_hosts=str(tmp_path / "kh")), lambda: Limits(connect=7))
    argv = link.ssh_argv(["venv/bin/python3", "work/qadtr/agent-1/agent.py", "run", "work/qadtr/jobs/ab.json", "7"])
    assert argv[:2] == ["ssh", "-T"] and argv[-3:-1] == ["--", "10.1.2.3"]
    opts = " ".join(argv)
    for opt in ("BatchMode=yes", "StrictHostKeyChecking=yes", f"UserKnownHostsFile={tmp_path / 'kh'}",
                "ConnectTimeout=7", "IdentitiesOnly=yes", "User=pi", "-p 2201", f"-i {key}"):
        assert opt in opts
    assert shlex.split(argv[-1]) == ["venv/bin/python3", "work/qadtr/agent-1/agent.py", "run", "work/qadtr/jobs/ab.json",
                                     "7"]  # the board's shell sees exactly these words
    scp = Transport(_spec(host="fe80::1"), lambda: Limits()).scp_argv(tmp_path / "a b.npy", "work/qadtr/blobs/x.npy")
    assert scp[0] == "scp" and scp[-2:] == [str(tmp_path / "a b.npy"), "[fe80::1]:work/qadtr/blobs/x.npy"]
    assert "-P" in scp and scp[scp.index("-P") + 1] == "2201"


@pytest.mark.parametrize("field, value, match", [
    ("python", "python3; rm -rf ~", r"python = .*: use a plain path"),
    ("workdir", "../elsewhere", r"workdir = .*no '\.\.'"),
    ("workdir", "~/qadtr", r"workdir = .*no '~'"),
    ("workdir", "-rf", r"workdir = '-rf'"),
    ("known_hosts", "/a b/known_hosts", r"known_hosts = .*spaces, quotes or '%'"),
    ("key", "/keys/%u", r"key = .*spaces, quotes or '%'"),
])
def test_inventory_refuses_what_a_shell_or_ssh_would_reinterpret(field, value, match):
    with pytest.raises(ValueError, match=match):
        _spec(**{field: value})


def test_ssh_failures_are_told_apart():
    link = Transport(_spec(known_hosts="/k/known_hosts"), lambda: Limits())
    err = link.error("agent info", 255, "No ED25519 host key is known for [10.1.2.3]:2201 and you have requested "
                                        "strict checking.\r\nHost key verification failed.\r\n")
    assert type(err) is SshError and "not in /k/known_hosts, and a new key is never trusted automatically" in str(err)
    assert "`ssh-keyscan -p 2201 10.1.2.3 >> /k/known_hosts`" in str(err)
    err = link.error("x", 255, "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.")
    assert type(err) is SshError and "ssh-keygen -R '[10.1.2.3]:2201' -f /k/known_hosts" in str(err)
    err = link.error("x", 255, "pi@10.1.2.3: Permission denied (publickey).")
    assert type(err) is SshError and "ssh-copy-id -i ~/.ssh/id_ed25519.pub -p 2201 pi@10.1.2.3" in str(err)
    err = link.error("pushing the job", 255, "ssh: connect to host 10.1.2.3 port 2201: Connection refused\r\n")
    assert type(err) is ConnectionLost and err.reason == "ssh: connect to host 10.1.2.3 port 2201: Connection refused"
    err = link.error("agent info", 127, "bash: line 1: venv/bin/python3: No such file or directory\n")
    assert type(err) is RemoteFailed and "agent info failed on the board (exit 127): bash: line 1" in str(err)
    assert tail("a\r\n\nb\nc\nd\n") == "b | c | d"


@pytest.fixture
def device(tmp_path):
    with SshDevice(_spec(runtimes=("onnxrt", "tensorrt", "fakequant", "null"))) as device:  # close(): its scratch folder
        yield device


IMAGES = np.zeros((10, 8, 8, 3), np.uint8)


def test_replay_refusals_before_any_connection(device, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    cases = [
        (("litert-xnnpack", onnx), {}, r"does not offer runtime 'litert-xnnpack'"),
        (("fakequant", onnx), {}, r"runtime 'fakequant' runs on the host only .* use --device local"),
        (("onnxrt", tmp_path / "m.tflite"), {}, r"not found"),
        (("tensorrt", tmp_path / "m.engine"), {}, r"not found"),
        (("onnxrt", onnx), {"options": {"threads": 1}}, r"runtime 'onnxrt' on a board has no option threads; it takes "
                                                         r"graph_optimization, intra_op_threads"),
        (("null", onnx), {"batch_size": 0}, r"batch_size=0"),
    ]
    for args, kw, match in cases:
        with pytest.raises(QadtrError, match=match):
            device.replay(*args, IMAGES, **kw)
    (tmp_path / "m.engine").write_bytes(b"x")
    with pytest.raises(QadtrError, match=r"m.engine: a board builds its own TensorRT engine; pass the TensorRT-bound"):
        device.replay("tensorrt", tmp_path / "m.engine", IMAGES)
    (tmp_path / "trt_build.json").write_text(json.dumps({"profile": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8],
                                                                     "max": [8, 3, 8, 8]}}))
    assert trt_batch(onnx) == (1, 4, 8)
    with pytest.raises(QadtrError, match=r"--batch-size 9 exceeds the engine profile's maximum 8 \(trt_build.json\)"):
        device.replay("tensorrt", onnx, IMAGES, batch_size=9)
    assert isinstance(device.replay("tensorrt", onnx, IMAGES, batch_size=8), BatchStream)  # nothing connects until read
    with pytest.raises(QadtrError, match=r"device 'pi': key .*nokey not found"):
        SshDevice(_spec(key=str(tmp_path / "nokey")))


def _line(**kw) -> bytes:
    logits = np.arange(6, dtype="<f4").reshape(2, 3)
    msg = {"type": "batch", "first": 4, "n": 2, "k": 3, "seconds": 0.5, "energy_j": None,
           "logits": base64.b64encode(logits.tobytes()).decode(), **kw}
    return json.dumps(msg).encode()


@pytest.mark.parametrize("fields, match", [
    ({"first": 6}, r"rows from 6, expected 4 \(a skipped or repeated batch\)"),
    ({"first": "4"}, r"a batch line without integer first/n/k"),
    ({"n": True}, r"a batch line without integer first/n/k"),
    ({"n": 9}, r"a batch of 9x3 logits at row 4 \(the replay has 10 rows\)"),
    ({"k": 4}, r"12 bytes of logits for 2x4 float32|a batch of 2x4 logits"),
    ({"logits": "***"}, r"undecodable logits for 2x3 float32"),
    ({"logits": base64.b64encode(b"\0" * 20).decode()}, r"20 bytes of logits for 2x3 float32 \(short results\)"),
    ({"seconds": -1}, r"inference time -1"),
    ({"seconds": None}, r"inference time None"),
    ({"energy_j": float("inf")}, r"energy inf"),
])
def test_result_lines_are_checked(device, fields, match):
    with pytest.raises(SshError, match=match):
        device._batch(json.loads(_line(**fields)), _line(**fields), 4, total=10, k=3 if "k" in fields else None)
    good = device._batch(json.loads(_line()), _line(), 4, total=10, k=3)
    assert good.first == 4 and good.logits.dtype == np.float32 and good.logits.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(SshError, match=r"a malformed line \(expected the batch from sample 4\)"):
        device._message(b'{"type": "batches"}', 4)


# -- what the board sends is bounded and cleaned --------------------------------------------------------------
def _writer(code: str) -> list[str]:
    """A local process standing in for a board's ssh: it runs `code` with sys and `MB` (1 MiB of 'x') defined."""
    import sys

    return [sys.executable, "-c", "import sys\nMB = b'x' * (1 << 20)\n" + code]


def test_a_line_over_max_line_is_refused_without_being_held():
    import tracemalloc

    from devices._ssh import MAX_LINE, LineTooLong, Stream

    tracemalloc.start()
    try:
        with Stream(_writer("for _ in range(64):\n    sys.stdout.buffer.write(MB)\nsys.stdout.buffer.flush()")) as s:
            with pytest.raises(LineTooLong, match=r"a line over 8 MiB starting b'xxxx"):
                s.line(60)  # 64 MiB without a newline: cut at MAX_LINE, the rest never read
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_LINE, peak  # not the 64 MiB the board sent


def test_lines_read_ahead_are_bounded_and_none_is_lost():
    import time
    import tracemalloc

    from devices._ssh import QUEUED, Stream

    tracemalloc.start()
    try:
        with Stream(_writer("for i in range(100):\n    sys.stdout.buffer.write(MB + b'%d\\n' % i)\n")) as s:
            time.sleep(1.5)  # a host busy elsewhere: the board's 100 MiB wait in its pipe, not in this process
            held = tracemalloc.get_traced_memory()[0]
            got = [s.line(60)[-4:] for _ in range(100)]
            assert s.line(60) is None
    finally:
        tracemalloc.stop()
    assert held < (QUEUED + 4) * (1 << 20), held
    assert [ln[-4:].strip(b"x\n") for ln in got] == [b"%d" % i for i in range(100)]


def test_a_short_commands_answer_is_capped(tmp_path):
    link = Transport(_spec(), lambda: Limits())
    with pytest.raises(SshError, match=r"device 'pi': agent info: the board answered more than 8 MiB \(starting "
                                       r"b'xxx.*refused unread; check what runs as `venv/bin/python3` on the board"):
        link._call(_writer("for _ in range(64):\n    sys.stdout.buffer.write(MB)"), "agent info", 60)
    assert link._call(_writer("print('ok')"), "agent info", 60) == "ok\n"


def test_board_text_in_ssh_errors_is_cleaned():
    link = Transport(_spec(), lambda: Limits())
    err = link.error("agent info", 1, "\x1b[2J\x1b]0;owned\x07python3: \u202egnp.exe not found\r\n")
    assert str(err) == "device 'pi': agent info failed on the board (exit 1): [2J]0;ownedpython3: gnp.exe not found"
    lost = link.error("x", 255, "ssh: \x1b[31mConnection refused\x1b[0m\n")
    assert lost.reason == "ssh: [31mConnection refused[0m" and str(lost).isprintable()


def test_the_host_names_blobs_only_as_the_agent_accepts_them(device, tmp_path):
    from devices import _board_lines as lines
    from devices.agent import BLOB

    for suffix in (".onnx", ".tflite", ".npy", ""):
        assert BLOB.fullmatch(f"../blobs/{lines.blob_name('a' * 64, suffix)}")
    odd = tmp_path / "m.on nx;rm"
    odd.write_bytes(b"x")
    with device.replay("null", odd, IMAGES) as rep:  # refused before any connection: no board is reachable here
        with pytest.raises(SshError, match=r"cannot push a file with suffix '\.on nx;rm' to a board .*rename the "
                                           r"artifact"):
            next(rep)


def test_the_host_reads_k_and_the_batch_from_the_artifact(tiny_exports, tmp_path):
    from devices._board_lines import expected_layout

    assert expected_layout("onnxrt", tiny_exports["onnx"], {}, batch_size=7) == (7, 10)  # a dynamic batch: the one asked for
    assert expected_layout("litert-xnnpack", tiny_exports["tflite"], {}, batch_size=7) == (7, 10)
    assert expected_layout("tensorrt", tiny_exports["onnx"], {}, batch_size=7) == (None, 10)  # its profile decides the batch
    assert expected_layout("null", tiny_exports["onnx"], {"num_classes": 3}, batch_size=7) == (7, 3)
    import onnx
    from onnx import TensorProto, helper

    fixed = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "fixed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    onnx.save(helper.make_model(fixed), tmp_path / "fixed.onnx")
    assert expected_layout("onnxrt", tmp_path / "fixed.onnx", {}, batch_size=7) == (1, 10)  # a fixed batch: the agent runs at it
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert expected_layout("onnxrt", tmp_path / "junk.onnx", {}, batch_size=7) == (None, None)  # unknown: the first batch decides


def test_the_known_hosts_hint_leaves_the_tilde_to_the_shell():
    """The pasted command must reach the real file: a quoted `~` is a folder literally named `~`."""
    import subprocess

    link = Transport(_spec(), lambda: Limits())  # known_hosts: the default ~/.ssh/known_hosts
    err = str(link.error("agent info", 255, "Host key verification failed.\r\n"))
    assert ">> ~/.ssh/known_hosts`" in err and "'~" not in err
    other = Transport(_spec(known_hosts="~/keys/kh"), lambda: Limits()).error("x", 255, "Host key verification "
                                                                               "failed.")
    pasted = str(other).rsplit(">> ", 1)[1].rstrip("`")
    home = subprocess.run(["bash", "-c", f"printf %s {pasted}"], capture_output=True, text=True).stdout
    assert home == str(Path.home() / "keys" / "kh")  # what a shell makes of the pasted path: the real file
