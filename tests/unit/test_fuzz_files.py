"""Fuzz the readers of result files that outlive their runs (issue 14): a replay's JSON description and the result
store's rows. Arbitrary edits, with or without the edited file's own checksums recomputed, give either the
project's one-line error or data that is still consistent: never a traceback, and never changed numbers under
the checksum a run recorded."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qadtr._errors import QadtrError

# the fixtures build their files once per test (not per example); each example starts from a fresh copy
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# any JSON value (ints within 2**70: json.dumps in the test itself refuses ints past 4300 digits)
SCALARS = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)


def _one_line(e: BaseException) -> None:
    assert isinstance(e, QadtrError) and "\n" not in str(e) and str(e), repr(e)


# -- the replay description ----------------------------------------------------------------------------------
@pytest.fixture
def replay_file(tiny_dataset, tiny_patches, tmp_path):
    from eval.replay import load_replay, make_replay

    path = make_replay(tiny_patches, "cifar10", eval_subset=16, eval_seed=1, out=tmp_path)
    return path, path.with_suffix(".json").read_text(), load_replay(path)


def _objects(d) -> list[dict]:
    """The JSON objects of a description an edit may change: the envelope, `_data`, each patch."""
    data = d.get("_data") if isinstance(d, dict) else None
    out = [d, data] + (list(data["patches"]) if isinstance(data, dict) and isinstance(data.get("patches"), list)
                       else [])
    return [o for o in out if isinstance(o, dict)]


def _edit_description(d: dict, draw) -> None:
    for _ in range(draw(st.integers(1, 3))):
        obj = draw(st.sampled_from(_objects(d)))
        key = draw(st.sampled_from(sorted(obj)) | st.text(max_size=6)) if obj else draw(st.text(max_size=6))
        action = draw(st.sampled_from(["set", "nudge", "delete"]))
        if action == "delete":
            obj.pop(key, None)
        elif action == "nudge" and type(obj.get(key)) is int:
            obj[key] += draw(st.integers(-3, 3))
        elif action == "nudge" and type(obj.get(key)) is bool:
            obj[key] = not obj[key]
        elif action == "nudge" and obj.get(key) is None:
            obj[key] = draw(st.integers(-1, 11))
        else:
            obj[key] = draw(JSON)


@FUZZ
@given(data=st.data())
def test_replay_description_edits_are_refused_or_harmless(replay_file, data):
    from eval.replay import description_sha256, load_replay

    path, text, original = replay_file
    reseal = data.draw(st.booleans(), label="reseal")
    if data.draw(st.booleans(), label="raw bytes"):  # truncate or overwrite a stretch of the text itself
        raw = bytearray(text.encode())
        at = data.draw(st.integers(0, len(raw) - 1))
        cut = data.draw(st.binary(max_size=6))
        raw[at:at + len(cut)] = cut
        path.with_suffix(".json").write_bytes(bytes(raw[:data.draw(st.integers(at, len(raw)))]))
    else:
        d = copy.deepcopy(json.loads(text))
        _edit_description(d, data.draw)
        if reseal and isinstance(d.get("_data"), dict):
            d["_data"]["sha256"] = description_sha256(d["_data"])
        path.with_suffix(".json").write_text(json.dumps(d))
    try:
        r = load_replay(path)
    except Exception as e:  # noqa: BLE001 - anything but QadtrError fails below
        _one_line(e)
        return
    same = dataclasses.replace(r.info, created="") == dataclasses.replace(original.info, created="")
    assert same or r.sha256 != original.sha256  # a changed description never keeps the runs' checksum
    pred = np.zeros(len(r), np.int64)  # (M,) a loaded replay is usable: every ASR and the accuracy compute
    r.asr(pred)
    assert r.clean_accuracy(pred).n == r.info.n_subset <= len(r)


# -- the result store's rows ------------------------------------------------------------------------------------
M, K = 10, 4  # samples and classes of each fuzzed run: three batches (4, 4, 2)
# every column an edit may change, and the values it may write (SQLite is dynamically typed: any column holds any)
COLUMNS = [("outputs", c) for c in ("sample", "pred", "logits", "digest")] + \
          [("batches", c) for c in ("first", "n", "seconds", "energy_j")] + \
          [("runs", c) for c in ("run_id", "device", "runtime", "kernels", "artifact", "artifact_sha256", "replay",
                                 "replay_sha256", "emulated", "created", "finished", "options", "device_info",
                                 "samples")]
VALUES = (st.none() | st.integers(-2 ** 63, 2 ** 63 - 1) | st.integers(-3, 12) | st.floats() | st.text(max_size=20)
          | st.binary(max_size=24) | st.just("{}") | st.just("copy"))


@pytest.fixture
def store_file(tmp_path):
    """(a store with two complete runs, their ids, {run id: (logits, preds)})."""
    from eval.store import Store

    path, want = tmp_path / "base.sqlite", {}
    with Store(path) as s:
        for k, runtime in enumerate(("fakequant", "onnxrt")):
            run = s.open_run(device="local", runtime=runtime, artifact="m", artifact_sha256="a" * 64,
                             replay="r.npz", replay_sha256="b" * 64, samples=M, options={"bits": [4, 4]})
            logits = np.random.default_rng(k).normal(size=(M, K)).astype(np.float32)
            for first in (0, 4, 8):
                s.write_batch(run.run_id, first=first, logits=logits[first:first + 4], seconds=0.01)
            s.finish(run.run_id)
            want[run.run_id] = (logits, logits.argmax(1))
    return path, list(want), want


def _edit_store(path: Path, ids: list[str], draw) -> bool:
    """Apply 1-3 edits; True when a changed output row's checksum was recomputed (with this code)."""
    from eval.store import row_digest

    db, resealed = sqlite3.connect(path), False
    try:  # closed also when hypothesis stops a case mid-draw
        for _ in range(draw(st.integers(1, 3))):
            table, column = draw(st.sampled_from(COLUMNS))
            k = draw(st.integers(0, 1))
            key = {"outputs": ("sample", draw(st.integers(0, M - 1))),
                   "batches": ("first", draw(st.sampled_from([0, 4, 8]))), "runs": ("run_id", None)}[table]
            row = f" AND {key[0]} = {key[1]}" if key[1] is not None else ""
            where, other = f"run_id = ?{row}", f"o.run_id = ?{row.replace(key[0], f'o.{key[0]}')}"
            value = draw(VALUES)
            try:
                if draw(st.integers(0, 9)) == 0:
                    db.execute(f"DELETE FROM {table} WHERE {where}", (ids[k],))
                elif isinstance(value, str) and value == "copy":  # the same cell of the other run
                    db.execute(f"UPDATE {table} SET {column} = (SELECT o.{column} FROM {table} o WHERE {other}) "
                               f"WHERE {where}", (ids[1 - k], ids[k]))
                else:
                    db.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (value, ids[k]))
                if table == "outputs" and draw(st.booleans()):
                    for sample, pred, blob in db.execute("SELECT sample, pred, logits FROM outputs WHERE run_id = ?",
                                                         (ids[k],)).fetchall():
                        if type(sample) is int and type(pred) is int and type(blob) is bytes:
                            db.execute("UPDATE outputs SET digest = ? WHERE run_id = ? AND sample = ?",
                                       (row_digest(ids[k], sample, pred, logits=blob), ids[k], sample))
                    resealed = True
                db.commit()
            except sqlite3.IntegrityError:  # NOT NULL, a duplicate key: the database itself refuses the edit
                db.rollback()
    finally:
        db.close()
    return resealed


@FUZZ
@given(data=st.data())
def test_store_row_edits_are_refused_or_harmless(store_file, tmp_path, data):
    from eval.store import Store

    base, ids, want = store_file
    path = tmp_path / "edited.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    shutil.copy(base, path)
    resealed = _edit_store(path, ids, data.draw)
    with Store(path) as s:
        for run_id in ids:
            for read in (s.run, s.logits, s.preds, s.batches):
                try:
                    got = read(run_id)
                except Exception as e:  # noqa: BLE001 - anything but QadtrError fails here
                    _one_line(e)
                    continue
                if read == s.logits:
                    assert np.isfinite(got).all() and got.shape[0] == M
                    assert resealed or np.array_equal(got, want[run_id][0])  # never changed numbers unsealed
                    assert np.array_equal(s.preds(run_id), got.argmax(1))
                elif read == s.preds:
                    assert resealed or np.array_equal(got, want[run_id][1])
                elif read == s.batches:
                    assert all(b.n >= 1 and 0 <= b.first and b.first + b.n <= M and b.seconds >= 0 for b in got)
        try:
            s.runs()
        except Exception as e:  # noqa: BLE001
            _one_line(e)
