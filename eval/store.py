"""The result store: one SQLite file holding every replay run's per-image outputs and batch timings.

    runs     one row per (device, runtime, artifact, replay, options); run_id = sha256 of those, so running
             the same thing again finds the same run and resumes it
    outputs  (run_id, sample) -> pred, logits (float32 bytes, K values): one row per replay row
    batches  (run_id, first) -> n, seconds (pure inference time), energy_j (NULL: not measured)

Writes are one transaction per batch (its outputs and its timing together), so a crash or Ctrl-C
leaves whole batches only; `done_samples` then tells a re-run what to skip. Writing a sample twice is
an error, never a second count. WAL journaling lets readers (eval.compare, a report) read while a
run writes. One `Store` per thread: sqlite3 connections are not shared across threads.

Example:
    >>> with Store("results/results.sqlite") as s:
    ...     run = s.open_run(device="local", runtime="onnxrt", ..., samples=len(replay))
    ...     s.write_batch(run.run_id, first=0, logits=logits, seconds=0.01)
    ...     s.logits(run.run_id)    # (M, K) once complete
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError

SCHEMA_VERSION = 1  # PRAGMA user_version
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, device TEXT NOT NULL, runtime TEXT NOT NULL, kernels TEXT NOT NULL,
    artifact TEXT NOT NULL, artifact_sha256 TEXT NOT NULL, replay TEXT NOT NULL, replay_sha256 TEXT NOT NULL,
    emulated INTEGER NOT NULL, created TEXT NOT NULL, finished TEXT, options TEXT NOT NULL,
    device_info TEXT NOT NULL, samples INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outputs (
    run_id TEXT NOT NULL REFERENCES runs(run_id), sample INTEGER NOT NULL, pred INTEGER NOT NULL,
    logits BLOB NOT NULL, PRIMARY KEY (run_id, sample));
CREATE TABLE IF NOT EXISTS batches (
    run_id TEXT NOT NULL REFERENCES runs(run_id), first INTEGER NOT NULL, n INTEGER NOT NULL,
    seconds REAL NOT NULL, energy_j REAL, PRIMARY KEY (run_id, first));
"""


class StoreError(QadtrError):
    """A store that is not ours, a write that would count a sample twice, an incomplete run read as complete."""


def run_key(*, device: str, runtime: str, artifact_sha256: str, replay_sha256: str, options: dict) -> str:
    """The run id: sha256 of what determines a run's results (not its paths: moving files keeps the id)."""
    text = json.dumps({"device": device, "runtime": runtime, "artifact_sha256": artifact_sha256,
                       "replay_sha256": replay_sha256, "options": options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    device: str
    runtime: str
    kernels: str  # the kernel set the runtime executed ("" until the run reports it)
    artifact: str  # path as given
    artifact_sha256: str
    replay: str  # replay file path
    replay_sha256: str
    emulated: bool  # latency from an emulator says nothing about the real board
    created: str  # UTC, ISO 8601
    finished: str | None  # None while incomplete
    options: dict  # batch_size, warmup, bits, source_sha256, ...
    device_info: dict  # device.describe()
    samples: int  # replay rows the run must cover

    @property
    def complete(self) -> bool:
        return self.finished is not None


@dataclass(frozen=True)
class BatchRow:
    first: int
    n: int
    seconds: float
    energy_j: float | None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0)  # timeout: wait out another writer (a fleet)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crashed process loses no commit
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a SQLite result store ({e}); pass another --store") from None
        if tables and version != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has store schema version {version}, this code writes {SCHEMA_VERSION}; "
                             "pass a new --store file (results are not migrated)")
        with self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs -----------------------------------------------------------------------------------------
    def open_run(self, *, device: str, runtime: str, artifact: str, artifact_sha256: str, replay: str,
                 replay_sha256: str, samples: int, options: dict, emulated: bool = False, kernels: str = "",
                 device_info: dict | None = None) -> RunRecord:
        """The run for these inputs: created if new, else the existing one (to resume or to read)."""
        run_id = run_key(device=device, runtime=runtime, artifact_sha256=artifact_sha256,
                         replay_sha256=replay_sha256, options=options)
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,NULL,?,?,?)",
                (run_id, device, runtime, kernels, str(artifact), artifact_sha256, str(replay), replay_sha256,
                 int(emulated), _now(), json.dumps(options, sort_keys=True),
                 json.dumps(device_info or {}, sort_keys=True), int(samples)))
        return self.run(run_id)

    def run(self, run_id: str) -> RunRecord:
        row = self._db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id[:12]} in {self.path}; list runs with `python -m eval.on_device "
                             f"--store {self.path} --list-runs`")
        return self._record(row)

    def runs(self, *, device: str | None = None, runtime: str | None = None,
             replay_sha256: str | None = None) -> list[RunRecord]:
        """Every run matching the filters, in the order they were first opened."""
        where, args = [], []
        for col, value in (("device", device), ("runtime", runtime), ("replay_sha256", replay_sha256)):
            if value is not None:
                where.append(f"{col}=?")
                args.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created, rowid"
        return [self._record(r) for r in self._db.execute(sql, args)]

    @staticmethod
    def _record(row: tuple) -> RunRecord:
        (run_id, device, runtime, kernels, artifact, artifact_sha, replay, replay_sha, emulated, created, finished,
         options, device_info, samples) = row
        return RunRecord(run_id, device, runtime, kernels, artifact, artifact_sha, replay, replay_sha, bool(emulated),
                         created, finished, json.loads(options), json.loads(device_info), samples)

    def set_kernels(self, run_id: str, kernels: str) -> None:
        with self._db:
            self._db.execute("UPDATE runs SET kernels=? WHERE run_id=?", (kernels, run_id))

    def finish(self, run_id: str) -> RunRecord:
        """Mark a run complete; refused while samples are missing."""
        run = self.run(run_id)
        done = self._count(run_id)
        if done != run.samples:
            raise StoreError(f"run {run_id[:12]} has {done} of {run.samples} samples; re-run the same command "
                             "to resume it")
        with self._db:
            self._db.execute("UPDATE runs SET finished=? WHERE run_id=? AND finished IS NULL", (_now(), run_id))
        return self.run(run_id)

    def delete_run(self, run_id: str) -> None:
        """Forget a run and everything it wrote (to measure it again from scratch)."""
        with self._db:
            for table in ("outputs", "batches", "runs"):
                self._db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))

    # -- outputs --------------------------------------------------------------------------------------
    def _count(self, run_id: str) -> int:
        return self._db.execute("SELECT count(*) FROM outputs WHERE run_id=?", (run_id,)).fetchone()[0]

    def done_samples(self, run_id: str) -> set[int]:
        return {s for (s,) in self._db.execute("SELECT sample FROM outputs WHERE run_id=?", (run_id,))}

    def write_batch(self, run_id: str, *, first: int, logits: np.ndarray, seconds: float,
                    energy_j: float | None = None) -> None:
        """Store one batch: rows first .. first+B-1 of the replay, in one transaction.

        Raises:
            StoreError: unknown or finished run, logits not (B, K) float32 with the run's K, rows
                beyond the replay, or any row already stored (nothing of the batch is written).
        """
        run = self.run(run_id)
        if run.complete:
            raise StoreError(f"run {run_id[:12]} is finished; delete it (--fresh) to write it again")
        if not isinstance(logits, np.ndarray) or logits.dtype != np.float32 or logits.ndim != 2 or not len(logits):
            raise StoreError(f"batch at {first}: logits must be a non-empty (B, K) float32 array, got "
                             f"{getattr(logits, 'dtype', type(logits).__name__)} {getattr(logits, 'shape', '')}")
        b, k = logits.shape
        if first < 0 or first + b > run.samples:
            raise StoreError(f"batch rows {first}..{first + b - 1} outside the run's {run.samples} samples")
        if not seconds >= 0.0:  # also rejects NaN
            raise StoreError(f"batch at {first}: inference time {seconds} s; must be a non-negative number")
        row = self._db.execute("SELECT length(logits) FROM outputs WHERE run_id=? LIMIT 1", (run_id,)).fetchone()
        if row is not None and row[0] != 4 * k:
            raise StoreError(f"batch at {first}: {k} logits per image, the run stored {row[0] // 4} before")
        pred = logits.argmax(1)  # (B,) first maximum on ties, as torch.argmax in qadtr.predict.predict
        try:
            with self._db:
                self._db.executemany("INSERT INTO outputs VALUES (?,?,?,?)",
                                     [(run_id, first + i, int(pred[i]), logits[i].tobytes()) for i in range(b)])
                self._db.execute("INSERT INTO batches VALUES (?,?,?,?,?)",
                                 (run_id, first, b, float(seconds), None if energy_j is None else float(energy_j)))
        except sqlite3.IntegrityError:
            raise StoreError(f"run {run_id[:12]}: rows {first}..{first + b - 1} overlap rows already stored; a sample "
                             "is never written twice (resume skips done samples)") from None

    def logits(self, run_id: str) -> np.ndarray:
        """(M, K) float32 logits in sample order; StoreError unless every sample is stored."""
        run = self.run(run_id)
        rows = self._db.execute("SELECT logits FROM outputs WHERE run_id=? ORDER BY sample", (run_id,)).fetchall()
        if len(rows) != run.samples:
            raise StoreError(f"run {run_id[:12]} ({run.runtime} on {run.device}) has {len(rows)} of {run.samples} "
                             "samples; re-run the same command to resume it")
        return np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(run.samples, -1)

    def preds(self, run_id: str) -> np.ndarray:
        """(M,) int64 predictions in sample order (argmax of the stored logits)."""
        run = self.run(run_id)
        pred = np.array([p for (p,) in self._db.execute("SELECT pred FROM outputs WHERE run_id=? ORDER BY sample",
                                                        (run_id,))], dtype=np.int64)
        if len(pred) != run.samples:
            raise StoreError(f"run {run_id[:12]} has {len(pred)} of {run.samples} samples; re-run to resume it")
        return pred

    def batches(self, run_id: str) -> list[BatchRow]:
        return [BatchRow(*r) for r in self._db.execute(
            "SELECT first, n, seconds, energy_j FROM batches WHERE run_id=? ORDER BY first", (run_id,))]
