"""The SQLite file under eval.store: its schema, opening it to write or to read (read-only media too), and the
per-run writer claims.

Opening to write creates the file and its schema. Opening to read (`readonly`) uses a `mode=ro` URI: a missing or
empty file is refused, never created, and nothing is written. A store on read-only media (its folder not writable,
so SQLite cannot create WAL's `-shm` index and the first read fails) is opened again `immutable=1`: SQLite then
reads the main file without locks or index. That is sound because nothing writes it: a writer needs the same `-shm`
(had one the store open, the index would exist and the first open would have worked), and no writer can create it
on that media. Unmerged writes in a `-wal` file would be ignored that way, so they are refused. (A writer with more
rights on the folder, starting while the file is read, is not seen: the digests of eval.store refuse torn rows.)

A claim is a row of the `writers` table (run_id, pid, host, started), taken in one write transaction and deleted on
release: a second writer of the same run sees it and stops before any inference, instead of computing the run again
and losing on a row overlap. A claim outlives a process killed with -9, so it is stale, and taken over, when it was
made on this host by a pid that no longer runs, or by this very pid outside this process's own claims (a container
restarts its command with the same pid). A claim made on another host cannot be checked from here: it is respected.

Example:
    >>> db = connect(Path("results/results.sqlite"), readonly=True)
    >>> holder = take(db, run_id, key="/abs/results.sqlite")   # None: claimed; else (pid, host, started)
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from qadtr._errors import QadtrError

# PRAGMA user_version; 2: outputs carry `digest` (a version-1 store has nothing to verify); 3: runs and batches
# carry one too (a version-2 store's timings and kernels cannot be verified), the writers table holds claims
SCHEMA_VERSION = 3
# named columns, not *, are read everywhere: a column added here is a new SCHEMA_VERSION, never silently read
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, device TEXT NOT NULL, runtime TEXT NOT NULL, kernels TEXT NOT NULL,
    artifact TEXT NOT NULL, artifact_sha256 TEXT NOT NULL, replay TEXT NOT NULL, replay_sha256 TEXT NOT NULL,
    emulated INTEGER NOT NULL, created TEXT NOT NULL, finished TEXT, options TEXT NOT NULL,
    device_info TEXT NOT NULL, samples INTEGER NOT NULL, digest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outputs (
    run_id TEXT NOT NULL REFERENCES runs(run_id), sample INTEGER NOT NULL, pred INTEGER NOT NULL,
    logits BLOB NOT NULL, digest BLOB NOT NULL, PRIMARY KEY (run_id, sample));
CREATE TABLE IF NOT EXISTS batches (
    run_id TEXT NOT NULL REFERENCES runs(run_id), first INTEGER NOT NULL, n INTEGER NOT NULL,
    seconds REAL NOT NULL, energy_j REAL, digest BLOB NOT NULL, PRIMARY KEY (run_id, first));
CREATE TABLE IF NOT EXISTS writers (
    run_id TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, started TEXT NOT NULL);
"""
# the claims this process holds, as (store file, run id): a row with our own pid is live only if it is in here
_HELD: set[tuple[str, str]] = set()
_LOCK = threading.Lock()  # one claim or release at a time in this process: _HELD and the table change together


class StoreError(QadtrError):
    """A store that is not ours, a write that would count a sample twice, an incomplete run read as complete."""


class IncompleteRun(StoreError):
    """A run read before every sample is stored (resume it); damaged rows raise StoreError itself."""


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """The store's connection, its schema checked (and, to write, created); StoreError naming the fix."""
    try:
        return _open_readonly(path) if readonly else _open_writer(path)
    except OSError as e:  # a folder that cannot be made
        raise StoreError(f"{path} cannot be written ({e}); pass a --store on writable disk") from None
    except sqlite3.DatabaseError as e:
        name, text = str(getattr(e, "sqlite_errorname", "")), " ".join(str(e).split())
        if not readonly and name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")):
            raise StoreError(f"{path} cannot be written ({text}: a read-only file or folder?); pass a --store on "
                             "writable disk") from None
        if name.startswith("SQLITE_CANTOPEN"):  # a file we may not read: not a foreign file
            raise StoreError(f"{path} cannot be opened ({text}: is it readable?); pass another --store") from None
        raise StoreError(f"{path} is not a SQLite result store ({text}); pass another --store") from None


def _open_writer(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30.0)  # timeout: wait out another writer (a fleet)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crashed process loses no commit
    db.execute("PRAGMA foreign_keys=ON")
    _check_schema(db, path, readonly=False)
    with db:
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return db


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreError(f"no result store at {path}; run `python -m eval.on_device ...` first or pass --store")
    if path.stat().st_size == 0:
        raise StoreError(f"{path} is an empty file, not a result store; run `python -m eval.on_device ... --store "
                         f"{path}` to fill it, or pass another --store")
    uri = path.resolve().as_uri() + "?mode=ro"  # as_uri escapes a path's '?', '#' and '%'
    try:
        db = sqlite3.connect(uri, uri=True, timeout=30.0)
        _check_schema(db, path, readonly=True)
        return db
    except sqlite3.OperationalError as e:  # CANTOPEN on a read-only mount, READONLY_DIRECTORY in a 0555 folder
        if getattr(e, "sqlite_errorname", "") not in ("SQLITE_CANTOPEN", "SQLITE_READONLY_DIRECTORY"):
            raise
    # the file itself opened, so its folder refused the -shm index: read-only media (see the module docstring)
    wal = Path(f"{path}-wal")
    if wal.is_file() and wal.stat().st_size:
        raise StoreError(f"{path} is on read-only media with unmerged writes in {wal.name}, which SQLite cannot read "
                         f"there; copy {path.name} and {wal.name} to a writable folder and pass that --store")
    db = sqlite3.connect(uri + "&immutable=1", uri=True)
    _check_schema(db, path, readonly=True)
    return db


def _check_schema(db: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
    if readonly and not tables:
        raise StoreError(f"{path} holds no result store (an empty database); run `python -m eval.on_device ... "
                         f"--store {path}` to fill it, or pass another --store")
    if tables and version != SCHEMA_VERSION:
        raise StoreError(f"{path} has store schema version {version}, this code writes {SCHEMA_VERSION}; pass a new "
                         "--store file (results are not migrated)")


# -- writer claims ----------------------------------------------------------------------------------------
def _alive(pid: object, host: object, held: bool) -> bool:
    """Whether the process that made a claim may still be writing (unknowable on another host: assume so)."""
    if host != socket.gethostname() or type(pid) is not int:
        return True
    if pid == os.getpid():
        return held
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # PermissionError: another user's live process
        return True
    return True


def take(db: sqlite3.Connection, run_id: str, *, key: str) -> tuple | None:
    """Claim `run_id` for this process in the store file `key`; None when claimed, else the live holder's
    (pid, host, started). A stale claim is replaced in the same transaction, so two takers cannot both win."""
    with _LOCK:
        db.execute("BEGIN IMMEDIATE")  # the write lock first: the check and the insert see the same table
        try:
            row = db.execute("SELECT pid, host, started FROM writers WHERE run_id=?", (run_id,)).fetchone()
            if row is not None and _alive(row[0], row[1], (key, run_id) in _HELD):
                db.rollback()
                return tuple(row)
            db.execute("INSERT OR REPLACE INTO writers VALUES (?,?,?,?)", (run_id, os.getpid(), socket.gethostname(),
                       datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")))
            db.commit()
        except BaseException:
            db.rollback()
            raise
        _HELD.add((key, run_id))
        return None


def give_back(db: sqlite3.Connection, run_id: str, *, key: str) -> None:
    """Release a claim this process holds."""
    with _LOCK:
        try:
            with db:
                db.execute("DELETE FROM writers WHERE run_id=? AND pid=? AND host=?",
                           (run_id, os.getpid(), socket.gethostname()))
        finally:
            _HELD.discard((key, run_id))
