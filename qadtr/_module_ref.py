"""A module source: the reference for an artifact exported from a user's own nn.Module (export.module).

    folder = save_module(net, "byo/net.source", bits=(4, 4))   # folder/model.pt (state dict) + folder/model.json
    net, src = load_module(folder)                               # the class imported by src.target, weights loaded

Laid out like a checkpoint (model.pt + model.json, qadtr.checkpoint.resolve finds both) so the replay tools
that find an export's source (devices.fakequant, eval.fleet, eval._runs) find this one the same way; model.json
holds a ModuleSource instead of a Checkpoint. No code is unpickled: model.pt is a state dict read with
`torch.load(weights_only=True)`, and the class is imported by its "module:Class" path and built with the saved
keyword arguments, so the class must be importable wherever the reference runs (a class in `__main__` only in
the process that defined it).
"""

from __future__ import annotations

import hashlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from qadtr._config import atomic_write_bytes, check_state_dict, config_from_dict, config_to_dict, read_json, \
    register_config, sha256_file, write_json
from qadtr._errors import QadtrError
from qadtr._registry import resolve as resolve_target


@register_config
@dataclass(frozen=True)
class ModuleSource:
    """What model.pt holds: the weights of `target(**kwargs)` in deploy form (what the export was proven against)."""

    VERSION = 1
    target: str  # "module:Class", imported on load
    kwargs: dict = field(default_factory=dict)  # the class's constructor keyword arguments (JSON values)
    sha256: str = ""  # of model.pt
    bits: tuple[int, int] | None = None  # (w, a) the exports are labelled with (export.module infers it)
    versions: dict = field(default_factory=dict)
    argv: tuple = ()


def paths(folder: str | Path) -> tuple[Path, Path]:
    """`folder`, `folder/model.pt` or `folder/model.json` -> (model.pt, model.json), as qadtr.checkpoint.resolve."""
    path = Path(folder)
    pt = (path / "model.pt" if path.is_dir() else path).with_suffix(".pt")
    return pt, pt.with_suffix(".json")


def target_of(model: nn.Module) -> str:
    """The "module:Class" path of `model`'s class; QadtrError when it cannot be imported by that path."""
    cls = type(model)
    if "<locals>" in cls.__qualname__:
        raise QadtrError(f"{cls.__qualname__} is defined inside a function; define it at module level so the "
                         "replay can import it, or pass target='module:Class'")
    return f"{cls.__module__}:{cls.__qualname__}"


def state_bytes(model: nn.Module) -> bytes:
    """model.pt's bytes: torch.save of the state dict (what source_sha256 is the sha256 of)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def is_module_source(path: str | Path) -> bool:
    """True when `path` (a folder, model.pt or model.json) is a module source rather than a checkpoint."""
    js = paths(path)[1]
    try:
        return js.is_file() and read_json(js).get("_type") == "ModuleSource"
    except (QadtrError, AttributeError):
        return False


def module_source_key(path: str | Path) -> tuple[str, tuple[int, int] | None] | None:
    """(sha256 of model.pt, its (w, a)) when `path` is a module source, else None (a checkpoint, or nothing)."""
    return (sha256_file(paths(path)[0]), read_module_source(path).bits) if is_module_source(path) else None


def read_module_source(path: str | Path) -> ModuleSource:
    pt, js = paths(path)
    if not pt.is_file() or not js.is_file():
        raise QadtrError(f"module source {pt.parent} needs model.pt and model.json; export the module again")
    src = config_from_dict(read_json(js))
    if not isinstance(src, ModuleSource):
        raise QadtrError(f"{js} describes a {type(src).__name__}, not a ModuleSource")
    return src


def save_module(model: nn.Module, folder: str | Path, *, bits: tuple[int, int] | None, target: str | None = None,
                kwargs: dict | None = None, data: bytes | None = None) -> Path:
    """Write folder/model.pt (state dict) and folder/model.json (ModuleSource); returns model.pt.

    A folder that already holds these weights of the same target is left as it is; one holding others is refused.
    """
    import brevitas

    pt, js = paths(Path(folder) / "model.pt")
    target = target or target_of(model)
    data = state_bytes(model) if data is None else data
    sha = hashlib.sha256(data).hexdigest()
    if pt.is_file() and js.is_file():
        old = read_module_source(pt)
        if old.sha256 == sha and old.target == target and sha256_file(pt) == sha:
            return pt
        raise QadtrError(f"{pt.parent} holds another module ({old.target}, other weights); pass another source= "
                         "folder or delete it")
    src = ModuleSource(target=target, kwargs=dict(kwargs or {}), sha256=sha, bits=bits,
                       versions={"torch": torch.__version__, "brevitas": brevitas.__version__},
                       argv=tuple(sys.argv))
    atomic_write_bytes(pt, data)
    write_json(js, config_to_dict(src))
    return pt


def load_module(path: str | Path) -> tuple[nn.Module, ModuleSource]:
    """Build `target(**kwargs)`, load model.pt into it (strict), eval mode.

    Raises:
        QadtrError: missing files, a sha256 mismatch, a class that cannot be imported, or weights that do not fit.
    """
    pt, js = paths(path)
    src = read_module_source(pt)
    if sha256_file(pt) != src.sha256:
        raise QadtrError(f"{pt} is corrupt: its sha256 differs from the one in {js.name}; export the module again")
    try:
        cls = resolve_target(src.target, what="module source")
    except (ImportError, ValueError) as e:
        raise QadtrError(f"{js}: cannot import {src.target} ({e}); put its module on PYTHONPATH") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise QadtrError(f"{js}: {src.target} is not an nn.Module class")
    state = check_state_dict(torch.load(pt, map_location="cpu", weights_only=True), str(pt), "export the module again")
    model = cls(**src.kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise QadtrError(f"{pt} does not fit {src.target}({src.kwargs}): {str(e).splitlines()[0][:200]}") from None
    return model.eval(), src
