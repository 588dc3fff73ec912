"""The result store: one SQLite file holding every replay run's per-image outputs and batch timings.

    runs     one row per (device, runtime, artifact, replay, options); run_id = sha256 of those, so running
             the same thing again finds the same run and resumes it
    outputs  (run_id, sample) -> pred, logits (float32 bytes, K values), digest: one row per replay row
    batches  (run_id, first) -> n, seconds (pure inference time), energy_j (NULL: not measured)

Writes are one transaction per batch (its outputs and its timing together), so a crash or Ctrl-C
leaves whole batches only; `done_samples` then tells a re-run what to skip. Writing a sample twice is
an error, never a second count. WAL journaling lets readers (eval.compare, a report) read while a
run writes. One `Store` per thread: sqlite3 connections are not shared across threads.

Reads check what they read, since a store outlives the runs that wrote it and can be edited: a run row's
identity columns must still give its run id (`run_key`), its options be a JSON object; every output row
carries `row_digest` (sha256 of its run id, sample, prediction and logits, computed at write time), so a
row copied from another run (the reference's logits pasted into a deployed run), moved to another sample
or edited is refused; logits are finite, a prediction the argmax of its logits (first maximum on ties);
batches hold n >= 1 rows inside the run, without overlap. A digest is a checksum, not a signature: it
catches edits and copies, not someone who recomputes it with this code. Each refusal is one StoreError
naming the run and the fix (measure it again with --fresh, or a new --store).

Example:
    >>> with Store("results/results.sqlite") as s:
    ...     run = s.open_run(device="local", runtime="onnxrt", ..., samples=len(replay))
    ...     s.write_batch(run.run_id, first=0, logits=logits, seconds=0.01)
    ...     s.logits(run.run_id)    # (M, K) once complete
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError

SCHEMA_VERSION = 2  # PRAGMA user_version; 2: outputs carry `digest` (a version-1 store has nothing to verify)
_DIGEST_TAG = b"qadtr-output-row\0"  # prefixes every row digest: a sha256 of anything else never verifies as one
# every refusal of a damaged run ends with this: --fresh deletes the run by its id before measuring it again
_FIX = ("the store was edited or damaged: measure the run again with `python -m eval.on_device ... --fresh` (or "
        "pass a new --store)")
_RUN_COLUMNS = ("run_id, device, runtime, kernels, artifact, artifact_sha256, replay, replay_sha256, emulated, "
                "created, finished, options, device_info, samples")  # named, not *: RunRecord's field order
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, device TEXT NOT NULL, runtime TEXT NOT NULL, kernels TEXT NOT NULL,
    artifact TEXT NOT NULL, artifact_sha256 TEXT NOT NULL, replay TEXT NOT NULL, replay_sha256 TEXT NOT NULL,
    emulated INTEGER NOT NULL, created TEXT NOT NULL, finished TEXT, options TEXT NOT NULL,
    device_info TEXT NOT NULL, samples INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outputs (
    run_id TEXT NOT NULL REFERENCES runs(run_id), sample INTEGER NOT NULL, pred INTEGER NOT NULL,
    logits BLOB NOT NULL, digest BLOB NOT NULL, PRIMARY KEY (run_id, sample));
CREATE TABLE IF NOT EXISTS batches (
    run_id TEXT NOT NULL REFERENCES runs(run_id), first INTEGER NOT NULL, n INTEGER NOT NULL,
    seconds REAL NOT NULL, energy_j REAL, PRIMARY KEY (run_id, first));
"""


class StoreError(QadtrError):
    """A store that is not ours, a write that would count a sample twice, an incomplete run read as complete."""


class IncompleteRun(StoreError):
    """A run read before every sample is stored (resume it); damaged rows raise StoreError itself."""


def run_key(*, device: str, runtime: str, artifact_sha256: str, replay_sha256: str, options: dict) -> str:
    """The run id: sha256 of what determines a run's results (not its paths: moving files keeps the id)."""
    text = json.dumps({"device": device, "runtime": runtime, "artifact_sha256": artifact_sha256,
                       "replay_sha256": replay_sha256, "options": options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def row_digest(run_id: str, sample: int, pred: int, logits: bytes) -> bytes:
    """The 32-byte checksum an output row carries: binds its logits and prediction to its run and sample."""
    return hashlib.sha256(_DIGEST_TAG + run_id.encode() + struct.pack("<qq", sample, pred) + logits).digest()


def _measure_ok(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and v >= 0  # a time or an energy: finite, >= 0


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
    def _query(self, sql: str, args: tuple = ()) -> list:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:  # a table or column edited away
            raise StoreError(f"{self.path}: unreadable result store ({' '.join(str(e).split())}); pass a new "
                             "--store file") from None

    def _damaged(self, run_id, what: str) -> StoreError:
        return StoreError(f"run {str(run_id)[:12]} in {self.path}: {what}; {_FIX}")

    def open_run(self, *, device: str, runtime: str, artifact: str, artifact_sha256: str, replay: str,
                 replay_sha256: str, samples: int, options: dict, emulated: bool = False, kernels: str = "",
                 device_info: dict | None = None, fresh: bool = False) -> RunRecord:
        """The run for these inputs: created if new, else the existing one (to resume or to read); `fresh`:
        whatever the store holds for it is deleted first (also a run whose rows fail their checks)."""
        run_id = run_key(device=device, runtime=runtime, artifact_sha256=artifact_sha256,
                         replay_sha256=replay_sha256, options=options)
        if fresh:
            self.delete_run(run_id)
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,NULL,?,?,?)",
                (run_id, device, runtime, kernels, str(artifact), artifact_sha256, str(replay), replay_sha256,
                 int(emulated), _now(), json.dumps(options, sort_keys=True),
                 json.dumps(device_info or {}, sort_keys=True), int(samples)))
        return self.run(run_id)

    def run(self, run_id: str) -> RunRecord:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id=?", (run_id,))
        if not rows:
            raise StoreError(f"no run {run_id[:12]} in {self.path}; list runs with `python -m eval.on_device "
                             f"--store {self.path} --list-runs`")
        return self._record(rows[0])

    def runs(self, *, device: str | None = None, runtime: str | None = None,
             replay_sha256: str | None = None) -> list[RunRecord]:
        """Every run matching the filters, in the order they were first opened."""
        where, args = [], []
        for col, value in (("device", device), ("runtime", runtime), ("replay_sha256", replay_sha256)):
            if value is not None:
                where.append(f"{col}=?")
                args.append(value)
        sql = (f"SELECT {_RUN_COLUMNS} FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created, rowid")
        return [self._record(r) for r in self._query(sql, tuple(args))]

    def _record(self, row: tuple) -> RunRecord:
        """A runs row, checked: column types, options and device_info JSON objects, identity = its run id."""
        (run_id, device, runtime, kernels, artifact, artifact_sha, replay, replay_sha, emulated, created, finished,
         options, device_info, samples) = row
        texts = (run_id, device, runtime, kernels, artifact, artifact_sha, replay, replay_sha, created, options,
                 device_info)
        if not all(type(t) is str for t in texts) or emulated not in (0, 1) or type(samples) is not int \
                or samples < 1 or not (finished is None or type(finished) is str):
            raise self._damaged(run_id, "a column of its runs row has the wrong type or is out of range")
        try:
            options, device_info = json.loads(options), json.loads(device_info)
        except (ValueError, RecursionError):  # ValueError: bad JSON, or an integer past Python's digit limit
            options = device_info = None
        if type(options) is not dict or type(device_info) is not dict:
            raise self._damaged(run_id, "its options or device_info is not a JSON object")
        if run_key(device=device, runtime=runtime, artifact_sha256=artifact_sha, replay_sha256=replay_sha,
                   options=options) != run_id:
            raise self._damaged(run_id, "its device, runtime, artifact_sha256, replay_sha256 or options no longer "
                                "give its run id")
        return RunRecord(run_id, device, runtime, kernels, artifact, artifact_sha, replay, replay_sha, bool(emulated),
                         created, finished, options, device_info, samples)

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
        return self._query("SELECT count(*) FROM outputs WHERE run_id=?", (run_id,))[0][0]

    def done_samples(self, run_id: str) -> set[int]:
        return {s for (s,) in self._query("SELECT sample FROM outputs WHERE run_id=?", (run_id,))}

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
        if not np.isfinite(logits).all():
            raise StoreError(f"run {run_id[:12]}: batch at {first} holds {int((~np.isfinite(logits)).sum())} NaN or "
                             "infinite logits, so nothing of it is stored; the runtime's output is broken (check the "
                             "artifact with its exporter's proof)")
        row = self._db.execute("SELECT length(logits) FROM outputs WHERE run_id=? LIMIT 1", (run_id,)).fetchone()
        if row is not None and row[0] != 4 * k:
            raise StoreError(f"batch at {first}: {k} logits per image, the run stored {row[0] // 4} before")
        pred = logits.argmax(1)  # (B,) first maximum on ties, as torch.argmax in qadtr.predict.predict
        try:
            with self._db:
                self._db.executemany("INSERT INTO outputs VALUES (?,?,?,?,?)", [
                    (run_id, first + i, int(pred[i]), blob, row_digest(run_id, first + i, int(pred[i]), blob))
                    for i, blob in enumerate(row.tobytes() for row in logits)])
                self._db.execute("INSERT INTO batches VALUES (?,?,?,?,?)",
                                 (run_id, first, b, float(seconds), None if energy_j is None else float(energy_j)))
        except sqlite3.IntegrityError:
            raise StoreError(f"run {run_id[:12]}: rows {first}..{first + b - 1} overlap rows already stored; a sample "
                             "is never written twice (resume skips done samples)") from None

    def _outputs(self, run: RunRecord) -> tuple[np.ndarray, np.ndarray]:
        """(pred (M,) int64, logits (M, K) float32) of every sample, each row checked (see the module docstring)."""
        rows = self._query("SELECT sample, pred, logits, digest FROM outputs WHERE run_id=? ORDER BY sample",
                           (run.run_id,))
        if len(rows) > run.samples:
            raise self._damaged(run.run_id, f"it holds {len(rows)} output rows for its {run.samples} samples")
        if len(rows) < run.samples:
            raise IncompleteRun(f"run {run.run_id[:12]} ({run.runtime} on {run.device}) has {len(rows)} of "
                                f"{run.samples} samples; re-run the same command to resume it")
        width = len(rows[0][2]) if type(rows[0][2]) is bytes else 0  # bytes per row: 4 K
        if not width or width % 4:
            raise self._damaged(run.run_id, f"sample 0's logits are {width} bytes, not K >= 1 float32 values")
        for i, (sample, pred, blob, digest) in enumerate(rows):
            if type(sample) is not int or sample != i:
                raise self._damaged(run.run_id, f"row {i} holds sample {sample!r:.30}: the sample ids must be 0.."
                                    f"{run.samples - 1}, each once")
            if type(blob) is not bytes or len(blob) != width:
                raise self._damaged(run.run_id, f"sample {i}'s logits are not {width} bytes ({width // 4} classes) "
                                    "like sample 0's")
            if type(pred) is not int or digest != row_digest(run.run_id, sample, pred, blob):
                raise self._damaged(run.run_id, f"sample {i}'s row checksum does not match its run, sample, "
                                    "prediction and logits (copied from another run or edited)")
        logits = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(run.samples, width // 4)
        pred = np.array([r[1] for r in rows], dtype=np.int64)
        if not np.isfinite(logits).all():
            raise self._damaged(run.run_id, f"{int((~np.isfinite(logits)).sum())} logits are NaN or infinite")
        wrong = np.flatnonzero(pred != logits.argmax(1))  # first maximum on ties, as write_batch stored it
        if len(wrong):
            raise self._damaged(run.run_id, f"sample {wrong[0]}'s stored prediction {pred[wrong[0]]} is not the "
                                "argmax of its logits (first maximum on ties)")
        return pred, logits

    def logits(self, run_id: str) -> np.ndarray:
        """(M, K) float32 logits in sample order; StoreError unless every sample is stored and every row checks."""
        return self._outputs(self.run(run_id))[1]

    def preds(self, run_id: str) -> np.ndarray:
        """(M,) int64 predictions in sample order (argmax of the stored logits); checked as `logits`."""
        return self._outputs(self.run(run_id))[0]

    def batches(self, run_id: str) -> list[BatchRow]:
        """The run's batches in order; StoreError for n < 1, rows outside the run or overlapping, a time or an
        energy that is not a finite number >= 0, or a complete run whose batches do not cover every sample."""
        run, end, out = self.run(run_id), 0, []
        for first, n, seconds, energy in self._query(
                "SELECT first, n, seconds, energy_j FROM batches WHERE run_id=? ORDER BY first", (run_id,)):
            if type(first) is not int or type(n) is not int or n < 1 or first < end or first + n > run.samples \
                    or not _measure_ok(seconds) or not (energy is None or _measure_ok(energy)):
                raise self._damaged(run_id, f"batch at row {first!r:.20} (n={n!r:.20}, seconds={seconds!r:.20}, "
                                    f"energy_j={energy!r:.20}) is empty, outside the run, overlapping or not timed")
            if run.complete and first != end:
                raise self._damaged(run_id, f"no batch covers rows {end}..{first - 1} of the complete run")
            end = first + n
            out.append(BatchRow(first, n, float(seconds), None if energy is None else float(energy)))
        if run.complete and end != run.samples:
            raise self._damaged(run_id, f"its batches cover {end} of its {run.samples} rows, yet it is complete")
        return out
