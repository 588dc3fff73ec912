"""Scratch folders (qadtr/_scratch.py) leave nothing behind: not on an error, not on Ctrl-C, not on SIGTERM / SIGHUP
(qadtr._cli.run_cli), and what a kill -9 left is swept by the next job of the same kind."""

from __future__ import annotations

import _thread
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qadtr import QadtrError
from qadtr._scratch import make_scratch, scratch, sweep

ROOT = Path(__file__).resolve().parents[2]
ERRORS = [RuntimeError, KeyboardInterrupt]  # a bug or a failed step; Ctrl-C (SIGTERM arrives as one: run_cli)


@pytest.fixture
def tmp(tmp_path, monkeypatch) -> Path:
    """The system temp folder, for the test: every scratch folder made in it is seen."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("qadtr-"))


def dead_pid() -> int:
    """The pid of a process that has exited (it ran and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("error", ERRORS)
def test_a_scratch_block_is_removed_however_it_ends(tmp, error):
    with pytest.raises(error):
        with scratch("tflite") as path:
            (path / "model.tflite").write_bytes(b"x" * 1000)
            assert re.fullmatch(rf"qadtr-tflite-{os.getpid()}-\w+", path.name) and path.parent == tmp
            raise error("boom")
    assert ours(tmp) == []


def _spy(tmp: Path, kind: str, error: type[BaseException], seen: list):
    """A stand-in for the first step inside a site's scratch block: notes the scratch folders, then fails."""
    def fail(*args, **kwargs):
        seen.extend(ours(tmp))
        raise error("boom")
    return fail


def _fusion_report(monkeypatch, fail):
    import devices.onnxrt
    from export._onnx_graph import fusion_report

    monkeypatch.setattr(devices.onnxrt, "OnnxrtRunner", fail)
    fusion_report("m.onnx")


def _tflite_prove(monkeypatch, fail):
    import devices.litert
    from export._tflite_proof import prove as _prove

    monkeypatch.setattr(devices.litert, "LiteRTRunner", fail)
    built = SimpleNamespace(data=b"x", activations=[])
    _prove(None, built, built, images=np.zeros((1, 8, 8, 3), np.uint8), kernels=("xnnpack",))


def _haswell(monkeypatch, fail):
    import eval.exactness as ex

    monkeypatch.setattr(ex.shutil, "which", lambda name: "/usr/bin/qemu-x86_64")
    monkeypatch.setattr(ex.subprocess, "run", fail)
    ex._haswell_logits(Path("m.onnx"), np.zeros((1, 8, 8, 3), np.uint8))


def _divergence(monkeypatch, fail, tmp: Path):
    import eval._divergence as dv
    import export.tflite

    artifact = tmp / "m.tflite"
    artifact.write_bytes(b"x")
    monkeypatch.setattr(dv, "_tflite_reference", lambda net, artifact, images: ([], {}))
    monkeypatch.setattr(export.tflite, "with_outputs", fail)
    dv._tflite(None, artifact, np.zeros((1, 8, 8, 3), np.uint8), kernels="xnnpack")


def _report(monkeypatch, fail):
    pytest.importorskip("matplotlib")  # the report extra
    import eval.transfer
    from eval._report_figures import fig_transfer

    monkeypatch.setattr(eval.transfer, "write_heatmaps", fail)
    fig_transfer([])


SITES = {"onnx": _fusion_report, "tflite": _tflite_prove, "exactness": _haswell, "divergence": _divergence,
         "report": _report}


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("kind", SITES)
def test_an_error_inside_a_sites_scratch_block_leaves_nothing(tmp, monkeypatch, kind, error):
    seen: list[str] = []
    site = SITES[kind]
    args = (tmp,) if kind == "divergence" else ()
    with pytest.raises(error, match="boom"):
        site(monkeypatch, _spy(tmp, kind, error, seen), *args)
    assert len(seen) == 1 and seen[0].startswith(f"qadtr-{kind}-{os.getpid()}-")  # named for the sweep
    assert ours(tmp) == []


def test_every_scratch_folder_of_the_project_is_made_by_qadtr_scratch():
    """One implementation: a temporary folder made anywhere else would be neither named for the sweep nor swept."""
    allowed = {"qadtr/_scratch.py": {"mkdtemp"},  # the helper itself
               "qadtr/_config.py": {"mkstemp"}, "qadtr/_cli.py": {"mkstemp"}}  # a file beside its target, replaced
    found = {}
    for pkg in ("qadtr", "export", "eval", "devices", "bench"):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            names = set(re.findall(r"\b(mkdtemp|mkstemp|TemporaryDirectory|NamedTemporaryFile|TemporaryFile|"
                                   r"SpooledTemporaryFile)\b", path.read_text())) - allowed.get(rel, set())
            if names:
                found[rel] = sorted(names)
    assert found == {}, f"use qadtr._scratch.scratch / make_scratch instead: {found}"


def test_a_dead_processs_folder_is_swept_a_live_ones_kept(tmp):
    dead, alive = tmp / f"qadtr-ssh-{dead_pid()}-abc", tmp / f"qadtr-ssh-{os.getpid()}-def"
    parent = tmp / f"qadtr-ssh-{os.getppid()}-ghi"  # another live process (pytest's parent)
    other_kind, no_pid = tmp / f"qadtr-tflite-{dead_pid()}-jkl", tmp / "qadtr-ssh-x-mno"
    for d in (dead, alive, parent, other_kind, no_pid):
        d.mkdir()
        (d / "images.npy").write_bytes(b"x" * 100)
    target = tmp / "elsewhere"
    (target / "keep").mkdir(parents=True)
    link = tmp / f"qadtr-ssh-{dead_pid()}-link"
    link.symlink_to(target)  # a link is neither followed nor removed
    new = make_scratch("ssh")
    assert not dead.exists() and all(d.is_dir() for d in (alive, parent, other_kind, no_pid, target / "keep"))
    assert link.is_symlink() and new.name.startswith(f"qadtr-ssh-{os.getpid()}-")
    assert sweep("ssh") == []  # nothing stale left


def test_what_a_kill_9_left_is_swept_by_the_next_job_of_its_kind(tmp):
    code = ("import sys, time\nfrom qadtr._scratch import make_scratch\n"
            "p = make_scratch('ssh')\n(p / 'x.npy').write_bytes(b'x' * 1000)\nprint(p, flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    left = Path(proc.stdout.readline().strip())
    proc.kill()  # kill -9: no cleanup runs
    proc.wait()
    assert left.is_dir() and left.parent == tmp
    with scratch("tflite"):  # another kind: not its job to sweep
        assert left.is_dir()
    with scratch("ssh"):
        assert not left.exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_to_a_cli_inside_its_scratch_block_leaves_nothing(tmp, signum, code):
    script = ("import sys, time\nfrom qadtr._cli import run_cli\nfrom qadtr._scratch import scratch\n"
              "def body():\n    with scratch('tflite') as tmp:\n        (tmp / 'm.tflite').write_bytes(b'x' * 1000)\n"
              "        print(tmp, flush=True)\n        time.sleep(60)\n"
              "sys.exit(run_cli('export.tflite', body, []))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TMPDIR": str(tmp)},
                            # a CLI keeps an ignored signal ignored (under nohup SIGHUP is): start from the default
                            preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    inside = Path(proc.stdout.readline().strip())
    assert inside.is_dir()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and "INTERRUPTED |" in err and "Traceback" not in err
    assert ours(tmp) == []


def test_run_cli_restores_the_signal_handlers_and_leaves_a_set_one_alone():
    from qadtr._cli import run_cli

    before = signal.getsignal(signal.SIGTERM)
    inside = []
    assert run_cli("x", lambda: inside.append(signal.getsignal(signal.SIGTERM)), []) == 0
    assert inside[0] not in (signal.SIG_DFL, before) and signal.getsignal(signal.SIGTERM) == before
    mine = lambda signum, frame: None  # noqa: E731 - an embedding program's own handler
    old = signal.signal(signal.SIGTERM, mine)
    try:
        inside.clear()
        run_cli("x", lambda: inside.append(signal.getsignal(signal.SIGTERM)), [])
        assert inside == [mine] and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


# -- the SSH device: a scratch folder held across calls, removed by close() ---------------------------------
@pytest.mark.parametrize("error", ERRORS)
def test_an_ssh_replay_that_fails_leaves_no_scratch(tmp, error):
    from devices import DeviceSpec
    from devices.ssh import SshDevice

    seen: list[str] = []

    class Link:  # the transport, without a board: every step succeeds until the stream starts
        where = "10.1.2.3:22"

        def run(self, words, **kw):
            return ""

        def push(self, local, remote, **kw):
            pass

        def stream(self, words):
            (folder,) = ours(tmp)
            seen.extend([folder, *os.listdir(tmp / folder)])
            raise error("boom")

    artifact = tmp / "m.onnx"
    artifact.write_bytes(b"x")
    device = SshDevice(DeviceSpec(name="pi", kind="ssh", host="10.1.2.3", power="none", runtimes=("null",)))
    device.link, device._info = Link(), {}
    with pytest.raises(error, match="boom"), device:
        with device.replay("null", artifact, np.zeros((4, 8, 8, 3), np.uint8), batch_size=2, warmup=0) as batches:
            next(batches)
    assert seen[0].startswith(f"qadtr-ssh-{os.getpid()}-")  # named for the sweep
    assert any(n.endswith(".npy") for n in seen) and any(n.startswith("agent-") for n in seen)  # it was in use
    assert ours(tmp) == []


def test_a_killed_scp_is_killed_with_its_step(monkeypatch):
    """Ctrl-C / SIGTERM during a push: scp does not go on alone (it read from the scratch folder being removed)."""
    import devices._ssh as ssh

    started = []
    real = subprocess.Popen

    def popen(argv, **kw):
        proc = real([sys.executable, "-c", "import time; time.sleep(60)"], **kw)
        started.append(proc)
        return proc

    monkeypatch.setattr(ssh.subprocess, "Popen", popen)
    threading.Timer(0.3, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        ssh._capped(["scp"], 30.0, 100)
    assert started[0].poll() is not None  # killed and reaped, not left running


# -- the emulated board's image build: a scratch folder beside the cached image -----------------------------
@pytest.mark.parametrize("error", [QadtrError, KeyboardInterrupt])
def test_an_image_build_that_fails_leaves_no_build_folder(tmp_path, monkeypatch, error):
    import devices._emu_image as img

    stale = tmp_path / "images" / f"qadtr-emu-build-{dead_pid()}-abc"
    (stale / "root").mkdir(parents=True)

    def run(argv, **kw):
        assert not stale.exists()  # swept when this build started
        raise error("mmdebstrap failed")

    monkeypatch.setattr(img, "run", run)
    with pytest.raises(error, match="mmdebstrap failed"):
        img.build_image(tmp_path, log=lambda *a: None)
    assert ours(tmp_path / "images") == []


def test_a_stale_build_folder_with_something_mounted_in_it_is_kept(tmp_path, monkeypatch):
    import devices._emu_image as img

    stale = tmp_path / f"qadtr-emu-build-{dead_pid()}-abc"
    stale.mkdir()

    def mounted(path):
        raise QadtrError(f"{path}/root/proc is still mounted; unmount it")

    monkeypatch.setattr(img, "_refuse_if_mounted", mounted)
    assert sweep("emu-build", tmp_path, img.remove_tree) == [] and stale.is_dir()


# -- a fleet: an interrupt stops every device, each closed before run_fleet returns -------------------------
def test_an_interrupted_fleet_stops_and_closes_every_device(tiny_dataset, tiny_checkpoint, tiny_patches, tmp_path,
                                                            monkeypatch):
    from devices.local import LocalDevice
    from eval import fleet
    from eval.store import Store

    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.a]\nkind = "local"\npower = "none"\ngroups = ["pair"]\n'
                   '[devices.b]\nkind = "local"\npower = "none"\ngroups = ["pair"]\n')
    from devices import BatchStream

    real, closed, started, lock = LocalDevice.replay, [], set(), threading.Lock()

    def slow(self, *args, **kwargs):  # a board that takes its time over every batch
        inner = real(self, *args, **kwargs)

        def produce(outer):
            for batch in inner:
                outer.runner, outer.kernels, outer.feed = inner.runner, inner.kernels, inner.feed
                yield batch
                with lock:  # Ctrl-C in the main thread once both devices have sent a batch
                    started.add(self.name)
                    if len(started) == 2:
                        started.add("interrupted")
                        os.kill(os.getpid(), signal.SIGINT)  # a real signal: it wakes the main thread's wait
                time.sleep(0.1)
        return BatchStream(produce)

    monkeypatch.setattr(LocalDevice, "replay", slow)
    monkeypatch.setattr(LocalDevice, "close", lambda self: closed.append(self.name))
    with pytest.raises(KeyboardInterrupt):
        fleet.replay_on_devices(devices="pair", models=[str(tiny_checkpoint)], patches=str(tiny_patches),
                                eval_subset=16, store_path=tmp_path / "s.sqlite", runtimes=["null"], batch_size=1,
                                warmup=0, inventory=str(inv))
    assert sorted(set(closed)) == ["a", "b"]  # closed (a board's scratch folder removed) before it returned
    with Store(tmp_path / "s.sqlite") as s:
        assert [r.complete for r in s.runs()] == [False, False]  # stopped mid-run, not replayed to the end
    assert not fleet.STOPPING.is_set()  # the next fleet runs
