"""Progress that a person can follow on a terminal and in a log: the one place every long loop gets its bar.

    >>> for batch in progress(range(0, n, 500), desc="eval", unit="batch"):
    ...     ...
    >>> bar = progress(total=steps, desc="qat w4a4", unit="step"); bar.update(1); bar.close()

On a terminal it is tqdm's bar, redrawn in place. Anywhere else (a CI log, `nohup`, a pipe) a redrawn bar
is one ever-growing line of carriage returns, so it writes whole lines instead: one at the start, one per
10% of the total (or every LOG_EVERY_S without a total, or when a 10% step takes longer than that), and
the last state when it closes.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

# a log line at least this often, so a slow 10% (or a loop without a total) still shows it is alive
LOG_EVERY_S = 60.0
# log lines per run of a loop with a total: one per 10%
LOG_STEPS = 10
# a log line is the bar's numbers without the bar (block characters in a log are noise)
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class LogLines(tqdm):
    """tqdm writing a whole line (newline-terminated) at the start, per 10%, every LOG_EVERY_S, and at the end."""

    def __init__(self, *args: Any, every_s: float = LOG_EVERY_S, **kwargs: Any) -> None:
        self._mark: int | None = -1  # the last 10% step written (None: no total)
        self._printed_n = -1
        self._printed_at = -float("inf")
        self._every_s = every_s
        iterable = args[0] if args else kwargs.get("iterable")
        known = kwargs.get("total") is not None or hasattr(iterable, "__len__")
        kwargs.update(mininterval=0, miniters=1, dynamic_ncols=False,  # every update reaches display(), which decides
                      bar_format=LOG_FORMAT if known else LOG_FORMAT_NO_TOTAL)
        super().__init__(*args, **kwargs)

    def clear(self, nolock: bool = False) -> None:
        """tqdm.write() clears bars before it prints: a log line needs no clearing."""

    def _line(self) -> None:
        self.fp.write(self.__str__().rstrip() + "\n")
        self.fp.flush()
        self._printed_n, self._printed_at = self.n, time.monotonic()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing its line: a log has nothing to clear
            return True
        mark = int(LOG_STEPS * self.n / self.total) if self.total else None
        if mark != self._mark or time.monotonic() - self._printed_at >= self._every_s:
            self._mark = mark
            self._line()
        return True

    def close(self) -> None:
        if self.disable:
            return
        if self.n != self._printed_n:  # the final count, once
            self._line()
        self.disable = True
        self._decr_instances(self)


# the stages of a long library call (export, proof, attribution): silent in library use and tests (logging's
# default shows WARNING and up), one stderr line each under a CLI (qadtr._cli.run_cli calls show_stages)
STAGES = logging.getLogger("qadtr.stage")


def stage(message: str) -> None:
    """Announce the next stage of a long call, e.g. stage("export.onnx: proving on 1000 images")."""
    STAGES.info(message)


class _StageLines(logging.Handler):
    """A line per stage on whatever sys.stderr is when it is written (a test's capture replaces it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(record.getMessage() + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed or broken stderr: a progress line is not worth a failure
            pass


def show_stages() -> None:
    """Print every stage() line to stderr from now on; idempotent (one handler however often called)."""
    if not any(isinstance(h, _StageLines) for h in STAGES.handlers):
        STAGES.addHandler(_StageLines())
    STAGES.setLevel(logging.INFO)
    STAGES.propagate = False  # not twice under an application's own root handler


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, enabled: bool = True, leave: bool = True, file: IO[str] | None = None) -> tqdm:
    """A tqdm bar on a terminal, LogLines elsewhere, nothing when not `enabled` (library calls from tests)."""
    fp = file if file is not None else sys.stderr
    tty = bool(getattr(fp, "isatty", lambda: False)())
    cls = tqdm if tty else LogLines
    extra = {"dynamic_ncols": True, "mininterval": 0.5} if tty else {}
    return cls(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=not enabled,
               leave=leave, file=fp, **extra)
