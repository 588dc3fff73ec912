"""Scratch folders that do not outlive their job: every temporary folder of the project is made here.

    with scratch("tflite") as tmp:    # <system temp>/qadtr-tflite-<pid>-XXXXXXXX, removed when the block ends
        ...
    tmp = make_scratch("ssh")         # one held across calls (devices/ssh.py): its owner removes it in close()

A scratch folder is removed when its section ends: on success, on an exception, on Ctrl-C, and on SIGTERM or
SIGHUP (qadtr._cli.run_cli turns those into KeyboardInterrupt, so `finally` runs). After a kill -9 nothing runs;
the folder's name carries the pid, so the next job of the same kind deletes every `qadtr-<kind>-<pid>-*` whose
process is gone from this host (only real folders, not links, and only this user's).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from qadtr._errors import QadtrError

KIND = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # a job kind in a folder name: "ssh", "tflite", "emu-build"


def _prefix(kind: str) -> str:
    if not KIND.fullmatch(kind):
        raise ValueError(f"scratch kind {kind!r}: use lower-case letters, digits and single dashes, e.g. 'tflite'")
    return f"qadtr-{kind}-"


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's counts: it may still use its folder)."""
    try:
        os.kill(pid, 0)  # signal 0: the existence check only, nothing is delivered
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def sweep(kind: str, dir: str | Path | None = None, remove: Callable[[Path], None] = shutil.rmtree) -> list[Path]:
    """Delete the `qadtr-<kind>-<pid>-*` folders in `dir` (default: the system temp folder) left by processes that
    no longer run (killed with -9); returns them. A folder `remove` fails on (or refuses with QadtrError) is kept."""
    pattern = re.compile(re.escape(_prefix(kind)) + r"([0-9]{1,10})-")
    if os.name != "posix":  # os.kill(pid, 0) ends the process on Windows: no sweep there
        return []
    try:
        entries = list(os.scandir(Path(dir) if dir is not None else tempfile.gettempdir()))
    except OSError:
        return []
    swept = []
    for entry in entries:
        found = pattern.match(entry.name)
        if found is None or int(found[1]) in (0, os.getpid()) or _alive(int(found[1])):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            remove(Path(entry.path))
        except (OSError, QadtrError):  # gone already (another job swept it), or not removable: left as it is
            continue
        swept.append(Path(entry.path))
    return swept


def make_scratch(kind: str, dir: str | Path | None = None, remove: Callable[[Path], None] = shutil.rmtree) -> Path:
    """A new `qadtr-<kind>-<pid>-XXXXXXXX` folder in `dir` (default: the system temp folder), after sweeping that
    kind's stale ones (with `remove`); the caller deletes it."""
    sweep(kind, dir, remove)
    return Path(tempfile.mkdtemp(prefix=f"{_prefix(kind)}{os.getpid()}-", dir=dir))


@contextlib.contextmanager
def scratch(kind: str) -> Iterator[Path]:
    """A scratch folder in the system temp folder for the block, removed when the block ends however it ends."""
    path = make_scratch(kind)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
