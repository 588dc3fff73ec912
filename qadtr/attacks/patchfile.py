"""Adversarial patches as versioned files: `save_patch(patch, "p.npz")` -> p.npz + p.png + p.json.

The .npz (read with `allow_pickle=False`) holds:
    magic       "QADTR-PATCH" (uint8 bytes)
    version     int, `FORMAT_VERSION`
    values      (3, s, s) universal or (N, 3, s, s) per-image, float32 in [0, 1]: the exact values
    placement_* (N,) per-image placements (per-image attacks only; see `_place.Placement`)
    indices     (N,) int64 indexes of the attacked images in `data` (per-image attacks only)
    meta        JSON text: attack, its config (typed, `qadtr._config`), size fraction and pixels, EOT
                ranges, target (null = untargeted), source model sha256 and bit widths, seed, data, log
The .png beside it shows the patch (8x nearest-neighbour upscale) and the .json repeats `meta` for
people and `jq`. Only the .npz is read back.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from qadtr._config import atomic_write_bytes, config_from_dict, config_to_dict, read_versioned_npz, write_json
from qadtr._errors import QadtrError
from qadtr.attacks._place import EOTConfig, Placement

MAGIC = b"QADTR-PATCH"
FORMAT_VERSION = 1
HINT = "HINT: re-create it with `python -m qadtr.attack CHECKPOINT --attack ... --out DIR`"


@dataclass(frozen=True, eq=False)
class Patch:
    """An attack's result: the patch values plus everything needed to replay it."""

    values: np.ndarray  # (3, s, s) or (N, 3, s, s) float32 in [0, 1]
    attack: str  # universal | lavan | location | aqapa
    config: Any  # the attack's frozen config (UniversalConfig, ...)
    size: float  # requested fraction of the image area
    side: int  # patch side in pixels
    target: int | None  # target class; None = untargeted
    eot: EOTConfig  # placement ranges to evaluate a universal patch with
    seed: int = 0
    model_sha256: str = ""  # sha256 of the source model.pt ("" when unknown, e.g. in tests)
    bits: tuple[tuple[int, int], ...] = ()  # source bit widths (w, a); () = float model
    data: str = ""  # where the images came from, e.g. "cifar10/train" (per-image: the attacked split)
    placement: Placement | None = None  # per-image attacks: where each patch sits
    indices: np.ndarray | None = None  # per-image attacks: (N,) image indexes in `data`
    log: tuple[dict, ...] = field(default_factory=tuple)  # optimisation trace, e.g. {"step", "loss", "success"}

    @property
    def per_image(self) -> bool:
        return self.values.ndim == 4

    def with_source(self, *, model_sha256: str, bits: tuple[tuple[int, int], ...], data: str) -> "Patch":
        return replace(self, model_sha256=model_sha256, bits=tuple(tuple(b) for b in bits), data=data)

    def meta(self) -> dict:
        return {"attack": self.attack, "config": config_to_dict(self.config), "size": self.size,
                "side": self.side, "target": self.target, "eot": config_to_dict(self.eot), "seed": self.seed,
                "model_sha256": self.model_sha256, "bits": [list(b) for b in self.bits], "data": self.data,
                "log": list(self.log)}


def patch_name(patch: Patch) -> str:
    """A file stem naming source, attack, size and target: `w8a8_universal_s10_t3`."""
    bits = "float" if not patch.bits else "+".join(f"w{w}a{a}" for w, a in patch.bits)
    target = "untargeted" if patch.target is None else f"t{patch.target}"
    return f"{bits}_{patch.attack}_s{round(100 * patch.size):02d}_{target}"


def save_patch(patch: Patch, path: str | Path) -> Path:
    """Write PATH.npz (the patch), PATH.png (a picture) and PATH.json (metadata); returns the .npz path."""
    path = Path(path).with_suffix(".npz")
    _validate_values(patch.values, patch.side, str(path))
    arrays = {"magic": np.frombuffer(MAGIC, dtype=np.uint8), "version": np.array(FORMAT_VERSION),
              "values": np.ascontiguousarray(patch.values, dtype=np.float32),
              "meta": np.array(json.dumps(patch.meta(), sort_keys=True))}
    if patch.placement is not None:
        arrays.update(patch.placement.to_arrays())
    if patch.indices is not None:
        arrays["indices"] = np.asarray(patch.indices, dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    write_json(path.with_suffix(".json"), {k: v for k, v in patch.meta().items() if k != "log"})
    _save_png(patch.values, path.with_suffix(".png"))
    return path


def _save_png(values: np.ndarray, path: Path, zoom: int = 8) -> None:
    from PIL import Image

    tiles = values[None] if values.ndim == 3 else values[:16]  # (T, 3, s, s)
    pix = np.rint(np.clip(tiles, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)  # (T, s, s, 3)
    row = np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in pix], axis=1)
    img = Image.fromarray(row).resize((row.shape[1] * zoom, row.shape[0] * zoom), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _validate_values(values: np.ndarray, side: int, where: str) -> None:
    if values.dtype != np.float32:
        raise QadtrError(f"{where}: patch values are {values.dtype}, expected float32; {HINT}")
    if values.ndim not in (3, 4) or values.shape[-3:] != (3, side, side):
        raise QadtrError(f"{where}: patch shape {values.shape}, expected (3, {side}, {side}) or "
                         f"(N, 3, {side}, {side}) for side={side}; {HINT}")
    if not np.isfinite(values).all():
        raise QadtrError(f"{where}: patch holds NaN or inf values; {HINT}")
    if values.min() < 0.0 or values.max() > 1.0:
        raise QadtrError(f"{where}: patch values span [{values.min():.3g}, {values.max():.3g}], outside [0, 1]; "
                         f"{HINT}")


def load_patch(path: str | Path) -> Patch:
    """Read and validate a patch file.

    Raises:
        QadtrError: not a patch file, another format version, bad shape/range/dtype, or inconsistent
            metadata; each message says what is wrong and what to re-run.
    """
    path = Path(path)
    if not path.is_file():
        raise QadtrError(f"patch file {path} not found; {HINT}")
    arrays = read_versioned_npz(path, MAGIC, FORMAT_VERSION, "patch", HINT)
    missing = {"values", "meta"} - set(arrays)
    if missing:
        raise QadtrError(f"{path} lacks {sorted(missing)}; {HINT}")
    try:
        meta = json.loads(str(arrays["meta"]))
        side = int(meta["side"])
        config, eot = config_from_dict(meta["config"]), config_from_dict(meta["eot"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise QadtrError(f"{path}: unreadable metadata ({type(e).__name__}: {e}); {HINT}") from None
    values = arrays["values"]
    _validate_values(values, side, str(path))
    placement = indices = None
    if values.ndim == 4:
        if "placement_x" not in arrays or "indices" not in arrays:
            raise QadtrError(f"{path}: per-image patches without placements or image indices; {HINT}")
        placement, indices = Placement.from_arrays(arrays), arrays["indices"]
        if len(placement) != len(values) or len(indices) != len(values):
            raise QadtrError(f"{path}: {len(values)} patches, {len(placement)} placements, {len(indices)} "
                             f"indices; they must match; {HINT}")
    return Patch(values=values, attack=meta["attack"], config=config, size=float(meta["size"]), side=side,
                 target=meta["target"], eot=eot, seed=int(meta["seed"]), model_sha256=meta["model_sha256"],
                 bits=tuple(tuple(b) for b in meta["bits"]), data=meta["data"], placement=placement,
                 indices=indices, log=tuple(meta["log"]))
