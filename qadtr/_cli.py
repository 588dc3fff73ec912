"""Shared CLI plumbing: one-line user errors with exit code 1, a PASSED/FAILED closing line, an argparse that
answers a bad flag the same way, output paths checked before the work starts, and SIGTERM / SIGHUP handled as
Ctrl-C (cleanup runs)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, NoReturn

from qadtr._errors import QadtrError

# every --data-dir's help: where qadtr.data.resolve_data_dir looks when the flag is absent
DATA_DIR_HELP = ("dataset folder (default: $QADTR_DATA, else ../shared/data beside the repository, else the "
                 "official archive downloaded into the cache)")
# `kill PID` and a closed terminal: while a CLI runs, they raise Terminated so that cleanup runs as on Ctrl-C
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Ctrl-C is: every `finally` and `with` runs (scratch folders,
    ssh streams, child processes), then run_cli exits 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Inside the block, STOP_SIGNALS raise Terminated in the main thread instead of ending the process on the spot.
    A signal whose handler is not the default (nohup's ignored SIGHUP, an embedding program's own) is left alone,
    and so is every signal outside the main thread (Python runs handlers there only)."""
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for s in STOP_SIGNALS:
            if signal.getsignal(s) == signal.SIG_DFL:
                saved[s] = signal.signal(s, _terminate)
    try:
        yield
    finally:
        for s, old in saved.items():
            signal.signal(s, old)


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
        with stop_signals_interrupt():  # SIGTERM / SIGHUP clean up as Ctrl-C does (scratch folders: qadtr._scratch)
            body()
    except QadtrError as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"FAILED | {time.perf_counter() - start:.1f}s | {command}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"INTERRUPTED | {time.perf_counter() - start:.1f}s | {command}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them
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
    try:
        os.close(fd)
    finally:
        os.unlink(probe)
    return path
