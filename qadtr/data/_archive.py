"""Read members of a directory, a tar (.tar, .tar.gz, .tar.xz) or a .zip alike; decode one image; download.

Every source yields `(member_name, bytes)` with POSIX member names. A directory's names start with the
directory's own name (`data/cifar10/train` yields `train/cat/0001.jpg`), as if it had been packed with
`tar czf x.tar.gz train`, so one matcher works for a folder and for its archive. A plain file yields
its own basename. Tars are streamed (`r|*`), never extracted to disk.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

from PIL import Image, UnidentifiedImageError

from qadtr._errors import QadtrError
from qadtr.progress import progress

Want = Callable[[str], bool]  # member name -> read it?

# The largest member a loader may read into memory: a CIFAR-10 python batch, the largest real one, is 31 MB; a
# 1.5 GB member of a 6.9 MB tar.gz (a decompression bomb) is refused from its header, before it is inflated.
MAX_MEMBER = 256 * 2 ** 20
# What a truncated or corrupt tar/zip raises while streaming (gzip.BadGzipFile is an OSError).
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class Source:
    """Where a split is read from; `paths` are fingerprinted for the cache."""

    kind: str  # dataset-specific layout tag, e.g. "python-batches", "image-folder", "gtsrb"
    paths: tuple[Path, ...]  # files and/or directories, read in this order

    def __str__(self) -> str:
        return " + ".join(str(p) for p in self.paths)


def iter_members(path: Path, want: Want | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield `(member_name, data)` for every regular file in `path` that `want` accepts.

    Args:
        path: a directory, a .tar/.tar.gz/.tgz/.tar.xz, a .zip, or any other single file.
        want: filter on the member name; skipped members are never read or decompressed into memory.

    Raises:
        QadtrError: the archive is truncated or not an archive.

    Example:
        >>> for name, data in iter_members(Path("cifar10-jpg.tar.gz"), lambda n: n.endswith(".jpg")): ...
    """
    want = want or (lambda name: True)
    if path.is_dir():
        yield from _iter_dir(path, want)
    elif path.name.lower().endswith(".zip"):
        yield from _guard(path, _iter_zip(path, want))
    elif _is_tar(path):
        yield from _guard(path, _iter_tar(path, want))
    elif want(path.name):
        yield path.name, path.read_bytes()


def _is_tar(path: Path) -> bool:
    return any(path.name.endswith(ext) for ext in (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2"))


def _iter_dir(root: Path, want: Want) -> Iterator[tuple[str, bytes]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # os.walk descends in this order
        rel = Path(dirpath).relative_to(root.parent).as_posix()
        for filename in sorted(filenames):
            name = f"{rel}/{filename}"
            if want(name):
                yield name, Path(dirpath, filename).read_bytes()


def _iter_tar(path: Path, want: Want) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, "r|*") as tar:  # stream mode: one pass, no seeking, no extraction
        for info in tar:
            name = info.name.removeprefix("./")
            if info.isfile() and want(name):
                _check_size(path, name, info.size)
                yield name, tar.extractfile(info).read()


def _iter_zip(path: Path, want: Want) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.is_dir() and want(info.filename):
                _check_size(path, info.filename, info.file_size)  # zipfile reads no more than file_size
                yield info.filename, zf.read(info)


def _check_size(path: Path, name: str, size: int) -> None:
    if size > MAX_MEMBER:
        raise QadtrError(f"{path}: member {name} unpacks to {size:,} bytes, more than any dataset file (limit "
                         f"{MAX_MEMBER:,}); this is not the official archive: delete it and download it again")


def _guard(path: Path, members: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    """Turn a truncated/corrupt archive into a QadtrError naming the file."""
    try:
        yield from members
    except _CORRUPT as e:
        raise QadtrError(f"{path} is not a readable archive ({type(e).__name__}: {e}); "
                         "delete it and download it again") from None


def decode_rgb(name: str, data: bytes, source: Source | Path) -> Image.Image:
    """Decode one image member to RGB; a broken member becomes a QadtrError naming it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")  # also loads the pixels before the file closes
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's decode errors
        unknown = isinstance(e, UnidentifiedImageError)
        detail = "unknown image format" if unknown else f"{type(e).__name__}: {e}"
        raise QadtrError(f"{source}: member {name} is not a readable image ({detail}); "
                         "re-download or re-create that file") from None


def fingerprint_parts(path: Path) -> list[str]:
    """`path size mtime_ns` for a file, or for a directory and everything below it (sorted)."""
    path = path.resolve()
    st = path.stat()
    parts = [f"{path} {st.st_size} {st.st_mtime_ns}"]
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for filename in sorted(filenames):
                st = os.stat(os.path.join(dirpath, filename))
                parts.append(f"{os.path.join(dirpath, filename)} {st.st_size} {st.st_mtime_ns}")
    return parts


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _length(response) -> int | None:
    """The response's Content-Length in bytes, None when the server sends none."""
    length = getattr(response, "headers", {}).get("Content-Length")
    return int(length) if length and length.isdigit() else None


def download(url: str, dest: Path, *, md5: str | None) -> Path:
    """Fetch `url` to `dest` through a temporary `.part` file, checking `md5` when one is known.

    Raises:
        QadtrError: no network, an HTTP error, or a checksum mismatch (the partial file is removed).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    try:
        with urlopen(url, timeout=60) as response, open(part, "wb") as f, \
                progress(total=_length(response), unit="B", desc=dest.name) as bar:  # bytes: a bar or log lines
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))
    except OSError as e:  # URLError, HTTPError, timeouts and disk errors are all OSErrors
        part.unlink(missing_ok=True)
        raise QadtrError(f"could not download {url} ({e}); download it by hand into {dest.parent}") from None
    got = md5_file(part)
    if md5 is not None and got != md5:
        part.unlink()
        raise QadtrError(f"{url} downloaded with md5 {got}, expected {md5}; retry, or download it by hand "
                         f"into {dest.parent}")
    os.replace(part, dest)
    return dest
