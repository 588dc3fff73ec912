"""eval.store access: read-only opening for readers (also on read-only media) and one writer per run (issue 14)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from eval.store import Store, StoreError, run_key
from test_store import M, _complete, _edit, _fill, _logits, _run


# -- read-only opening (issue 14) ---------------------------------------------------------------------------------
def test_a_missing_or_empty_file_is_refused_read_only_and_left_as_it_is(tmp_path):
    missing, empty = tmp_path / "none.sqlite", tmp_path / "empty.sqlite"
    with pytest.raises(StoreError, match=r"no result store at .*none.sqlite; run `python -m eval.on_device \.\.\.` "
                                         "first or pass --store"):
        Store(missing, readonly=True)
    assert not missing.exists()
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="empty.sqlite is an empty file, not a result store"):
        Store(empty, readonly=True)
    assert empty.stat().st_size == 0
    db = sqlite3.connect(empty)  # a SQLite database, but without a store's tables
    db.execute("PRAGMA user_version=0")
    db.execute("CREATE TABLE t (x)")
    db.execute("DROP TABLE t")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="holds no result store"):
        Store(empty, readonly=True)


@pytest.mark.parametrize("reader", ["report", "compare", "across", "list"])
def test_readers_refuse_an_empty_file_without_making_it_a_store(tmp_path, reader):
    """eval.report turned an empty file into a store (issue 14); every reader opens the store read-only."""
    from eval.compare import across_devices, compare_store
    from eval.fleet import list_runs
    from eval.report import collect

    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    read = {"report": collect, "compare": compare_store, "across": across_devices, "list": list_runs}[reader]
    with pytest.raises(StoreError, match="is an empty file, not a result store"):
        read(empty)
    assert empty.stat().st_size == 0


def test_a_read_only_store_reads_and_refuses_every_write(tmp_path):
    path = tmp_path / "s.sqlite"
    run_id = _complete(path)
    before = path.read_bytes()
    with Store(path, readonly=True) as s:
        assert np.array_equal(s.logits(run_id), _logits(0, M)) and len(s.batches(run_id)) == 3
        writes = [lambda: _run(s, runtime="other"), lambda: s.set_kernels(run_id, "x"), lambda: s.finish(run_id),
                  lambda: s.delete_run(run_id), lambda: s.claim(run_id),
                  lambda: s.write_batch(run_id, first=0, logits=_logits(0, 1), seconds=0.1)]
        for write in writes:
            with pytest.raises(StoreError, match=r"was opened read-only \(Store\(path, readonly=True\)\)"):
                write()
    assert path.read_bytes() == before


_RO_PROBE = """
import sys
from eval.store import Store, StoreError
path, run_id = sys.argv[1], sys.argv[2]
for name in ("ok", "wal"):
    try:
        with Store(f"{path}/{name}.sqlite", readonly=True) as s:
            print(name, "read", s.logits(run_id).shape, len(s.batches(run_id)))
    except StoreError as e:
        print(name, "refused", e)
try:
    Store(f"{path}/ok.sqlite").close()
except StoreError as e:
    print("writer refused", e)
"""


def _on_read_only_media(folder, *args) -> str:
    """Run _RO_PROBE with `folder` read-only: chmod 0555 for a user, a read-only bind mount in a user namespace
    for root (whom chmod does not stop); skipped where neither is possible."""
    import os
    import shlex
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    probe = [sys.executable, "-c", _RO_PROBE, str(folder), *args]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            out = subprocess.run(probe, cwd=root, capture_output=True, text=True, timeout=120)
            return out.stdout + out.stderr
        finally:
            folder.chmod(0o755)
    d = shlex.quote(str(folder))
    bind = f"mount --bind {d} {d} && mount -o remount,ro,bind {d}"
    ns = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    try:
        test = subprocess.run([*ns, f"{bind} && touch {d}/x"], capture_output=True, text=True, timeout=60)
    except OSError:
        pytest.skip("root, and no unshare to mount a folder read-only")
    if "Read-only file system" not in test.stderr:
        pytest.skip(f"root, and no read-only bind mount possible here: {test.stderr.strip()[:200]}")
    out = subprocess.run([*ns, f'{bind} && exec "$0" "$@"', *probe], cwd=root, capture_output=True, text=True,
                         timeout=120)
    return out.stdout + out.stderr


def test_a_store_on_read_only_media_is_read_not_called_foreign(tmp_path):
    """Its folder is read-only, so WAL's -shm index cannot be made: read immutable, never 'not a SQLite result
    store'; unmerged writes in a -wal file there are refused (immutable would not see them); a writer is told."""
    import shutil

    media = tmp_path / "media"
    media.mkdir()
    run_id = _complete(media / "ok.sqlite")
    with Store(tmp_path / "live.sqlite") as s:  # open: its rows still sit in the -wal file
        _fill(s, _run(s).run_id)
        shutil.copy(tmp_path / "live.sqlite", media / "wal.sqlite")
        shutil.copy(tmp_path / "live.sqlite-wal", media / "wal.sqlite-wal")
    out = _on_read_only_media(media, run_id)
    assert "ok read (10, 4) 3" in out, out
    assert "wal refused" in out and "unmerged writes in wal.sqlite-wal" in out, out
    assert "writer refused" in out and "cannot be written" in out and "not a SQLite" not in out, out


# -- one writer per run (issue 14) --------------------------------------------------------------------------------
_CLAIMER = """
import sys
from eval.store import Store, StoreError
with Store(sys.argv[1]) as s:
    try:
        s.claim(sys.argv[2])
    except StoreError as e:
        print("refused", e)
        sys.exit(3)
    print("held", flush=True)
    sys.stdin.readline()  # hold the claim until the test says so
"""


def _claimer(path, run_id: str):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.Popen([sys.executable, "-c", _CLAIMER, str(path), run_id], cwd=Path(__file__).parents[2],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_second_process_writing_the_same_run_fails_at_once(tmp_path):
    import os
    import re
    import socket

    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        run = _run(s, claim=True)
        other = _claimer(path, run.run_id)
        out, _ = other.communicate(timeout=60)
        assert other.returncode == 3, out
        assert re.fullmatch(rf"refused run {run.run_id[:12]} in {re.escape(str(path))} is being written by pid "
                            rf"{os.getpid()} on host {re.escape(socket.gethostname())} since \S+Z; wait for it to "
                            r"finish or pass another --store\n", out), out
        _run(s, claim=True, runtime="other")  # this Store's other runs are not blocked, nor is its own claim
        _run(s, claim=True)
        with Store(path) as again, pytest.raises(StoreError, match=f"pid {os.getpid()} on host"):
            again.claim(run.run_id)  # another Store of this very process: refused too
        _fill(s, run.run_id)
        s.finish(run.run_id)  # releases the claim
        other = _claimer(path, run.run_id)
        assert other.stdout.readline() == "held\n"
        other.communicate("\n", timeout=60)


def test_replay_run_stops_before_inference_while_another_process_writes_the_run(tmp_path):
    """eval.fleet.replay_run of a run another process is writing: one line, no inference, nothing stored."""
    from eval.fleet import Job, replay_run

    class Device:  # a stand-in board that fails the test if asked for any inference
        name, emulated = "local", False

        def describe(self):
            return {}

        def replay(self, *args, **kwargs):
            raise AssertionError("inference started")

    job = Job("onnxrt", tmp_path / "w4.onnx", "w4.onnx", "a" * 64, (4, 4), "c" * 64)
    class Replay:  # what replay_run reads of a replay
        path, sha256, images = tmp_path / "r.npz", "b" * 64, np.zeros((M, 3, 8, 8), np.float32)

        def __len__(self):
            return M

    replay = Replay()
    run_id = run_key(device="local", runtime="onnxrt", artifact_sha256="a" * 64, replay_sha256="b" * 64,
                     options=job.options(4, 1))
    path = tmp_path / "s.sqlite"
    Store(path).close()
    holder = _claimer(path, run_id)
    try:
        assert holder.stdout.readline() == "held\n"
        with Store(path) as s:
            for fresh in (False, True):
                with pytest.raises(StoreError, match=f"run {run_id[:12]} in .* is being written by pid {holder.pid}"):
                    replay_run(s, Device(), job, replay=replay, batch_size=4, warmup=1, fresh=fresh)
            assert s.runs() == []
    finally:
        holder.communicate("\n", timeout=60)


def test_a_stale_claim_is_taken_over_and_another_hosts_is_respected(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        a, b, c = _run(s), _run(s, runtime="x"), _run(s, runtime="y")
    host = socket.gethostname()
    for run_id, pid, where in ((a.run_id, int(dead.stdout), host), (b.run_id, os.getpid(), host),
                               (c.run_id, 1, "board-7")):  # b: this pid, not this process's claim (a restart)
        _edit(path, "INSERT INTO writers VALUES (?, ?, ?, '2020-01-01T00:00:00Z')", run_id, pid, where)
    with Store(path) as s:
        s.claim(a.run_id)
        s.claim(b.run_id)
        rows = s._db.execute("SELECT pid, host FROM writers WHERE run_id IN (?, ?)", (a.run_id, b.run_id)).fetchall()
        assert rows == [(os.getpid(), host)] * 2
        with pytest.raises(StoreError, match=r"being written by pid 1 on host board-7 since 2020-01-01T00:00:00Z"):
            s.claim(c.run_id)
        with s.claim(a.run_id):  # held already: kept, then released when the block ends
            pass
        assert {r for (r,) in s._db.execute("SELECT run_id FROM writers")} == {b.run_id, c.run_id}
    assert [r for (r,) in sqlite3.connect(path).execute("SELECT run_id FROM writers")] == [c.run_id]  # released


def test_threads_of_one_process_write_different_runs_side_by_side(tmp_path):
    """A fleet: one Store per thread, each claiming and writing its own run into the same file."""
    import threading

    path, errors = tmp_path / "s.sqlite", []
    Store(path).close()

    def write(runtime: str) -> None:
        try:
            with Store(path) as s:
                run = _run(s, runtime=runtime, claim=True)
                for first in range(M):
                    s.write_batch(run.run_id, first=first, logits=_logits(first, 1), seconds=0.01)
                s.finish(run.run_id)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(f"rt{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(path, readonly=True) as s:
        assert sorted(r.runtime for r in s.runs() if r.complete) == ["rt0", "rt1", "rt2", "rt3"]
