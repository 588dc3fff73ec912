"""The result store: one SQLite file holding every replay run's per-image outputs and batch timings.

    runs     one row per (device, runtime, artifact, replay, options); run_id = sha256 of those, so running
             the same thing again finds the same run and resumes it; digest over the whole row
    outputs  (run_id, sample) -> pred, logits (float32 bytes, K values), digest: one row per replay row
    batches  (run_id, first) -> n, seconds (pure inference time), energy_j (NULL: not measured), digest
    writers  run_id -> pid, host, started: the process writing that run now (eval._store_db)

Writes are one transaction per batch (its outputs and its timing together), so a crash or Ctrl-C leaves whole batches
only; `done_samples` then tells a re-run what to skip. Writing a sample twice is an error, never a second count. WAL
journaling lets readers (eval.compare, a report) read while a run writes. One `Store` per thread: sqlite3 connections
are not shared across threads. A writer claims its run first (`claim`, open_run(claim=True)): a second process
replaying the same run into the same store stops at once with one line naming the writer; runs of different ids (a
fleet's threads, each with its own Store) are written side by side.

`Store(path, readonly=True)` is for readers: it never creates or writes the file (a missing or empty one is
refused, not made into a store), each write method raises StoreError; read-only media are read (eval._store_db).

Reads check what they read, since a store outlives the runs that wrote it and can be edited: a run row's identity
columns must still give its run id (`run_key`), its options be a JSON object, and its `run_digest` (over every column:
kernels, samples, paths, times, device_info) match; every output row carries `row_digest` (sha256 of its run id,
sample, prediction and logits, computed at write time) and every batch row `batch_digest` (its run id, rows, time and
energy), so a row copied from another run (the reference's logits pasted into a deployed run), moved to another sample
or edited is refused; logits are finite, a prediction the argmax of its logits (first maximum on ties); batches hold n
>= 1 rows inside the run, without overlap. A digest is a checksum, not a signature: it catches edits and copies, not
someone who recomputes it with this code. Each refusal is one StoreError naming the run and the fix (measure it again
with --fresh, or a new --store).

Example:
    >>> with Store("results/results.sqlite") as s:
    ...     run = s.open_run(device="local", runtime="onnxrt", ..., samples=len(replay))
    ...     s.write_batch(run.run_id, first=0, logits=logits, seconds=0.01); s.logits(run.run_id)  # (M, K)
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# SCHEMA_VERSION, StoreError and IncompleteRun are this module's public names too
from eval._store_db import SCHEMA_VERSION, IncompleteRun, StoreError, connect, give_back, take

_DIGEST_TAG = b"qadtr-output-row\0"  # prefixes every row digest: a sha256 of anything else never verifies as one
_BATCH_TAG = b"qadtr-batch-row\0"  # the same for batch rows: an output row's digest never passes as a batch's
_RUN_TAG = b"qadtr-run-row\0"  # ... and for runs rows
# every refusal of a damaged run ends with this: --fresh deletes the run by its id before measuring it again
_FIX = ("the store was edited or damaged: measure the run again with `python -m eval.on_device ... --fresh` (or "
        "pass a new --store)")
_RUN_COLUMNS = ("run_id, device, runtime, kernels, artifact, artifact_sha256, replay, replay_sha256, emulated, "
                "created, finished, options, device_info, samples")  # named, not *: RunRecord's field order
_NAMES = tuple(c.strip() for c in _RUN_COLUMNS.split(","))  # the same, one name each: _update_run's order


def run_key(*, device: str, runtime: str, artifact_sha256: str, replay_sha256: str, options: dict) -> str:
    """The run id: sha256 of what determines a run's results (not its paths: moving files keeps the id)."""
    text = json.dumps({"device": device, "runtime": runtime, "artifact_sha256": artifact_sha256,
                       "replay_sha256": replay_sha256, "options": options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def row_digest(run_id: str, sample: int, pred: int, *, logits: bytes) -> bytes:
    """The 32-byte checksum an output row carries: binds its logits and prediction to its run and sample."""
    return hashlib.sha256(_DIGEST_TAG + run_id.encode() + struct.pack("<qq", sample, pred) + logits).digest()


def batch_digest(run_id: str, first: int, n: int, *, seconds: float, energy_j: float | None) -> bytes:
    """The 32-byte checksum a batch row carries: its rows and timing bound to its run (no energy != 0.0 J)."""
    energy = b"\0" if energy_j is None else b"\1" + struct.pack("<d", energy_j)
    return hashlib.sha256(_BATCH_TAG + run_id.encode() + struct.pack("<qqd", first, n, seconds) + energy).digest()


def run_digest(row: tuple) -> bytes:
    """The 32-byte checksum a runs row carries, over its columns in _RUN_COLUMNS order (as stored: JSON as text)."""
    return hashlib.sha256(_RUN_TAG + json.dumps(list(row)).encode()).digest()


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
    def __init__(self, path: str | Path, *, readonly: bool = False):
        """Open (a writer: create) the store at `path`; `readonly`: read an existing store, never write it."""
        self.path, self.readonly, self._claims = Path(path), readonly, set()
        self._db = connect(self.path, readonly=readonly)

    def close(self) -> None:
        """Release this Store's claims, then close (idempotent)."""
        try:
            for run_id in list(self._claims):
                self.release(run_id)
        finally:
            self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only (Store(path, readonly=True)); open it with "
                             "Store(path) to write")

    # -- writer claims (eval._store_db) ---------------------------------------------------------------
    def claim(self, run_id: str) -> ExitStack:
        """Make this Store the one writer of `run_id` until `release(run_id)`, the returned context's exit or
        `close()`; a claim it already holds is kept. Raises StoreError (before any work) while another live
        process, or another Store of this one, holds it."""
        self._writable()
        if run_id not in self._claims:
            holder = take(self._db, run_id, key=str(self.path.resolve()))
            if holder is not None:
                pid, host, started = holder
                raise StoreError(f"run {run_id[:12]} in {self.path} is being written by pid {pid} on host {host} "
                                 f"since {started}; wait for it to finish or pass another --store")
            self._claims.add(run_id)
        stack = ExitStack()
        stack.callback(self.release, run_id)
        return stack

    def release(self, run_id: str) -> None:
        if run_id in self._claims:
            self._claims.discard(run_id)
            give_back(self._db, run_id, key=str(self.path.resolve()))

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
                 device_info: dict | None = None, fresh: bool = False, claim: bool = False) -> RunRecord:
        """The run for these inputs: created if new, else the existing one (to resume or to read); `fresh`:
        whatever the store holds for it is deleted first (also a run whose rows fail their checks); `claim`:
        claimed first (see `claim`), released by `finish`, at once for a run already complete, or by `close`."""
        self._writable()
        run_id = run_key(device=device, runtime=runtime, artifact_sha256=artifact_sha256,
                         replay_sha256=replay_sha256, options=options)
        if claim:
            self.claim(run_id)  # before --fresh deletes anything another writer is writing
        if fresh:
            self.delete_run(run_id)
        row = (run_id, device, runtime, kernels, str(artifact), artifact_sha256, str(replay), replay_sha256,
               int(emulated), _now(), None, json.dumps(options, sort_keys=True),
               json.dumps(device_info or {}, sort_keys=True), int(samples))
        with self._db:
            self._db.execute(f"INSERT OR IGNORE INTO runs ({_RUN_COLUMNS}, digest) VALUES ({', '.join('?' * 15)})",
                             (*row, run_digest(row)))
        run = self.run(run_id)
        if run.complete:
            self.release(run_id)  # nothing will be written
        return run

    def _row(self, run_id: str) -> tuple:
        rows = self._query(f"SELECT {_RUN_COLUMNS}, digest FROM runs WHERE run_id=?", (run_id,))
        if not rows:
            raise StoreError(f"no run {run_id[:12]} in {self.path}; list runs with `python -m eval.on_device "
                             f"--store {self.path} --list-runs`")
        return rows[0]

    def run(self, run_id: str) -> RunRecord:  # checked (see _record)
        return self._record(self._row(run_id))

    def runs(self, *, device: str | None = None, runtime: str | None = None,
             replay_sha256: str | None = None) -> list[RunRecord]:
        """Every run matching the filters, in the order they were first opened."""
        where, args = [], []
        for col, value in (("device", device), ("runtime", runtime), ("replay_sha256", replay_sha256)):
            if value is not None:
                where.append(f"{col}=?")
                args.append(value)
        sql = (f"SELECT {_RUN_COLUMNS}, digest FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created, rowid")
        return [self._record(r) for r in self._query(sql, tuple(args))]

    def _record(self, row: tuple) -> RunRecord:
        """A runs row, checked: column types, options and device_info JSON objects, identity = its run id, and
        its digest over every column."""
        (run_id, device, runtime, kernels, artifact, artifact_sha, replay, replay_sha, emulated, created, finished,
         options, device_info, samples, digest) = row
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
        if digest != run_digest(row[:-1]):
            raise self._damaged(run_id, "its runs row's checksum does not match its kernels, samples, paths, times "
                                "or device_info (edited)")
        return RunRecord(run_id, device, runtime, kernels, artifact, artifact_sha, replay, replay_sha, bool(emulated),
                         created, finished, options, device_info, samples)

    def _update_run(self, run_id: str, **changes) -> None:
        """Change columns of a checked runs row and its digest with them (only if no one changed it meanwhile)."""
        self._writable()
        old = self._row(run_id)
        self._record(old)  # an edited row is refused, never resealed with a valid digest
        new = tuple(changes.get(name, value) for name, value in zip(_NAMES, old))
        with self._db:
            done = self._db.execute(f"UPDATE runs SET {', '.join(f'{c}=?' for c in changes)}, digest=? WHERE "
                                    "run_id=? AND digest=?", (*changes.values(), run_digest(new), run_id, old[-1]))
        if done.rowcount != 1:
            raise StoreError(f"run {run_id[:12]} in {self.path} changed while it was updated; re-run the same "
                             "command (one writer per run: see Store.claim)")

    def set_kernels(self, run_id: str, kernels: str) -> None:
        self._update_run(run_id, kernels=kernels)

    def finish(self, run_id: str) -> RunRecord:
        """Mark a run complete (and release this Store's claim on it); refused while samples are missing."""
        self._writable()
        run = self.run(run_id)
        done = self._count(run_id)
        if done != run.samples:
            raise StoreError(f"run {run_id[:12]} has {done} of {run.samples} samples; re-run the same command "
                             "to resume it")
        if not run.complete:
            self._update_run(run_id, finished=_now())
        self.release(run_id)
        return self.run(run_id)

    def delete_run(self, run_id: str) -> None:
        """Forget a run and everything it wrote (to measure it again from scratch)."""
        self._writable()
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
        self._writable()
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
                    (run_id, first + i, int(pred[i]), blob, row_digest(run_id, first + i, int(pred[i]), logits=blob))
                    for i, blob in enumerate(row.tobytes() for row in logits)])
                energy = None if energy_j is None else float(energy_j)
                self._db.execute("INSERT INTO batches VALUES (?,?,?,?,?,?)", (run_id, first, b, float(seconds), energy,
                                 batch_digest(run_id, first, b, seconds=float(seconds), energy_j=energy)))
        except sqlite3.IntegrityError:
            raise StoreError(f"run {run_id[:12]}: rows {first}..{first + b - 1} overlap rows already stored; a sample "
                             "is never written twice (resume skips done samples)") from None

    def _outputs(self, run: RunRecord) -> tuple[np.ndarray, np.ndarray]:
        """(pred (M,) int64, logits (M, K) float32) of every sample, each row checked (see the module docstring)."""
        rows = self._query("SELECT sample, pred, logits, digest FROM outputs WHERE run_id=? ORDER BY sample",
                           (run.run_id,))
        if len(rows) > run.samples:
            raise self._damaged(run.run_id, f"it holds {len(rows)} output rows for its {run.samples} samples")
        if len(rows) < run.samples and run.complete:  # finish() refuses a short run: rows were deleted since
            raise self._damaged(run.run_id, f"it is marked complete but holds {len(rows)} of {run.samples} rows")
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
            if type(pred) is not int or digest != row_digest(run.run_id, sample, pred, logits=blob):
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
        energy that is not a finite number >= 0, a row whose digest does not match (edited or copied), or a
        complete run whose batches do not cover every sample."""
        run, end, out = self.run(run_id), 0, []
        for first, n, seconds, energy, digest in self._query(
                "SELECT first, n, seconds, energy_j, digest FROM batches WHERE run_id=? ORDER BY first", (run_id,)):
            if type(first) is not int or type(n) is not int or n < 1 or first < end or first + n > run.samples \
                    or not _measure_ok(seconds) or not (energy is None or _measure_ok(energy)):
                raise self._damaged(run_id, f"batch at row {first!r:.20} (n={n!r:.20}, seconds={seconds!r:.20}, "
                                    f"energy_j={energy!r:.20}) is empty, outside the run, overlapping or not timed")
            if digest != batch_digest(run_id, first, n, seconds=seconds, energy_j=energy):
                raise self._damaged(run_id, f"batch at row {first}'s checksum does not match its run, rows, time and "
                                    "energy (copied from another run or edited)")
            if run.complete and first != end:
                raise self._damaged(run_id, f"no batch covers rows {end}..{first - 1} of the complete run")
            end = first + n
            out.append(BatchRow(first, n, float(seconds), None if energy is None else float(energy)))
        if run.complete and end != run.samples:
            raise self._damaged(run_id, f"its batches cover {end} of its {run.samples} rows, yet it is complete")
        return out
