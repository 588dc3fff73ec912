"""CIFAR-10 (Krizhevsky 2009): 50,000 train + 10,000 test 32x32 RGB images, 10 classes.

Sources, searched in `data_dir` in this order:
  1. the official python batches: `cifar-10-batches-py/` or `cifar-10-python.tar.gz`;
  2. an image-folder layout `<split>/<class>/*.jpg|png`: `cifar10/<split>/`, `<split>/`, or
     `cifar10-jpg.tar.gz` (members matched on their last three path components);
  3. with `download=True`, the official `cifar-10-python.tar.gz`, md5-checked, then read as 1.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError
from qadtr.data import _archive
from qadtr.data._archive import Source, decode_rgb, iter_members

# The standard label order 0..9, which is also alphabetical (so image folders sort into it).
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel mean/std of the lossless train split, pixel/255 (the widely used values; the JPEG copy in
# ../shared/data measures mean (0.4913, 0.4821, 0.4465), std (0.2452, 0.2428, 0.2606)).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"

_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
# The only globals a CIFAR batch pickle may name: numpy arrays (py2 or py3 numpy) and py3 bytes.
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def find_source(data_dir: Path, split: str, *, download: bool) -> Source:
    """The first CIFAR-10 source present in `data_dir` (see the module docstring).

    Raises:
        QadtrError: none is present and `download` is False, or the download fails.
    """
    candidates = [  # (kind, path, is a directory)
        ("python-batches", data_dir / "cifar-10-batches-py", True),
        ("python-batches", data_dir / ARCHIVE, False),
        ("image-folder", data_dir / "cifar10" / split, True),
        ("image-folder", data_dir / split, True),
        ("image-folder", data_dir / "cifar10-jpg.tar.gz", False),
    ]
    for kind, path, is_dir in candidates:
        if path.is_dir() if is_dir else path.is_file():
            return Source(kind, (path,))
    if download:
        return Source("python-batches", (_archive.download(URL, data_dir / ARCHIVE, md5=MD5),))
    looked = [f"{path.relative_to(data_dir)}{'/' if is_dir else ''}" for _, path, is_dir in candidates]
    raise QadtrError(f"no CIFAR-10 in {data_dir} (looked for {', '.join(looked)}); put one of these there, "
                     f"or pass --download to fetch the official archive {URL}")


def read(source: Source, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decode one split: images (N, 32, 32, 3) uint8 RGB, labels (N,) int64, class names.

    Raises:
        QadtrError: the source is incomplete or a member is unreadable; the message names the member.
    """
    if source.kind == "python-batches":
        return _read_batches(source, split)
    return _read_folder(source, split)


def _read_batches(source: Source, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    wanted = set(_BATCHES[split]) | {"batches.meta"}
    found = {}
    for name, data in iter_members(source.paths[0], lambda n: n.rsplit("/", 1)[-1] in wanted):
        found[name.rsplit("/", 1)[-1]] = (name, data)
    missing = [b for b in _BATCHES[split] if b not in found]
    if missing:
        raise QadtrError(f"{source}: member {missing[0]} is missing; expected data_batch_1..5 and test_batch "
                         f"as in the official {ARCHIVE} (re-download it)")
    classes = CLASSES
    if "batches.meta" in found:
        meta = _unpickle(*found["batches.meta"], source)
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", ()))
        if len(classes) != len(CLASSES):
            raise QadtrError(f"{source}: member batches.meta lists {len(classes)} label_names, expected 10; "
                             "re-download the archive")
    images, labels = [], []
    for batch in _BATCHES[split]:
        name, data = found[batch]
        d = _unpickle(name, data, source)
        x = np.asarray(d.get("data"))  # (N, 3072): 1024 R, then 1024 G, then 1024 B, row-major
        y = np.asarray(d.get("labels"), dtype=np.int64)  # (N,)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != x.shape[:1]:
            raise QadtrError(f"{source}: member {name} has data {x.dtype} {x.shape} and {y.size} labels; "
                             "expected uint8 (N, 3072) and N labels (re-download the archive)")
        if y.size and (y.min() < 0 or y.max() >= len(CLASSES)):
            raise QadtrError(f"{source}: member {name} has labels outside 0..9; re-download the archive")
        images.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # (N, 3, 32, 32) -> (N, 32, 32, 3)
        labels.append(y)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes


class _BatchUnpickler(pickle.Unpickler):
    """The batches are pickles: allow only numpy arrays, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle(name: str, data: bytes, source: Source) -> dict[str, object]:
    try:
        d = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise QadtrError(f"{source}: member {name} is not a CIFAR-10 python batch ({e}); "
                         "re-download the archive") from None
    if not isinstance(d, dict):
        raise QadtrError(f"{source}: member {name} is a {type(d).__name__}, expected a dict; "
                         "re-download the archive")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}  # py2 pickles have bytes keys


def _read_folder(source: Source, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    def want(name: str) -> bool:  # <anything>/<split>/<class>/<file>.jpg, hidden files skipped
        parts = name.split("/")
        return (len(parts) >= 3 and parts[-3] == split and not parts[-1].startswith(".")
                and parts[-1].lower().endswith(_IMAGE_EXTS))

    label_of = {c: i for i, c in enumerate(CLASSES)}
    items = []  # (label, file name, member name, (32, 32, 3) image)
    for name, data in iter_members(source.paths[0], want):
        folder, filename = name.split("/")[-2:]
        if folder not in label_of:
            raise QadtrError(f"{source}: member {name} is in class folder {folder!r}; expected only the "
                             f"CIFAR-10 classes {', '.join(CLASSES)}")
        im = decode_rgb(name, data, source)
        if im.size != (32, 32):
            raise QadtrError(f"{source}: member {name} is {im.size[0]}x{im.size[1]}; expected a 32x32 "
                             "CIFAR-10 image (re-create the folder from the original data)")
        items.append((label_of[folder], filename, name, np.asarray(im)))
    present = {label for label, *_ in items}
    for label, cls in enumerate(CLASSES):
        if label not in present:
            raise QadtrError(f"{source}: no images in class folder {split}/{cls}/; expected "
                             f"{split}/<class>/*.jpg|png for all 10 classes ({', '.join(CLASSES)})")
    items.sort(key=lambda item: item[:3])  # class, then file name: the same order from a folder or a tar
    images = np.stack([im for *_, im in items])  # (N, 32, 32, 3)
    labels = np.array([label for label, *_ in items], dtype=np.int64)  # (N,)
    return images, labels, CLASSES
