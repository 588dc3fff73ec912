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
        s._db.execute("INSERT INTO batches VALUES (?, 4, 1, 0.0, NULL)", (run.run_id,))  # a stray row at first=4
        s._db.commit()
        with pytest.raises(StoreError, match="overlap"):
            s.write_batch(run.run_id, first=4, logits=_logits(4, 4), seconds=0.01)
        assert s.done_samples(run.run_id) == {0, 1, 2, 3}  # outputs of the failed batch were rolled back
