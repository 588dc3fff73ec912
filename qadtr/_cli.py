"""Shared CLI plumbing: one-line user errors with exit code 1, a PASSED/FAILED closing line."""

from __future__ import annotations

import sys
import time
from typing import Callable

from qadtr._errors import QadtrError


def run_cli(module: str, body: Callable[[], None], argv: list[str] | None = None) -> int:
    """Run a CLI body; user errors print one line and return 1, bugs keep their traceback.

    Every run ends with `PASSED | 3.2s | python -m MODULE ARGV` (or FAILED), as Polygraphy's tools do. `argv` is
    what the CLI's main() was given (None: the command line), so a CLI called by another names its own command.
    """
    command = " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])
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
