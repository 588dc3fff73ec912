"""Resumable attack state: one .npz written atomically every `save_every` iterations.

    save_state(path, arrays, meta)             # meta: {"iteration", "rng", "config", "inputs", ...}, JSON
    arrays, meta = load_state(path, config=cfg_dict, inputs=key)   # refuses another attack's or inputs' state

The .npz (read with `allow_pickle=False`) holds:
    magic    "QADTR-QSTATE" (uint8 bytes)
    version  int, `FORMAT_VERSION`
    meta     JSON text: the iteration reached, the numpy Generator's bit-generator state, the attack's typed
             config (qadtr._config.config_to_dict) and `inputs` (a sha256 of artifact, runtime, images, labels)
    ...      the attack's arrays (current best patches, locations, losses, query counters, the trace)
Everything the next iteration reads is in the file, so a run killed at any moment (kill -9 included: the write is
`qadtr._config.atomic_write_bytes`, old or new file, never half) and resumed replays exactly the iterations an
uninterrupted run with the same seed performs, and ends with the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from qadtr._config import atomic_write_bytes, loads_json, read_versioned_npz
from qadtr._errors import QadtrError

MAGIC = b"QADTR-QSTATE"
FORMAT_VERSION = 1
HINT = "HINT: delete it (the attack restarts from its seed) or pass the --out of the run it belongs to"


def inputs_key(*, artifact_sha256: str, runtime: str, images: np.ndarray, labels: np.ndarray, extra: str = "") -> str:
    """sha256 naming what an attack queries: a state is resumed only against the very same inputs."""
    h = hashlib.sha256()
    for part in (artifact_sha256, runtime, str(images.shape), extra):
        h.update(part.encode() + b"\0")
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return h.hexdigest()


def save_state(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, magic=np.frombuffer(MAGIC, np.uint8), version=np.array(FORMAT_VERSION),
             meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path, *, config: dict, inputs: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta of a state file made by the same attack config on the same inputs."""
    config = json.loads(json.dumps(config))  # as the file holds it: tuples are lists
    arrays = read_versioned_npz(path, MAGIC, FORMAT_VERSION, kind="query-attack state", hint=HINT)
    if "meta" not in arrays:
        raise QadtrError(f"{path} holds no meta; {HINT}")
    meta = loads_json(str(arrays.pop("meta")), f"{path} meta")
    arrays.pop("magic"), arrays.pop("version")
    if not isinstance(meta, dict) or not {"iteration", "rng", "config", "inputs"} <= set(meta):
        raise QadtrError(f"{path}: meta lacks iteration, rng, config or inputs; {HINT}")
    if meta["config"] != config:
        raise QadtrError(f"{path} was written by another attack configuration ({meta['config'].get('_type')} "
                         f"{meta['config'].get('_data')}); resume with the same flags, or {HINT[6:]}")
    if meta["inputs"] != inputs:
        raise QadtrError(f"{path} was written for another artifact, runtime or image set; resume with the same "
                         f"inputs, or {HINT[6:]}")
    return arrays, meta


def restore_rng(state: dict) -> np.random.Generator:
    """A Generator continuing exactly where the saved one stopped (PCG64, numpy's default)."""
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise QadtrError(f"unreadable random-generator state in the attack state ({e}); {HINT}") from None
    return rng
