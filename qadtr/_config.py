"""Typed, versioned JSON for every artifact (torchao's config_to_dict / config_from_dict).

Each artifact (checkpoint, .onnx, .tflite, engine, patch) gets a JSON file beside it:
`{"_type": "ModelConfig", "_version": 1, "_data": {...}}`. Loading rebuilds the dataclass from an
allow-list, so a JSON file can never name an arbitrary class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from qadtr._errors import QadtrError

_ALLOWED: dict[str, type] = {}


def register_config(cls: type) -> type:
    """Class decorator: allow `cls` to be rebuilt from JSON. The class needs a `VERSION` int."""
    _ALLOWED[cls.__name__] = cls
    return cls


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A frozen dataclass -> `{"_type", "_version", "_data"}`; nested configs are tagged too."""
    data = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        data[f.name] = value
    return {"_type": type(cfg).__name__, "_version": cfg.VERSION, "_data": data}


def config_from_dict(d: dict[str, Any]) -> Any:
    """Inverse of `config_to_dict`; only registered classes are built, unknown fields are refused."""
    if not isinstance(d, dict) or "_type" not in d or "_data" not in d:
        raise QadtrError("not a qadtr config (expected keys _type, _version, _data); re-create the artifact")
    name = d["_type"]
    if name not in _ALLOWED:
        raise QadtrError(f"unknown config type {name!r}; known: {sorted(_ALLOWED)}")
    cls = _ALLOWED[name]
    if d.get("_version") != cls.VERSION:
        warnings.warn(f"{name} version {d.get('_version')} differs from this code's {cls.VERSION}; "
                      "re-create the artifact if loading fails", stacklevel=2)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d["_data"]) - set(fields)
    if unknown:
        raise QadtrError(f"{name}: unknown fields {sorted(unknown)}; the artifact was written by another version")
    kwargs = {}
    for key, value in d["_data"].items():
        if isinstance(value, dict) and "_type" in value:
            value = config_from_dict(value)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise QadtrError(f"invalid {name} in the artifact's JSON: {e}") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise QadtrError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QadtrError(f"{path} is not valid JSON ({e}); re-create it") from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_versioned_npz(path, magic: bytes, version: int, kind: str, hint: str) -> dict:
    """The arrays of a binary artifact that starts with `magic` and a format `version` (patch and replay
    files); every refusal names what is wrong and ends with `hint` (what to re-run)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any failure to parse means it is not our file
        raise QadtrError(f"{path} is not a readable .npz ({type(e).__name__}); {hint}") from None
    if "magic" not in arrays or arrays["magic"].tobytes() != magic:
        raise QadtrError(f"{path} is not a qadtr {kind} file (bad magic); {hint}")
    found = int(arrays.get("version", -1))
    if found != version:
        raise QadtrError(f"{path} has {kind} format version {found}, this code reads {version}; {hint}")
    return arrays
