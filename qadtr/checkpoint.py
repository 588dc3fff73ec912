"""Checkpoints: `model.pt` (a plain state dict, `torch.load(weights_only=True)`) + `model.json`.

`model.json` = {"_type": "Checkpoint", "_version": 1, "_data": {model config, train config, sha256 of
model.pt, metrics, versions, argv}}. Loading checks the sha256 and that the state dict matches the
config, and says what to do when either fails.
"""

from __future__ import annotations

import io
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from qadtr import __version__
from qadtr._config import atomic_write_bytes, check_state_dict, config_from_dict, config_to_dict, read_json, \
    register_config, sha256_file, write_json
from qadtr._errors import QadtrError
from qadtr.models import ModelConfig, create_model
from qadtr.recipes import RECIPE_CONFIGS  # noqa: F401  (importing registers DqConfig, ... for model.json)
from qadtr.train_config import TrainConfig  # registers TrainConfig for model.json; the type of Checkpoint.train


@register_config
@dataclass(frozen=True)
class Checkpoint:
    VERSION = 1
    model: ModelConfig
    train: TrainConfig | None = None  # the TrainConfig that made it (None for imported weights)
    sha256: str = ""  # of model.pt
    metrics: dict = field(default_factory=dict)  # e.g. {"test_acc": {"w4a4": {...}}}
    versions: dict = field(default_factory=dict)
    argv: tuple = ()


def versions() -> dict[str, str]:
    import brevitas
    import numpy

    return {"qadtr": __version__, "torch": torch.__version__, "brevitas": brevitas.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def resolve(path: str | Path) -> tuple[Path, Path]:
    """`run/`, `run/model.pt` or `run/model.json` -> (model.pt, model.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    pt = path.with_suffix(".pt")
    return pt, pt.with_suffix(".json")


def save_checkpoint(model: nn.Module, path: str | Path, *, model_cfg: ModelConfig,
                    train_cfg: TrainConfig | None = None, metrics: dict | None = None) -> Path:
    """Write model.pt and model.json atomically; returns the .pt path."""
    pt, js = resolve(path)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(pt, buf.getvalue())
    ck = Checkpoint(model=model_cfg, train=train_cfg, sha256=sha256_file(pt), metrics=metrics or {},
                    versions=versions(), argv=tuple(sys.argv))
    write_json(js, config_to_dict(ck))
    return pt


def module_source_key(path: str | Path) -> tuple[str, tuple[int, int] | None] | None:
    """(sha256, (w, a)) of a module source in checkpoint layout (qadtr._module_ref, export.module), else None."""
    from qadtr._module_ref import module_source_key as key

    return key(path)


def read_checkpoint_info(path: str | Path) -> Checkpoint:
    pt, js = resolve(path)
    if not pt.is_file():
        raise QadtrError(f"checkpoint {pt} not found; train one with `python -m qadtr.train` or use the zoo/")
    if not js.is_file():
        raise QadtrError(f"{js} is missing: a checkpoint is model.pt plus its model.json; copy both")
    try:
        ck = config_from_dict(read_json(js))
    except QadtrError as e:  # name the file (read_json's own messages already do)
        raise QadtrError(str(e) if str(js) in str(e) else f"{js}: {e}") from None
    if not isinstance(ck, Checkpoint):
        raise QadtrError(f"{js} describes a {type(ck).__name__}, not a Checkpoint")
    return ck


def load_checkpoint(path: str | Path, *, verify: bool = True) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model from model.json and load model.pt (eval mode).

    Raises:
        QadtrError: missing files, sha256 mismatch (corrupt file), or weights that don't fit the config.
    """
    pt, js = resolve(path)
    ck = read_checkpoint_info(pt)
    if verify and sha256_file(pt) != ck.sha256:
        raise QadtrError(f"{pt} is corrupt: its sha256 differs from the one in {js.name}; "
                         "re-copy the checkpoint or retrain it")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise QadtrError(f"cannot read {pt} ({type(e).__name__}: {str(e)[:80]}); re-copy or retrain it") from None
    state = check_state_dict(state, str(pt), "re-copy the checkpoint or retrain it")
    model = create_model(ck.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise QadtrError(f"{pt} does not match its config ({ck.model.arch}, bits={ck.model.bits}): {first[:200]}") from None
    return model.eval(), ck
