"""Datasets as uint8 arrays: `load_split("cifar10", "train", data_dir)` -> `Split`.

Each dataset is one module (`cifar10.py`, `gtsrb.py`) with `find_source(data_dir, split, download=)`,
which locates the standard public layout in a directory the user names, and `read(source, split)`,
which decodes it. The decoded arrays are cached as an .npz (see `_cache.py`), so only the first load
of a source pays for decoding.

Example:
    >>> s = load_split("cifar10", "test", "../shared/data", cache_dir="/tmp/qadtr-cache")
    >>> s.images.shape, s.labels.shape, s.classes[s.labels[0]]
    ((10000, 32, 32, 3), (10000,), 'airplane')
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError
from qadtr.data import _cache, cifar10, gtsrb

__all__ = ["DATASETS", "DatasetInfo", "Split", "load_split", "resolve_data_dir", "subset", "subset_indices"]

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)  # eq=False: comparing/hashing arrays field by field is meaningless
class Split:
    """One decoded split of a dataset."""

    images: np.ndarray  # (N, 32, 32, 3) uint8, RGB, HWC
    labels: np.ndarray  # (N,) int64, indexes `classes`
    classes: tuple[str, ...]  # class names in label order
    name: str  # dataset name, e.g. "cifar10"
    split: str  # "train" | "test"
    source: str  # the file(s)/dir it was read from, " + "-joined


@dataclass(frozen=True)
class DatasetInfo:
    """What training code needs to know about a dataset without loading it."""

    name: str
    num_classes: int
    classes: tuple[str, ...]  # label order
    hflip_ok: bool  # a horizontal flip keeps the label (not for signs: keep_left <-> keep_right)
    mean: tuple[float, float, float]  # per-channel RGB mean of the train split, pixel/255
    std: tuple[float, float, float]  # per-channel RGB std of the train split, pixel/255


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, cifar10.CLASSES, hflip_ok=True, mean=cifar10.MEAN, std=cifar10.STD),
    "gtsrb": DatasetInfo("gtsrb", 43, gtsrb.CLASSES, hflip_ok=False, mean=gtsrb.MEAN, std=gtsrb.STD),
}
_MODULES = {"cifar10": cifar10, "gtsrb": gtsrb}  # looked up at call time, so tests can monkeypatch `read`


# `../shared/data` beside a source checkout: where this project's machines and CI's clean clone keep the datasets
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DOWNLOAD_SUBDIR = "data"  # <cache>/data: where the official archives go when no data directory is found


def _locate(data_dir: str | Path | None, cache_dir: str | Path | None) -> tuple[Path, bool]:
    """(the data directory, whether it is the download fallback); see `resolve_data_dir`."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("QADTR_DATA") or None
    if data_dir is not None:
        return Path(data_dir).expanduser(), False
    if SHARED_DATA.is_dir():
        return SHARED_DATA, False
    return _cache.resolve_cache_dir(cache_dir) / DOWNLOAD_SUBDIR, True


def resolve_data_dir(data_dir: str | Path | None, *, cache_dir: str | Path | None = None) -> Path:
    """The data directory: the argument (--data-dir) if given, else env QADTR_DATA, else `../shared/data`
    beside the repository when it exists, else `<cache>/data`, where `load_split` downloads the official
    archive (cache: `cache_dir`, else env QADTR_CACHE, else ~/.cache/qadtr).

    Example:
        >>> resolve_data_dir("/data")
        PosixPath('/data')
    """
    return _locate(data_dir, cache_dir)[0]


def load_split(name: str, split: str, data_dir: str | Path | None = None, *,
               cache_dir: str | Path | None = None, download: bool = False) -> Split:
    """Load one split of a dataset as uint8 arrays, decoding it only if it is not cached yet.

    Args:
        name: a key of `DATASETS` ("cifar10", "gtsrb").
        split: "train" or "test".
        data_dir: the directory holding the dataset; None: env QADTR_DATA, else `../shared/data` beside the
            repository, else the official archive downloaded into `<cache>/data` (`resolve_data_dir`).
        cache_dir: where decoded arrays are cached; None reads env QADTR_CACHE, else ~/.cache/qadtr.
        download: fetch the official archive into `data_dir` when no source is found there.

    Returns:
        A `Split` with images (N, 32, 32, 3) uint8 RGB and labels (N,) int64.

    Raises:
        QadtrError: unknown name or split, no data directory, no (or an incomplete) source in it, or
            no data found anywhere and the download failed.

    Example:
        >>> train = load_split("gtsrb", "train", "/data", cache_dir="/tmp/qadtr-cache")
    """
    if name not in DATASETS:
        raise QadtrError(f"unknown dataset {name!r}; use one of {sorted(DATASETS)}")
    if split not in SPLITS:
        raise QadtrError(f"unknown split {split!r} for {name}; use one of {list(SPLITS)}")
    root, fallback = _locate(data_dir, cache_dir)
    if fallback:  # nothing named and nothing beside the repository: the official archive, into the cache
        try:
            return load_split(name, split, root, cache_dir=cache_dir, download=True)
        except QadtrError as e:
            raise QadtrError(f"no {name} found: pass --data-dir DIR, set QADTR_DATA=DIR or put it in {SHARED_DATA} "
                             f"(README \"Data\"); fetching it into {root} failed: {e}") from None
    if not root.is_dir():
        if not download or root.exists():
            raise QadtrError(f"data directory {root} does not exist or is not a directory; fix --data-dir / "
                             "QADTR_DATA, or pass --download to create it and fetch the official archive")
        root.mkdir(parents=True)
    module = _MODULES[name]
    source = module.find_source(root, split, download=download)
    path = _cache.cache_path(_cache.resolve_cache_dir(cache_dir), name, split, source=source)
    arrays = _cache.load(path)
    if arrays is None:
        print(f"qadtr.data: decoding {name} {split} from {source} (once; cached as {path})", file=sys.stderr)
        arrays = module.read(source, split)
        _cache.save(path, arrays[0], arrays[1], classes=arrays[2])  # (images, labels, classes)
    images, labels, classes = arrays
    return Split(images, labels, classes, name, split, str(source))


def subset_indices(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """The indexes (sorted) of `subset(split, n, seed)` in a split of `n_total` images; all of them for n <= 0."""
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def heldout_indices(n_total: int, n: int, n_heldout: int, *, seed: int = 0) -> np.ndarray:
    """The indexes (sorted) of `n_heldout` images disjoint from `subset_indices(n_total, n, seed)`: the next ones of
    the same permutation, so the held-out set is as random as the subset and never overlaps it."""
    if n <= 0 or n + n_heldout > n_total:
        raise QadtrError(f"{n_heldout} held-out images beside a subset of {n if n > 0 else 'all'} leave none of the "
                         f"{n_total} images unused; attack fewer images or hold out fewer")
    return np.sort(np.random.default_rng(seed).permutation(n_total)[n:n + n_heldout])


def subset(split: Split, n: int, seed: int = 0) -> Split:
    """A fixed pseudo-random subset of n images, in source order (sources are sorted by class, so
    the first n would be one or two classes). The same (n, seed) always gives the same images."""
    if n <= 0 or n >= len(split.labels):
        return split
    idx = subset_indices(len(split.labels), n, seed)
    return dataclasses.replace(split, images=split.images[idx], labels=split.labels[idx])
