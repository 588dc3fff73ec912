"""Typed, versioned JSON for every artifact (torchao's config_to_dict / config_from_dict).

Each artifact (checkpoint, .onnx, .tflite, engine, patch) gets a JSON file beside it:
`{"_type": "ModelConfig", "_version": 1, "_data": {...}}`. Loading rebuilds the dataclass from an
allow-list, so a JSON file can never name an arbitrary class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import reprlib
import tempfile
import types
import typing
import warnings
from pathlib import Path
from typing import Any

from qadtr._errors import QadtrError

_ALLOWED: dict[str, type] = {}
_FIELD_TYPES: dict[type, dict[str, Any]] = {}  # field_types' cache: get_type_hints evaluates annotations
# Configs nest three deep (Checkpoint > TrainConfig > recipe config); a file nesting more is not ours, and
# refusing it early keeps a crafted file from exhausting the stack.
_MAX_DEPTH = 8


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


def config_from_dict(d: Any, *, _depth: int = 0) -> Any:
    """Inverse of `config_to_dict`: only registered classes are built, and each field's JSON value is checked
    against the field's annotation (`check_value`) before the class's own validation runs.

    Raises:
        QadtrError: not a typed dict, an unknown class, a `_version` newer than this code, unknown fields,
            a value of the wrong type, or one the class refuses; each message names the fix.
    """
    cls = _config_class(d, _depth)
    name, data = cls.__name__, d["_data"]
    types_ = field_types(cls)
    unknown = set(data) - set(types_)
    if unknown:
        raise QadtrError(f"{name}: unknown fields {sorted(map(str, unknown))}; the artifact was written by another "
                         "version; re-create it")
    kwargs = {key: check_value(value, types_[key], f"{name}.{key}", _depth=_depth + 1) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise QadtrError(f"invalid {name} in the artifact's JSON: {e}") from None


def _config_class(d: Any, depth: int) -> type:
    """The registered class a typed dict names, after checking its envelope (`_type`, `_version`, `_data`)."""
    if not isinstance(d, dict) or not {"_type", "_version", "_data"} <= set(d):
        raise QadtrError("not a qadtr config (expected keys _type, _version, _data); re-create the artifact")
    name, version = d["_type"], d["_version"]
    if not isinstance(name, str):
        raise QadtrError(f"_type is {_kind(name)}, expected a class name string; re-create the artifact")
    if name not in _ALLOWED:
        raise QadtrError(f"unknown config type {name!r}; known: {sorted(_ALLOWED)}")
    if depth > _MAX_DEPTH:
        raise QadtrError(f"{name} sits more than {_MAX_DEPTH} configs deep; not a qadtr artifact, re-create it")
    cls = _ALLOWED[name]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise QadtrError(f"{name} has _version {_kind(version)}, expected an integer >= 1; re-create the artifact")
    if version > cls.VERSION:
        raise QadtrError(f"{name} version {version} was written by a newer qadtr-edge (this one reads version "
                         f"{cls.VERSION}); install the newer qadtr-edge that wrote it (pip install -U qadtr-edge) "
                         "or re-create the file with this one")
    if version < cls.VERSION:
        warnings.warn(f"{name} version {version} differs from this code's {cls.VERSION}; "
                      "re-create the artifact if loading fails", stacklevel=3)
    if not isinstance(d["_data"], dict):
        raise QadtrError(f"{name}: _data is {_kind(d['_data'])}, expected an object of fields; re-create the artifact")
    return cls


def field_types(cls: type) -> dict[str, Any]:
    """{field: resolved annotation} of a dataclass, resolved once per class."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _FIELD_TYPES[cls]


def check_value(value: Any, tp: Any, where: str, *, _depth: int = 0, _expected: str = "") -> Any:
    """The Python value of a field annotated `tp` from its parsed-JSON `value` (lists become tuples, typed dicts
    configs); a value of another type is a QadtrError naming `where`, the value and the expected type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        if isinstance(value, dict) and "_type" in value:
            return config_from_dict(value, _depth=_depth)
        if isinstance(value, list):
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's checks, the whole annotation in the message
            return check_value(value, options[0], where, _depth=_depth, _expected=type_name(tp))
        for option in options:
            try:
                return check_value(value, option, where, _depth=_depth)
            except QadtrError:
                pass
    elif tp is tuple or origin is tuple:
        if isinstance(value, list):
            return _check_tuple(value, args, where, depth=_depth)
    elif dataclasses.is_dataclass(tp):
        cfg = config_from_dict(value, _depth=_depth) if isinstance(value, dict) else None
        if isinstance(cfg, tp):
            return cfg
    elif _is_json(value, tp):
        return value
    raise QadtrError(f"{where} is {_kind(value)}, expected {_expected or type_name(tp)}; re-create the artifact or "
                     "fix that field")


def _check_tuple(value: list, args: tuple, where: str, *, depth: int) -> tuple:
    if not args:  # a bare `tuple` field: items as they are, inner lists as tuples (e.g. bits pairs)
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(check_value(v, args[0], f"{where}[{i}]", _depth=depth) for i, v in enumerate(value))
    if len(value) != len(args):
        raise QadtrError(f"{where} has {len(value)} items, expected {type_name(tuple[args])}; re-create the artifact "
                         "or fix that field")
    return tuple(check_value(v, a, f"{where}[{i}]", _depth=depth) for i, (v, a) in enumerate(zip(value, args)))


def _is_json(value: Any, tp: Any) -> bool:
    """Whether a JSON scalar/object fits a plain annotation; bool is not an int here, an int is a float."""
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (str, bool, dict):
        return isinstance(value, tp)
    raise TypeError(f"config field type {tp!r} has no JSON check; add it to qadtr._config.check_value")


def type_name(tp: Any) -> str:
    """A reader's name for an annotation: 'an integer', 'a list of 2 items', ...; TypeError for one `check_value`
    cannot check (a test walks every registered class through this)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any JSON value"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if tp is tuple or origin is tuple:
        if not args:
            return "a list"
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of ({type_name(args[0])})"
        return f"a list of {len(args)} items ({', '.join(type_name(a) for a in args)})"
    if dataclasses.is_dataclass(tp):
        return f"a typed {tp.__name__} object"
    names = {float: "a finite number", int: "an integer", str: "a string", bool: "true or false", dict: "an object"}
    if tp not in names:
        raise TypeError(f"config field type {tp!r} has no JSON check; add it to qadtr._config.check_value")
    return names[tp]


def _kind(value: Any) -> str:
    """'a list [1, 2]', "a string '3'": what was found, short (reprlib caps length and nesting) for one line."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number"}
    return "null" if value is None else f"{kinds.get(type(value), type(value).__name__)} {reprlib.repr(value)}"


def _proc_umask() -> int | None:
    """The process umask as Linux reports it (/proc/self/status), read without changing it; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _toggled_umask() -> int:
    """The umask read by setting and restoring it (os has no getter before Python 3.13): done once, at import,
    because toggling it per write would race with other threads creating files (eval.fleet replays in threads)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _proc_umask()
if _IMPORT_UMASK is None:
    _IMPORT_UMASK = _toggled_umask()


def _umask() -> int:
    """The umask now where the OS reports it without side effects, else the one at import."""
    mask = _proc_umask()
    return _IMPORT_UMASK if mask is None else mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets the mode open() would give it
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
    """The parsed JSON of a file; QadtrError when it is missing, not UTF-8, not JSON or nested too deeply."""
    path = Path(path)
    if not path.is_file():
        raise QadtrError(f"{path} not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise QadtrError(f"{path} is not valid JSON ({e}); re-create it") from None
    return loads_json(text, str(path))


def loads_json(text: str, where: str) -> Any:
    """`json.loads` whose every failure is one QadtrError naming `where`: bad syntax, integers too long for
    Python's int conversion limit (ValueError), nesting past the recursion limit (RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise QadtrError(f"{where} nests too deeply to be a qadtr file; re-create it") from None
    except ValueError as e:  # json.JSONDecodeError is one
        raise QadtrError(f"{where} is not valid JSON ({str(e)[:100]}); re-create it") from None


def check_state_dict(obj: Any, where: str, hint: str) -> dict:
    """`obj` (what `torch.load(weights_only=True)` returned) if it is a state dict, names -> tensors; anything
    else (a list, a bare tensor, non-tensor values) is one QadtrError naming `where` and ending with `hint`."""
    import torch

    if not isinstance(obj, dict):
        raise QadtrError(f"{where} holds no state dict (names -> tensors) but a {type(obj).__name__}; {hint}")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise QadtrError(f"{where} holds no state dict: key {reprlib.repr(key)} is not a name; {hint}")
        if not isinstance(value, torch.Tensor):
            raise QadtrError(f"{where} holds no state dict: {reprlib.repr(key)} is a {type(value).__name__}, not a "
                             f"tensor; {hint}")
    return obj


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_versioned_npz(path, magic: bytes, version: int, *, kind: str, hint: str) -> dict:
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
