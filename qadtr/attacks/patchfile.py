"""Adversarial patches as versioned files: `save_patch(patch, "p.npz")` -> p.npz + p.png + p.json.

The .npz (read with `allow_pickle=False`) holds:
    magic       "QADTR-PATCH" (uint8 bytes)
    version     int, `FORMAT_VERSION`
    values      (3, s, s) universal or (N, 3, s, s) per-image, float32 in [0, 1]: the exact values
    placement_* (N,) per-image placements (per-image attacks only; see `_place.Placement`)
    indices     (N,) int64 indexes of the attacked images in `data` (per-image attacks only)
    meta        JSON text: attack, its config (typed, `qadtr._config`), size fraction and pixels, EOT
                ranges, target (null = untargeted), source model sha256 and bit widths, seed, data, made_on, log
The .png beside it shows the patch (8x nearest-neighbour upscale) and the .json repeats `meta` for
people and `jq`. Only the .npz is read back.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from qadtr._config import atomic_write_bytes, check_value, config_to_dict, field_types, loads_json, \
    read_versioned_npz, write_json
from qadtr._errors import QadtrError
from qadtr.attacks._place import EOTConfig, Placement
from qadtr.bits import bits_names

MAGIC = b"QADTR-PATCH"
FORMAT_VERSION = 1
HINT = "HINT: re-create it with `python -m qadtr.attack CHECKPOINT --attack ... --out DIR`"
# the `meta` JSON: Patch's fields apart from the arrays (values, placement, indices), all required but OPTIONAL_META
META_FIELDS = ("attack", "config", "size", "side", "target", "eot", "seed", "model_sha256", "bits", "data", "made_on",
               "log")
# fields added after FORMAT_VERSION 1 shipped, with the value a file written before them reads as
OPTIONAL_META = {"made_on": ""}


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
    # the deployed artifact an attack on it queried or differentiated: "<runtime> <artifact file> <sha256[:16]>"
    # (a remote device's name before the runtime, "rpi4-emu/litert-xnnpack ..."); "" = made on fake-quant / unknown
    made_on: str = ""
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
                "made_on": self.made_on, "log": list(self.log)}


def deployed_on(runtime: str, artifact: str | Path, sha256: str, *, device: str = "") -> str:
    """`Patch.made_on` of an attack on a deployed artifact: "<runtime> <file name> <sha256[:16]>", a remote
    device's name before the runtime ("rpi4-emu/litert-xnnpack w2a2.tflite 4048a252959044a3")."""
    return f"{device + '/' if device else ''}{runtime} {Path(artifact).name} {sha256[:16]}"


def made_on_parts(made_on: str) -> tuple[str, str, str, str] | None:
    """(device, runtime, artifact file name, sha256[:16]) of a `deployed_on` string (device "" = this host);
    None for "" or a string of another shape."""
    where, _, rest = made_on.partition(" ")
    artifact, _, sha = rest.rpartition(" ")
    if not where or not artifact or not sha:
        return None
    device, _, runtime = where.rpartition("/")
    return device, runtime, artifact, sha


def patch_name(patch: Patch) -> str:
    """A file stem naming source, attack, size and target: `w8a8_universal_s10_t3`."""
    bits = bits_names(patch.bits)
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
    if values.size == 0:
        raise QadtrError(f"{where}: the file holds no patch values (shape {values.shape}); {HINT}")
    if not np.isfinite(values).all():
        raise QadtrError(f"{where}: patch holds NaN or inf values; {HINT}")
    if values.min() < 0.0 or values.max() > 1.0:
        raise QadtrError(f"{where}: patch values span [{values.min():.3g}, {values.max():.3g}], outside [0, 1]; "
                         f"{HINT}")


def load_patch(path: str | Path, *, num_classes: int | None = None) -> Patch:
    """Read and validate a patch file.

    `num_classes`: the class count of the model the patch will be applied to; the target must be below it.
    None: checked against the dataset the patch names (`data`, e.g. "cifar10/train") when that is known.

    Raises:
        QadtrError: not a patch file, another format version, bad shape/range/dtype, metadata of the wrong
            type, missing or inconsistent, a target out of range; each message says what is wrong and what to
            re-run.
    """
    path = Path(path)
    if not path.is_file():
        raise QadtrError(f"patch file {path} not found; {HINT}")
    arrays = read_versioned_npz(path, MAGIC, FORMAT_VERSION, kind="patch", hint=HINT)
    missing = {"values", "meta"} - set(arrays)
    if missing:
        raise QadtrError(f"{path} lacks {sorted(missing)}; {HINT}")
    meta = _read_meta(arrays["meta"], path)
    _check_target(meta["target"], num_classes, meta["data"], path=path)
    values = arrays["values"]
    _validate_values(values, meta["side"], str(path))
    placement = indices = None
    if values.ndim == 4:
        placement, indices = _per_image(arrays, len(values), path)
    return Patch(values=values, placement=placement, indices=indices, **meta)


def _read_meta(text: np.ndarray, path: Path) -> dict[str, Any]:
    """The `meta` JSON as Patch fields, each checked against its annotation (qadtr._config.check_value)."""
    try:
        meta = loads_json(str(text), "metadata")
        if not isinstance(meta, dict):
            raise QadtrError(f"metadata is {type(meta).__name__}, expected an object")
        meta = {**OPTIONAL_META, **meta}
        missing, unknown = [k for k in META_FIELDS if k not in meta], sorted(set(meta) - set(META_FIELDS))
        if missing or unknown:
            raise QadtrError(f"metadata lacks {missing} / has unknown fields {unknown}")
        types = field_types(Patch)
        meta = {k: check_value(meta[k], types[k], f"patch {k}") for k in META_FIELDS}
        if not dataclasses.is_dataclass(meta["config"]) or isinstance(meta["config"], type):
            raise QadtrError(f"patch config is {type(meta['config']).__name__}, expected a typed attack config")
        if not 0.0 < meta["size"] < 1.0 or meta["side"] < 1:
            raise QadtrError(f"size {meta['size']} / side {meta['side']}: expected a fraction in (0, 1) / >= 1 px")
    except QadtrError as e:
        raise QadtrError(f"{path}: unreadable metadata ({e}); {HINT}") from None
    return meta


def _check_target(target: int | None, num_classes: int | None, data: str, *, path: Path) -> None:
    """A targeted patch's class must exist: below `num_classes`, else below the class count of its dataset."""
    from qadtr.data import DATASETS

    if target is None:
        return
    where = "the model"
    if num_classes is None and data.split("/")[0] in DATASETS:
        num_classes, where = DATASETS[data.split("/")[0]].num_classes, data.split("/")[0]
    if target < 0 or (num_classes is not None and target >= num_classes):
        classes = f"{where} has {num_classes} classes (0..{num_classes - 1})" if num_classes else "must be >= 0"
        raise QadtrError(f"{path}: target {target} is no class: {classes}; {HINT}")


def _per_image(arrays: dict[str, np.ndarray], n: int, path: Path) -> tuple[Placement, np.ndarray]:
    """The placements and (N,) image indices a per-image patch file must carry, as many as its patches."""
    keys = [f"placement_{f}" for f in Placement.FIELDS] + ["indices"]
    if any(k not in arrays for k in keys):
        raise QadtrError(f"{path}: per-image patches without placements or image indices; {HINT}")
    indices = arrays["indices"]
    if indices.dtype.kind not in "iu" or indices.ndim != 1 or (len(indices) and indices.min() < 0):
        raise QadtrError(f"{path}: indices are {indices.dtype} {indices.shape}, expected (N,) integers >= 0; {HINT}")
    try:
        placement = Placement.from_arrays(arrays)
    except (TypeError, ValueError) as e:
        raise QadtrError(f"{path}: unreadable placements ({e}); {HINT}") from None
    if len(placement) != n or len(indices) != n:
        raise QadtrError(f"{path}: {n} patches, {len(placement)} placements, {len(indices)} indices; they must "
                         f"match; {HINT}")
    return placement, indices
