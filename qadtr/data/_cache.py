"""Decoded-array cache: one uncompressed .npz per (dataset, split, source fingerprint).

Decoding CIFAR-10 from JPEGs takes ~15 s; loading the cached .npz takes a fraction of a second. The file
name carries a hash of the source's resolved path, size and mtime_ns (for a directory: of every file in
it), so replacing or editing the source gives a new cache entry; old entries are left for the user to
delete. Files are written atomically, so a concurrent reader sees the old file or the new one.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from qadtr._config import atomic_write_bytes
from qadtr.data._archive import Source, fingerprint_parts

# Bump when decoding changes (resize filter, member order, ...) so that old caches are not reused.
CACHE_VERSION = 1

# images (N, 32, 32, 3) uint8, labels (N,) int64, class names
Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """Argument > env QADTR_CACHE > ~/.cache/qadtr."""
    if cache_dir is None or str(cache_dir) == "":
        cache_dir = os.environ.get("QADTR_CACHE") or Path.home() / ".cache" / "qadtr"
    return Path(cache_dir).expanduser()


def cache_path(cache_dir: Path, name: str, split: str, *, source: Source) -> Path:
    """`<cache_dir>/<name>-<split>-<16 hex>.npz`; the hash covers the source's files and CACHE_VERSION."""
    parts = [f"v{CACHE_VERSION}", name, split, source.kind]
    for path in source.paths:
        parts += fingerprint_parts(path)
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return cache_dir / f"{name}-{split}-{digest}.npz"


def load(path: Path) -> Arrays | None:
    """The cached arrays, or None if there is no cache; a corrupt file is deleted with a one-line warning."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:  # own handle: np.load leaks
            images, labels, classes = npz["images"], npz["labels"], npz["classes"]  # its own on a bad zip
        _check(images, labels, classes)
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"cache {path} is unreadable ({type(e).__name__}: {e}); deleting and rebuilding it",
                      stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    return images, labels, tuple(str(c) for c in classes)


def save(path: Path, images: np.ndarray, labels: np.ndarray, *, classes: tuple[str, ...]) -> None:
    """Write the arrays as an uncompressed .npz (uncompressed: loading is a memcpy, not a 10 s inflate)."""
    _check(images, labels, np.array(classes))
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels, classes=np.array(classes))
    atomic_write_bytes(path, buf.getbuffer())  # a view: no second copy of a 150 MB buffer


def _check(images: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"images are {images.dtype} {images.shape}, expected uint8 (N, 32, 32, 3)")
    if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
        raise ValueError(f"labels are {labels.dtype} {labels.shape}, expected int64 ({len(images)},)")
    if classes.ndim != 1 or classes.dtype.kind != "U":
        raise ValueError(f"classes are {classes.dtype} {classes.shape}, expected a 1-D str array")
