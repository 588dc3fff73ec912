"""The replay file: every attacked input materialised once, so every runtime receives identical bytes (P9).

`make_replay(patches, "cifar10", data_dir, out="results/replays")` -> `replay_cifar10_<key>.npz` + `.json`.

The .npz (read with `allow_pickle=False`, written uncompressed: it is read far more often than written):
    magic       "QADTR-REPLAY" (uint8 bytes)
    version     int, `FORMAT_VERSION`
    images      (M, H, W, 3) uint8: exactly the bytes every runtime is fed
    labels      (M,) int64 true labels
    test_index  (M,) int64 index of the clean image in the dataset's test split
    patch       (M,) int32: -1 = clean, else an index into `ReplayInfo.patches`
Row order: the clean block first (the eval subset `subset_indices(len(test), eval_subset, seed=1)`, then any
other clean image a per-image patch needs), then one block per patch in file-name order. A universal
patch is pasted on the subset at `eval_placements(patch, n, hw, seed=eval_seed)`, a per-image patch on
its own stored images at its own placements, both with `qadtr.attacks.rebuild`: the same images and
placements `eval.transfer` evaluates, so ASRs computed from a replay equal its ASRs (tested).

The .json beside it (`{"_type": "ReplayInfo", "_version": 2, "_data": {...}}`) holds the sha256 of the
.npz, the dataset (its class count and a sha256 of its test split), eval_subset, eval_seed and every patch
file used with its sha256 and provenance, and `scene`: "" here, or the camera scene every row passed through
(a scenario's replay, `eval.scenario`). `key`, a sha256 of all inputs, names the file, so a replay is
rebuilt exactly when an input changes and reused otherwise.

Checksums: `ReplayInfo.sha256` covers the description itself (`description_sha256`: targets, n_subset, the
blocks, ...), `npz_sha256` the arrays, and `Replay.sha256` (`replay_sha256`) both: it is the `replay_sha256`
every run in the result store records, so a comparison or report refuses a replay edited after its runs.
`load_replay` refuses a description that no longer matches its checksum, then checks every count and
range against the arrays (targets within the class count, blocks contiguous, each patched row's clean row).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qadtr._config import atomic_write_bytes, read_versioned_npz, sha256_file, write_json
from eval._replay_checks import INFO_FIELDS, PATCH_FIELDS, check_counts, check_rows, fields
from qadtr._errors import QadtrError
from qadtr._stats import Proportion
from qadtr.progress import progress as progress_bar

if TYPE_CHECKING:
    from qadtr.attacks import ASR

MAGIC = b"QADTR-REPLAY"
FORMAT_VERSION = 1
HINT = "HINT: delete it and re-run `python -m eval.on_device ... --patches DIR` (or eval.replay.make_replay), " \
       "which rebuilds it from the patch files"
_CHUNK = 1000  # images per `rebuild` call: its index maps are (n, H, W) float64, ~8 MB per 1000 CIFAR images
# not covered by the description checksum: the checksum itself; the build time (a rebuild from the same inputs
# keeps its checksum, so its runs still resume); the arrays' sha256, checked against the .npz file itself
_UNSEALED = ("sha256", "created", "npz_sha256")


@dataclass(frozen=True)
class PatchRef:
    """One patch block of a replay: which file, where its rows are, and where the patch came from."""

    file: str  # patch file name (.npz)
    sha256: str  # of the patch file
    attack: str
    size: float  # fraction of the image area
    side: int  # pixels
    target: int | None  # None = untargeted
    bits: tuple[tuple[int, int], ...]  # source bit widths; () = float model
    model_sha256: str  # source model.pt
    data: str  # what the patch was made on, e.g. "cifar10/train"
    made_on: str  # the deployed artifact an attack on it ran against (qadtr.attacks.Patch.made_on); "" = fake-quant
    per_image: bool
    first: int  # first row of the block
    n: int  # rows in the block


@dataclass(frozen=True)
class ReplayInfo:
    VERSION = 2  # 2: the scene field (rows seen through a camera, eval.scenario)
    key: str  # sha256 of every input below (dataset bytes, subset, seed, patch files, format version)
    npz_sha256: str
    dataset: str
    data_sha256: str  # of the test split's images and labels
    eval_subset: int  # as requested (0 = the whole test split)
    eval_seed: int  # seed of the universal patches' placements
    n_subset: int  # rows [0, n_subset): the eval subset, clean (clean accuracy is measured on these)
    n_clean: int  # rows [0, n_clean): clean (n_subset plus clean images only per-image patches need)
    samples: int  # M, all rows
    hw: tuple[int, int]
    num_classes: int  # of the dataset: labels and targets index its classes
    patches: tuple[PatchRef, ...]
    created: str = ""
    sha256: str = ""  # description_sha256 of this description ("" until sealed by make_replay)
    scene: str = ""  # "" = test images as they are; else the JSON of the camera scene every row passed through

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["patches"] = [dataclasses.asdict(p) for p in self.patches]
        return {"_type": "ReplayInfo", "_version": self.VERSION, "_data": data}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "ReplayInfo":
        """Parse and check a description: every field of its type, its checksum, every count in range."""
        if type(d) is not dict or d.get("_type") != "ReplayInfo":
            raise QadtrError(f"{where} is not a replay description (no _type ReplayInfo); {HINT}")
        if type(d.get("_version")) is not int or d["_version"] != cls.VERSION:
            raise QadtrError(f"{where} has replay format version {d.get('_version')!r:.40}, this code reads "
                             f"{cls.VERSION}; {HINT}")
        unreadable, hint = f"{where}: unreadable replay description", f"; {HINT}"
        data = fields(d.get("_data"), INFO_FIELDS, unreadable, what="the description", suffix=hint)
        refs = tuple(PatchRef(**{**fields(p, PATCH_FIELDS, unreadable, what=f"patch {k}", suffix=hint),
                                 "bits": tuple(map(tuple, p["bits"]))}) for k, p in enumerate(data["patches"]))
        if description_sha256(data) != data["sha256"]:
            raise QadtrError(f"{where} was edited: its content no longer matches its checksum (sha256); {HINT}")
        info = cls(**{**data, "hw": tuple(data["hw"]), "patches": refs})
        check_counts(info, f"{where}: ", hint)
        return info


def description_sha256(data: dict) -> str:
    """sha256 of a description's `_data` (as written or as read back), all but the fields in `_UNSEALED`."""
    body = {k: v for k, v in data.items() if k not in _UNSEALED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def replay_sha256(info: ReplayInfo) -> str:
    """The replay's checksum a run records: its description's checksum and its arrays' sha256 together."""
    return hashlib.sha256(f"{info.sha256}:{info.npz_sha256}".encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class Replay:
    """A loaded, validated replay file."""

    path: Path
    info: ReplayInfo
    images: np.ndarray  # (M, H, W, 3) uint8
    labels: np.ndarray  # (M,) int64
    test_index: np.ndarray  # (M,) int64
    patch: np.ndarray  # (M,) int32, -1 = clean

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sha256(self) -> str:
        """What a run records as replay_sha256: covers the description (targets, counts) and the arrays."""
        return replay_sha256(self.info)

    def clean_accuracy(self, pred: np.ndarray) -> Proportion:
        """Top-1 on the eval subset (rows [0, n_subset)) from predictions (M,) for every row."""
        n = self.info.n_subset
        return Proportion(int((pred[:n] == self.labels[:n]).sum()), n)

    def asr(self, pred: np.ndarray) -> list[tuple[PatchRef, ASR]]:
        """Each patch's ASR (`qadtr.attacks.attack_success`) from predictions (M,) for every row: a patched
        row's clean prediction is the clean row of the same test image."""
        from qadtr.attacks import attack_success

        clean_row = {int(t): i for i, t in enumerate(self.test_index[:self.info.n_clean])}
        out = []
        for ref in self.info.patches:
            rows = slice(ref.first, ref.first + ref.n)
            clean = pred[[clean_row[int(t)] for t in self.test_index[rows]]]  # (n,)
            out.append((ref, attack_success(clean, pred[rows], self.labels[rows], target=ref.target)))
        return out


def _patch_files(patches: str | Path | list) -> list[Path]:
    if isinstance(patches, (str, Path)):
        root = Path(patches)
        if not root.exists():
            raise QadtrError(f"patch folder {root} not found; make patches with `python -m qadtr.attack ... --out DIR`")
        files = sorted(root.glob("*.npz")) if root.is_dir() else [root]
    else:
        files = sorted(Path(p) for p in patches)
    if not files:
        raise QadtrError(f"no patch files (*.npz) in {patches}; make some with `python -m qadtr.attack`")
    return files


def arrays_sha256(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def make_replay(patches: str | Path | list, dataset: str, data_dir: str | Path | None = None, *,
                eval_subset: int = 2000, eval_seed: int = 1, out: str | Path = "results/replays",
                progress: bool = False) -> Path:
    """Build (or reuse) the replay file of `patches` on `dataset`'s test split; returns the .npz path.

    Args:
        patches: a folder of patch files (*.npz, from `qadtr.attack`), or a list of patch files.
        dataset: the dataset the patches are evaluated on (its test split), e.g. "cifar10".
        data_dir: dataset folder (None: $QADTR_DATA).
        eval_subset: test images universal patches are pasted on (0 = all); the same subset as
            `qadtr.attack` and `eval.transfer`.
        eval_seed: seed of the universal patches' evaluation placements (`eval_placements`).
        out: a folder (the file is named `replay_<dataset>_<key>.npz` after its inputs) or an .npz path.

    Raises:
        QadtrError: no patch files, a bad patch file, a patch made on another dataset, a per-image
            patch whose images the test split lacks.

    Example:
        >>> path = make_replay("patches/", "cifar10", "../shared/data", eval_subset=2000)
        >>> replay = load_replay(path)
    """
    import qadtr.data  # attribute lookup at call time: tests swap in an in-memory dataset
    from eval._configs import register_eval_configs
    from qadtr.attacks import load_patch

    register_eval_configs()  # a query attack's or a scenario's patch carries its own config class
    files = _patch_files(patches)
    shas = [sha256_file(f) for f in files]
    loaded = [load_patch(f) for f in files]
    test = qadtr.data.load_split(dataset, "test", data_dir)
    data_sha = arrays_sha256(test.images, test.labels)
    key = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "dataset": dataset, "data": data_sha,
                                     "eval_subset": int(eval_subset), "eval_seed": int(eval_seed),
                                     "patches": shas}).encode()).hexdigest()
    out = Path(out)
    path = out if out.suffix == ".npz" else out / f"replay_{dataset}_{key[:16]}.npz"
    _check_sources(files, loaded, dataset, n_test=len(test.labels))
    plan, clean_idx, idxs = _plan(files, shas, loaded, test=test, dataset=dataset, key=key, data_sha=data_sha,
                                  eval_subset=eval_subset, eval_seed=eval_seed)
    if is_current(path, plan):
        return path
    arrays = _replay_arrays(test, loaded, clean_idx, idxs=idxs, hw=plan.hw, eval_seed=eval_seed,
                            progress=progress)
    return write_replay(path, plan, arrays)


def write_replay(path: Path, plan: ReplayInfo, arrays: dict[str, np.ndarray]) -> Path:
    """Write the .npz `arrays` (`_replay_arrays`' keys) to `path` and its description `plan`, sealed with the
    arrays' sha256 and its own checksum, beside it; returns `path`."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    info = dataclasses.replace(plan, npz_sha256=hashlib.sha256(data).hexdigest(),
                               created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    info = dataclasses.replace(info, sha256=description_sha256(info.to_dict()["_data"]))
    write_json(path.with_suffix(".json"), info.to_dict())
    return path


def _check_sources(files: list[Path], loaded: list, dataset: str, *, n_test: int) -> None:
    """Raise QadtrError for a patch made on another dataset, or a per-image one beyond the test split."""
    for f, p in zip(files, loaded, strict=True):
        source = p.data.split("/")[0]
        if p.per_image and p.data != f"{dataset}/test":
            raise QadtrError(f"{f.name} is a per-image patch made on {p.data or 'unknown images'}, not "
                             f"{dataset}/test; re-run `python -m qadtr.attack --attack {p.attack} --data {dataset}` "
                             f"or pass --data {source}")
        if source and source != dataset:
            raise QadtrError(f"{f.name} was made on {p.data}, not {dataset}; pass --data {source} or make patches "
                             f"on {dataset} with `python -m qadtr.attack --data {dataset}`")
        if p.per_image and int(p.indices.max(initial=-1)) >= n_test:
            raise QadtrError(f"{f.name} holds test indices up to {int(p.indices.max())} but {dataset}/test has "
                             f"{n_test} images; re-run the attack on this copy of {dataset}")


def _plan(files: list[Path], shas: list[str], loaded: list, *, test, dataset: str, key: str, data_sha: str,
          eval_subset: int, eval_seed: int) -> tuple[ReplayInfo, np.ndarray, list[np.ndarray]]:
    """(the description these inputs give, unsealed; clean rows' test indices; each patch block's test indices)."""
    from qadtr.data import subset_indices

    subset_idx = subset_indices(len(test.labels), eval_subset, seed=1)
    extra = sorted({int(i) for p in loaded if p.per_image for i in p.indices} - {int(i) for i in subset_idx})
    clean_idx = np.concatenate([subset_idx, np.asarray(extra, dtype=np.int64)]).astype(np.int64)
    hw = tuple(test.images.shape[1:3])
    idxs = [np.asarray(p.indices, dtype=np.int64) if p.per_image else subset_idx for p in loaded]  # rows per block
    refs = patch_refs(files, shas, loaded, rows=[len(i) for i in idxs], first=len(clean_idx))
    plan = ReplayInfo(key=key, npz_sha256="", dataset=dataset, data_sha256=data_sha,
                      eval_subset=int(eval_subset), eval_seed=int(eval_seed), n_subset=len(subset_idx),
                      n_clean=len(clean_idx), samples=len(clean_idx) + sum(map(len, idxs)), hw=hw,
                      num_classes=len(test.classes), patches=refs)
    return plan, clean_idx, idxs


def patch_refs(files: list[Path], shas: list[str], loaded: list, *, rows: list[int], first: int) -> tuple[PatchRef, ...]:
    """One PatchRef per patch file, its block of `rows[k]` rows following the previous one from row `first`."""
    firsts = np.cumsum([first] + rows).tolist()
    return tuple(PatchRef(file=f.name, sha256=sha, attack=p.attack, size=p.size, side=p.side, target=p.target,
                          bits=tuple(tuple(b) for b in p.bits), model_sha256=p.model_sha256, data=p.data,
                          made_on=p.made_on, per_image=p.per_image, first=int(firsts[k]), n=rows[k])
                 for k, (f, sha, p) in enumerate(zip(files, shas, loaded, strict=True)))


def is_current(path: Path, plan: ReplayInfo) -> bool:
    """Whether `path` holds the replay `plan` describes (an edited, corrupt or other-version one does not)."""
    if path.is_file() and path.with_suffix(".json").is_file():
        try:  # reused only when its description is the one these inputs give (an edited one is rebuilt)
            cached = load_replay(path, verify=True).info
            if dataclasses.replace(cached, npz_sha256="", created="", sha256="") == plan:
                return True
        except QadtrError:
            pass  # corrupt, edited or another version: rebuilt below
    return False


def _replay_arrays(test, loaded: list, clean_idx: np.ndarray, *, idxs: list[np.ndarray], hw: tuple[int, int],
                   eval_seed: int, progress: bool) -> dict[str, np.ndarray]:
    """The .npz arrays: the clean block, then each patch pasted at its evaluation placements."""
    from qadtr.attacks import eval_placements, rebuild

    blocks = [(clean_idx, test.images[clean_idx], -1)]  # (test indices, images (n, H, W, 3), patch index)
    pairs = list(zip(idxs, loaded))
    for k, (idx, p) in enumerate(progress_bar(pairs, enabled=progress, desc="replay", unit="patch")):
        placement = eval_placements(p, len(idx), hw, seed=eval_seed)  # all n at once: the draws transfer makes
        adv = np.concatenate([rebuild(test.images[idx[i:i + _CHUNK]],
                                      p.values[i:i + _CHUNK] if p.per_image else p.values,
                                      placement[i:i + _CHUNK]) for i in range(0, len(idx), _CHUNK)])
        blocks.append((idx, adv, k))
    return pack(blocks, test.labels)


def pack(blocks: list[tuple[np.ndarray, np.ndarray, int]], labels: np.ndarray) -> dict[str, np.ndarray]:
    """The .npz arrays of `blocks` in order, each (test indices (n,), images (n, H, W, 3) uint8, patch index or -1);
    `labels`: the test split's (its labels at those indices are the rows' labels)."""
    return {"magic": np.frombuffer(MAGIC, dtype=np.uint8), "version": np.array(FORMAT_VERSION),
            "images": np.concatenate([b[1] for b in blocks]),
            "labels": np.concatenate([labels[b[0]] for b in blocks]).astype(np.int64),
            "test_index": np.concatenate([b[0] for b in blocks]).astype(np.int64),
            "patch": np.concatenate([np.full(len(b[0]), b[2], dtype=np.int32) for b in blocks])}


def load_replay(path: str | Path, *, verify: bool = True, sha256: str | None = None) -> Replay:
    """Read a replay file and check it: description and its checksum, sha256 of the .npz, magic, version,
    array shapes, labels within the class count, each patched row's clean row.

    Args:
        verify: hash the .npz (False: trust its bytes, e.g. for thumbnails only).
        sha256: the replay_sha256 a run recorded; the replay is refused unless it still has it.

    Raises:
        QadtrError: a missing, corrupt, edited, foreign or other-version file; the message says what to re-run.
    """
    path = Path(path)
    js = path.with_suffix(".json")
    if not path.is_file() or not js.is_file():
        raise QadtrError(f"replay {path} (with {js.name} beside it) not found; {HINT}")
    try:
        raw = json.loads(js.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):  # ValueError: also JSON ints past Python's digit limit
        raise QadtrError(f"{js} is not valid JSON; {HINT}") from None
    info = ReplayInfo.from_dict(raw, str(js))
    if sha256 is not None and replay_sha256(info) != sha256:
        raise QadtrError(f"{path} is not the replay the run used: its checksum differs from the run's replay_sha256 "
                         "(edited or rebuilt since); re-make it with eval.replay.make_replay from the run's patches "
                         "and re-run eval.on_device")
    if verify and sha256_file(path) != info.npz_sha256:
        raise QadtrError(f"{path} is corrupt or was changed: its sha256 differs from the one in {js.name}; {HINT}")
    arrays = read_versioned_npz(path, MAGIC, FORMAT_VERSION, kind="replay", hint=HINT)
    want = {"images": np.uint8, "labels": np.int64, "test_index": np.int64, "patch": np.int32}
    for name, dtype in want.items():
        if name not in arrays or arrays[name].dtype != dtype:
            raise QadtrError(f"{path}: array {name!r} missing or not {np.dtype(dtype)}; {HINT}")
    m = info.samples
    images = arrays["images"]
    if images.shape != (m, *info.hw, 3) or any(len(arrays[k]) != m for k in want):
        raise QadtrError(f"{path}: arrays do not hold the {m} rows of {info.hw} images its description says; {HINT}")
    expected = np.full(m, -1, dtype=np.int32)
    for k, ref in enumerate(info.patches):
        expected[ref.first:ref.first + ref.n] = k
    if not np.array_equal(arrays["patch"], expected):
        raise QadtrError(f"{path}: the patch column disagrees with the blocks in {js.name}; {HINT}")
    check_rows(info, arrays["labels"], arrays["test_index"], prefix=f"{path}: ", suffix=f"; {HINT}")
    return Replay(path, info, images, arrays["labels"], arrays["test_index"], arrays["patch"])

