"""Shared CLI plumbing: one-line user errors with exit code 1, a PASSED/FAILED closing line, an argparse that
answers a bad flag the same way, and output paths checked before the work starts."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NoReturn

from qadtr._errors import QadtrError

# every --data-dir's help: where qadtr.data.resolve_data_dir looks when the flag is absent
DATA_DIR_HELP = ("dataset folder (default: $QADTR_DATA, else ../shared/data beside the repository, else the "
                 "official archive downloaded into the cache)")


def run_cli(module: str, body: Callable[[], None], argv: list[str] | None = None) -> int:
    """Run a CLI body; user errors print one line and return 1, bugs keep their traceback.

    Every run ends with `PASSED | 3.2s | python -m MODULE ARGV` (or FAILED), as Polygraphy's tools do. `argv` is
    what the CLI's main() was given (None: the command line), so a CLI called by another names its own command.
    """
    from qadtr.progress import show_stages  # qadtr.progress imports nothing of qadtr: no cycle

    command = " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])
    show_stages()  # the library's stage() lines reach a person running a command, not a test or an importer
    start = time.perf_counter()
    try:
        body()
    except QadtrError as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"FAILED | {time.perf_counter() - start:.1f}s | {command}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"INTERRUPTED | {time.perf_counter() - start:.1f}s | {command}", file=sys.stderr)
        return 130
    print(f"PASSED | {time.perf_counter() - start:.1f}s | {command}")
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose bad or missing flag is one line, `error: ... (see PROG --help)`, then the FAILED line and
    exit 1, as every other user error (argparse's own: the usage text and exit 2)."""

    def parse_known_args(self, args=None, namespace=None):
        self._argv = sys.argv[1:] if args is None else list(args)  # for the FAILED line
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        print(f"FAILED | 0.0s | {' '.join([self.prog, *getattr(self, '_argv', [])])}", file=sys.stderr)
        sys.exit(1)


def check_count(value: int, flag: str, *, zero: str | None = None) -> int:
    """A count flag: >= 1, or >= 0 when 0 has a meaning (`zero`, e.g. "all"); never a silent substitute."""
    if value < (0 if zero else 1):
        allowed = f">= 0 (0 = {zero})" if zero else ">= 1"
        raise QadtrError(f"{flag} {value}: must be {allowed}")
    return value


def check_writable(path: str | Path, kind: str, flag: str = "--out") -> Path:
    """Refuse an output path before any work is done: `kind` "folder" (created later if missing) or "file" (an
    existing one is replaced). The nearest existing folder must take a new file (probed, so read-only mounts and
    permissions both count)."""
    if kind not in ("folder", "file"):
        raise ValueError(f"kind={kind!r}; use 'folder' or 'file'")
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise QadtrError(f"{flag} {path} is a file, not a folder; pass a folder path (it is created if missing)")
    if kind == "file" and path.is_dir():
        raise QadtrError(f"{flag} {path} is a folder; pass a file path, e.g. {path / 'out.json'}")
    parent = path if kind == "folder" else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise QadtrError(f"{flag} {path}: {parent} is a file, not a folder; pass a path under a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".qadtr-write-check-")
    except OSError as e:
        raise QadtrError(f"{flag} {path}: cannot write in {parent} ({e.strerror or type(e).__name__}); pass a "
                         "writable location") from None
    os.close(fd)
    os.unlink(probe)
    return path
