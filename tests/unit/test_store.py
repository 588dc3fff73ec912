"""eval.store: run identity, one transaction per batch, resume bookkeeping, no double counting, every refusal."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from eval.store import SCHEMA_VERSION, Store, StoreError, run_key

M, K = 10, 4


def _run(store: Store, **changes):
    spec = dict(device="local", runtime="onnxrt", artifact="w4.onnx", artifact_sha256="a" * 64, replay="r.npz",
                replay_sha256="b" * 64, samples=M, options={"batch_size": 4, "warmup": 1, "bits": [4, 4]},
                emulated=False, kernels="", device_info={"cpu": "x"})
    spec.update(changes)
    return store.open_run(**spec)


def _logits(first: int, n: int) -> np.ndarray:
    return (np.arange(first * K, (first + n) * K, dtype=np.float32).reshape(n, K) % 7)  # (n, K)


def _fill(store: Store, run_id: str, sizes=(4, 4, 2)) -> None:
    first = 0
    for n in sizes:
        store.write_batch(run_id, first=first, logits=_logits(first, n), seconds=0.01 * n, energy_j=None)
        first += n


def test_run_identity_and_reopen(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        run = _run(s)
        assert run.run_id == run_key(device="local", runtime="onnxrt", artifact_sha256="a" * 64,
                                     replay_sha256="b" * 64, options={"batch_size": 4, "warmup": 1, "bits": [4, 4]})
        assert _run(s, artifact="moved/w4.onnx").run_id == run.run_id  # paths are not identity
        assert _run(s, options={"batch_size": 8, "warmup": 1, "bits": [4, 4]}).run_id != run.run_id
        assert _run(s, device="rpi4-emu", emulated=True).emulated
        assert len(s.runs()) == 3 and [r.device for r in s.runs(runtime="onnxrt", device="rpi4-emu")] == ["rpi4-emu"]
        assert s.runs(replay_sha256="c" * 64) == []
        s.write_batch(run.run_id, first=0, logits=_logits(0, 4), seconds=0.02)
        s.set_kernels(run.run_id, "ORT 1.31 CPU")
    with Store(path) as s:  # a new process resumes: the run and its samples are still there
        again = _run(s)
        assert again.run_id == run.run_id and again.kernels == "ORT 1.31 CPU" and not again.complete
        assert s.done_samples(run.run_id) == {0, 1, 2, 3} and again.device_info == {"cpu": "x"}
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_outputs_in_sample_order(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        run = _run(s)
        _fill(s, run.run_id)
        assert s.done_samples(run.run_id) == set(range(M))
        want = _logits(0, M)
        assert np.array_equal(s.logits(run.run_id), want) and s.logits(run.run_id).dtype == np.float32
        assert np.array_equal(s.preds(run.run_id), want.argmax(1))
        rows = s.batches(run.run_id)
        assert [(b.first, b.n, b.energy_j) for b in rows] == [(0, 4, None), (4, 4, None), (8, 2, None)]
        assert s.finish(run.run_id).complete


def test_ties_predict_the_first_maximum(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        run = _run(s, samples=1)
        s.write_batch(run.run_id, first=0, logits=np.array([[0, 3, 3, 1]], np.float32), seconds=0.0)
        assert s.preds(run.run_id).tolist() == [1]


def test_a_sample_is_never_written_twice(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        run = _run(s)
        s.write_batch(run.run_id, first=0, logits=_logits(0, 4), seconds=0.01)
        with pytest.raises(StoreError, match=r"rows 2..5 overlap rows already stored; a sample is never written twice"):
            s.write_batch(run.run_id, first=2, logits=_logits(2, 4), seconds=0.01)
        assert s.done_samples(run.run_id) == {0, 1, 2, 3}  # the overlapping batch left nothing behind
        assert len(s.batches(run.run_id)) == 1
        with pytest.raises(StoreError, match="overlap"):
            s.write_batch(run.run_id, first=0, logits=_logits(0, 4), seconds=0.01)


@pytest.mark.parametrize("kwargs, match", [
    (dict(first=0, logits=_logits(0, 4).astype(np.float64)), r"\(B, K\) float32 array, got float64"),
    (dict(first=0, logits=_logits(0, 4)[0]), r"\(B, K\) float32 array, got float32 \(4,\)"),
    (dict(first=0, logits=np.zeros((0, K), np.float32)), "non-empty"),
    (dict(first=8, logits=_logits(8, 4)), r"rows 8..11 outside the run's 10 samples"),
    (dict(first=-1, logits=_logits(0, 2)), "outside"),
    (dict(first=0, logits=_logits(0, 4), seconds=float("nan")), "must be a non-negative number"),
    (dict(first=0, logits=_logits(0, 4), seconds=-1.0), "must be a non-negative number"),
])
def test_bad_batches_are_refused(tmp_path, kwargs, match):
    with Store(tmp_path / "s.sqlite") as s:
        run = _run(s)
        with pytest.raises(StoreError, match=match):
            s.write_batch(run.run_id, **{"seconds": 0.01, **kwargs})
        assert s.done_samples(run.run_id) == set()


def test_class_count_must_not_change(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        run = _run(s)
        s.write_batch(run.run_id, first=0, logits=_logits(0, 4), seconds=0.01)
        with pytest.raises(StoreError, match="5 logits per image, the run stored 4 before"):
            s.write_batch(run.run_id, first=4, logits=np.zeros((2, 5), np.float32), seconds=0.01)


def test_incomplete_and_finished_runs(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        run = _run(s)
        _fill(s, run.run_id, sizes=(4,))
        for read in (s.logits, s.preds, s.finish):
            with pytest.raises(StoreError, match="has 4 of 10 samples; re-run"):
                read(run.run_id)
        _fill(s, run.run_id, sizes=())
        s.write_batch(run.run_id, first=4, logits=_logits(4, 6), seconds=0.01)
        s.finish(run.run_id)
        with pytest.raises(StoreError, match=r"is finished; delete it \(--fresh\)"):
            s.write_batch(run.run_id, first=0, logits=_logits(0, 1), seconds=0.01)
        with pytest.raises(StoreError, match="no run ffffffffffff in"):
            s.run("f" * 64)
        s.delete_run(run.run_id)
        assert s.runs() == [] and s.done_samples(run.run_id) == set()


def test_foreign_and_future_files_are_refused(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="is not a SQLite result store"):
        Store(junk)
    future = tmp_path / "future.sqlite"
    db = sqlite3.connect(future)
    db.execute("CREATE TABLE runs (x)")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, this code writes {SCHEMA_VERSION}"):
        Store(future)


def test_a_failed_transaction_keeps_earlier_batches(tmp_path, monkeypatch):
    """A crash inside a batch's transaction (here: the batches insert fails) rolls back its outputs too."""
    with Store(tmp_path / "s.sqlite") as s:
        run = _run(s)
        s.write_batch(run.run_id, first=0, logits=_logits(0, 4), seconds=0.01)
        s._db.execute("INSERT INTO batches VALUES (?, 4, 1, 0.0, NULL, x'00')", (run.run_id,))  # a stray row at 4
        s._db.commit()
        with pytest.raises(StoreError, match="overlap"):
            s.write_batch(run.run_id, first=4, logits=_logits(4, 4), seconds=0.01)
        assert s.done_samples(run.run_id) == {0, 1, 2, 3}  # outputs of the failed batch were rolled back


# -- rows edited after the fact (issue 14): refused with one line naming the run and the fix ----------------------
def _complete(path, **changes):
    """A store at `path` with one complete run; returns its run id."""
    with Store(path) as s:
        run = _run(s, **changes)
        _fill(s, run.run_id)
        s.finish(run.run_id)
        return run.run_id


def _edit(path, sql: str, *args) -> None:
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def _refused(path, run_id: str, read, match: str) -> str:
    with Store(path) as s, pytest.raises(StoreError, match=match) as e:
        read(s, run_id)
    text = str(e.value)
    assert "\n" not in text and (run_id[:12] in text or "--store" in text), text
    return text


NAN = np.array([np.nan, 0, 0, 0], np.float32).tobytes()  # one row's logits (K = 4) holding a NaN
# every read of a run that a comparison or a report makes
READS = {"logits": lambda s, r: s.logits(r), "preds": lambda s, r: s.preds(r), "batches": lambda s, r: s.batches(r),
         "run": lambda s, r: s.run(r), "runs": lambda s, r: s.runs()}


@pytest.mark.parametrize("sql, args, reads, match", [
    ("UPDATE outputs SET sample = sample + 100", (), ("logits", "preds"), "holds sample 100: the sample ids must be"),
    ("UPDATE outputs SET sample = 'x' WHERE sample = 0", (), ("logits", "preds"), "sample ids must be 0..9"),
    ("UPDATE outputs SET pred = (pred + 1) % 4 WHERE sample = 3", (), ("logits", "preds"), "sample 3's row checksum"),
    ("UPDATE outputs SET logits = ? WHERE sample = 2", (NAN,), ("logits", "preds"), "sample 2's row checksum"),
    ("UPDATE outputs SET logits = substr(logits, 1, 8) WHERE sample = 5", (), ("logits",), "sample 5's logits are not"),
    ("UPDATE outputs SET logits = substr(logits, 1, 6)", (), ("logits",), "logits are 6 bytes"),
    ("UPDATE outputs SET digest = x'00' WHERE sample = 9", (), ("logits",), "sample 9's row checksum"),
    ("UPDATE runs SET samples = 5", (), ("run", "logits"), "runs row's checksum does not match"),  # resealed: below
    ("UPDATE runs SET samples = 'ten'", (), ("run", "runs"), "wrong type or is out of range"),
    ("UPDATE runs SET options = '{bad'", (), ("run", "runs", "logits"), "options or device_info is not a JSON object"),
    ("UPDATE runs SET options = '[1, 2]'", (), ("run",), "not a JSON object"),
    ("UPDATE runs SET device_info = 'null'", (), ("run",), "not a JSON object"),
    ("UPDATE runs SET options = '{\"batch_size\": 8, \"warmup\": 1, \"bits\": [4, 4]}'", (), ("run",),
     "no longer give its run id"),
    ("UPDATE runs SET runtime = 'fakequant'", (), ("run", "logits"), "no longer give its run id"),
    ("UPDATE runs SET replay_sha256 = ?", ("c" * 64,), ("run",), "no longer give its run id"),
    ("UPDATE batches SET n = 0 WHERE first = 4", (), ("batches",), "is empty, outside the run"),
    ("UPDATE batches SET n = 9 WHERE first = 4", (), ("batches",), "outside the run, overlapping"),
    ("UPDATE batches SET seconds = -1 WHERE first = 0", (), ("batches",), "not timed"),
    ("UPDATE batches SET energy_j = 'x' WHERE first = 0", (), ("batches",), "not timed"),
    ("DELETE FROM batches WHERE first = 4", (), ("batches",), r"no batch covers rows 4..7"),
    ("DELETE FROM batches WHERE first = 8", (), ("batches",), "cover 8 of its 10 rows"),
    ("ALTER TABLE outputs DROP COLUMN digest", (), ("logits",), "unreadable result store"),
])
def test_edited_rows_are_refused(tmp_path, sql, args, reads, match):
    path = tmp_path / "s.sqlite"
    run_id = _complete(path)
    _edit(path, sql, *args)
    for read in reads:
        text = _refused(path, run_id, READS[read], match)
        assert "--fresh" in text or "--store" in text


def test_rows_moved_between_samples_are_refused(tmp_path):
    """Every sample id still 0..M-1 once, but each row now under its neighbour's id: only the checksum sees it."""
    path = tmp_path / "s.sqlite"
    run_id = _complete(path)
    _edit(path, "UPDATE outputs SET sample = sample + 1000")
    _edit(path, f"UPDATE outputs SET sample = (sample - 1000 + 1) % {M}")
    _refused(path, run_id, READS["logits"], "row checksum does not match")


def test_resealed_rows_are_still_checked(tmp_path):
    """Rows edited with their checksum recomputed (with this code): NaN logits and a prediction that is not the
    argmax are still refused."""
    from eval.store import row_digest

    path = tmp_path / "s.sqlite"
    run_id = _complete(path)
    _edit(path, "UPDATE outputs SET logits = ?, pred = 0, digest = ? WHERE sample = 2", NAN,
          row_digest(run_id, 2, 0, logits=NAN))
    _refused(path, run_id, READS["logits"], "1 logits are NaN or infinite")
    run_id = _complete(tmp_path / "t.sqlite")
    pred = int(_logits(3, 1).argmax()) + 1
    _edit(tmp_path / "t.sqlite", "UPDATE outputs SET pred = ?, digest = ? WHERE sample = 3", pred,
          row_digest(run_id, 3, pred, logits=_logits(3, 1)[0].tobytes()))
    _refused(tmp_path / "t.sqlite", run_id, READS["preds"], f"sample 3's stored prediction {pred} is not the argmax")


def test_a_row_copied_from_another_run_is_refused(tmp_path):
    """Another run's logits, prediction and checksum pasted in: the checksum names the run it was written for."""
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        a, b = _run(s), _run(s, runtime="litert-builtin")
        for run, shift in ((a, 0), (b, 1)):
            s.write_batch(run.run_id, first=0, logits=np.roll(_logits(0, M), shift, axis=1), seconds=0.1)
            s.finish(run.run_id)
    _edit(path, "UPDATE outputs SET logits = (SELECT o.logits FROM outputs o WHERE o.run_id = ? AND o.sample = "
          "outputs.sample), pred = (SELECT o.pred FROM outputs o WHERE o.run_id = ? AND o.sample = outputs.sample), "
          "digest = (SELECT o.digest FROM outputs o WHERE o.run_id = ? AND o.sample = outputs.sample) WHERE run_id = ?",
          a.run_id, a.run_id, a.run_id, b.run_id)
    _refused(path, b.run_id, READS["logits"], "sample 0's row checksum does not match its run")
    with Store(path) as s:
        assert np.array_equal(s.logits(a.run_id), _logits(0, M))  # the run copied from is untouched


def test_non_finite_logits_are_refused_at_write(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        run = _run(s)
        bad = _logits(0, 4)
        bad[1, 2] = np.inf
        with pytest.raises(StoreError, match="holds 1 NaN or infinite logits, so nothing of it is stored"):
            s.write_batch(run.run_id, first=0, logits=bad, seconds=0.01)
        assert s.done_samples(run.run_id) == set() and s.batches(run.run_id) == []


def test_fresh_clears_a_damaged_run(tmp_path):
    """`--fresh` (open_run(fresh=True)) measures a run again even when its stored rows fail their checks."""
    path = tmp_path / "s.sqlite"
    run_id = _complete(path)
    _edit(path, "UPDATE runs SET options = '{bad'")
    _edit(path, "UPDATE batches SET n = 0")
    with Store(path) as s:
        run = _run(s, fresh=True)
        assert run.run_id == run_id and not run.complete and s.batches(run_id) == [] and len(s.runs()) == 1


def test_a_store_of_the_previous_schema_is_refused(tmp_path):
    """A version-1 store (no row checksums) is refused with one line naming the fix, never read unchecked."""
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.executescript("CREATE TABLE runs (run_id TEXT PRIMARY KEY, samples INTEGER NOT NULL);"
                     "CREATE TABLE outputs (run_id TEXT, sample INTEGER, pred INTEGER, logits BLOB);"
                     "PRAGMA user_version=1;")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"schema version 1, this code writes \d+; pass a new --store") as e:
        Store(old)
    assert "\n" not in str(e.value) and SCHEMA_VERSION > 1


# -- schema 3: batch and run rows carry digests (issue 14) ------------------------------------------------------
@pytest.mark.parametrize("sql, match", [
    ("UPDATE batches SET seconds = seconds * 2 WHERE first = 4", "batch at row 4's checksum does not match"),
    ("UPDATE batches SET energy_j = 0.0 WHERE first = 0", "batch at row 0's checksum"),  # unmetered != 0 J
    ("UPDATE batches SET energy_j = 1.5", "batch at row 0's checksum"),
    ("UPDATE batches SET digest = x'00' WHERE first = 8", "batch at row 8's checksum"),
])
def test_an_edited_batch_row_is_refused_by_its_digest(tmp_path, sql, match):
    """Timings and energy edited to other valid values: only the batch digest sees it."""
    path = tmp_path / "s.sqlite"
    run_id = _complete(path)
    _edit(path, sql)
    _refused(path, run_id, READS["batches"], match)


def test_a_batch_row_copied_from_another_run_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        a, b = _run(s), _run(s, runtime="litert-builtin")
        s.write_batch(a.run_id, first=0, logits=_logits(0, M), seconds=0.5)
        s.write_batch(b.run_id, first=0, logits=_logits(0, M), seconds=0.1)
    _edit(path, "UPDATE batches SET seconds = 0.5, digest = (SELECT o.digest FROM batches o WHERE o.run_id = ?) "
          "WHERE run_id = ?", a.run_id, b.run_id)
    _refused(path, b.run_id, READS["batches"], "batch at row 0's checksum")


@pytest.mark.parametrize("sql", [
    "UPDATE runs SET kernels = 'XNNPACK int8'", "UPDATE runs SET finished = NULL",
    "UPDATE runs SET finished = '2001-01-01T00:00:00Z'", "UPDATE runs SET emulated = 1",
    "UPDATE runs SET artifact = 'other.onnx'", "UPDATE runs SET device_info = '{\"cpu\": \"y\"}'",
    "UPDATE runs SET created = '2001-01-01T00:00:00Z'", "UPDATE runs SET digest = x'00'",
])
def test_edited_run_columns_are_refused(tmp_path, sql):
    path = tmp_path / "s.sqlite"
    run_id = _complete(path)
    _edit(path, sql)
    for read in ("run", "runs", "logits", "batches"):
        _refused(path, run_id, READS[read], "runs row's checksum does not match its kernels, samples")


def test_a_resealed_run_row_is_still_checked(tmp_path):
    """set_kernels and finish reseal the run digest; samples edited with the digest recomputed (with this code):
    the output rows still do not fit."""
    from eval.store import _RUN_COLUMNS, run_digest

    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        run_id = _run(s).run_id
        s.set_kernels(run_id, "ORT 1.31 CPU")
        _fill(s, run_id)
        assert s.finish(run_id).kernels == "ORT 1.31 CPU" and s.runs()[0].complete
    db = sqlite3.connect(path)
    row = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs").fetchone()
    db.execute("UPDATE runs SET samples = 5, digest = ?", (run_digest(row[:-1] + (5,)),))
    db.commit()
    db.close()
    _refused(path, run_id, READS["logits"], "holds 10 output rows for its 5 samples")


def test_a_store_of_schema_version_2_is_refused(tmp_path):
    """A version-2 store (no batch or run digests) is refused, never read with its timings unverified."""
    old = tmp_path / "v2.sqlite"
    db = sqlite3.connect(old)
    db.executescript("CREATE TABLE runs (run_id TEXT PRIMARY KEY, samples INTEGER NOT NULL);"
                     "CREATE TABLE batches (run_id TEXT, first INTEGER, n INTEGER, seconds REAL, energy_j REAL);"
                     "PRAGMA user_version=2;")
    db.close()
    for readonly in (False, True):
        with pytest.raises(StoreError, match=r"schema version 2, this code writes 3; pass a new --store"):
            Store(old, readonly=readonly)


def test_a_complete_run_that_lost_rows_is_damaged_not_resumable(tmp_path):
    """finish() refuses a short run, so a complete run missing rows was edited: --fresh, not "re-run to resume"
    (which resumed nothing, since a complete run is never written again, and said so forever)."""
    path = tmp_path / "s.sqlite"
    run_id = _complete(path)
    _edit(path, "DELETE FROM outputs WHERE run_id=? AND sample=3", run_id)
    for read in ("logits", "preds"):
        text = _refused(path, run_id, READS[read], "marked complete but holds 9 of 10 rows")
        assert "--fresh" in text and "resume" not in text
