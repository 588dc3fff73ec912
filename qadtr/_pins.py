"""The pinned runtime stack: pyproject.toml is the one place it is written.

The host install (`pip install -e .[dev]`), CI (`.ci/run`, the same install) and the emulated ARM board's
image (`devices._emu_image.WHEELS`) all read these pins, so a difference between host and board is the
CPU's, never a version's. Integer kernels change between releases, and a range drifts (`onnxruntime>=1.18`
resolved to 1.32.0 on 2026-12-01 while the board pinned 1.31.1: two tests failed on that alone), so every
runtime is pinned exactly.

    >>> pins()["onnxruntime"]
    '1.31.1'
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from qadtr._errors import QadtrError

DIST = "qadtr-edge"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"  # present in a source checkout
# what the board needs: runtimes + numpy (no torch, no brevitas on a board)
BOARD = ("onnxruntime", "ai-edge-litert", "numpy")
# what decides the integer arithmetic of an export and its replay on the host
RUNTIME_STACK = ("onnxruntime", "ai-edge-litert", "numpy", "brevitas", "onnx")
_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+\-]+)\s*(?:;.*)?$")


def _requirements() -> list[str]:
    """Every requirement string of the project, from pyproject.toml when this is a checkout, else the
    installed distribution's metadata (a wheel install has no pyproject.toml beside it)."""
    if PYPROJECT.is_file():
        import tomllib

        project = tomllib.loads(PYPROJECT.read_text())["project"]
        return list(project.get("dependencies", [])) + [r for extra in project.get("optional-dependencies", {}).values()
                                                       for r in extra]
    try:
        return list(metadata.requires(DIST) or [])
    except metadata.PackageNotFoundError:
        raise QadtrError(f"{DIST} is not installed and no pyproject.toml is beside it; pip install -e .") from None


def pins() -> dict[str, str]:
    """Distribution name (lower case, '-' separated) -> exact pinned version, for every `==` requirement."""
    out = {}
    for req in _requirements():
        found = _PIN.match(req)
        if found:
            out[found[1].lower().replace("_", "-")] = found[2]
    return out


def pinned(names: tuple[str, ...]) -> tuple[str, ...]:
    """`name==version` for each of `names`; a name without an exact pin is a bug in pyproject.toml."""
    have = pins()
    missing = [n for n in names if n not in have]
    if missing:
        raise QadtrError(f"pyproject.toml pins no exact version of {', '.join(missing)}; pin them with '=='")
    return tuple(f"{n}=={have[n]}" for n in names)


def drift(names: tuple[str, ...] = RUNTIME_STACK) -> dict[str, tuple[str, str | None]]:
    """Pinned distributions whose installed version differs: name -> (pinned, installed or None)."""
    out = {}
    for name, want in zip(names, (p.split("==")[1] for p in pinned(names))):
        try:
            got = metadata.version(name)
        except metadata.PackageNotFoundError:
            got = None
        if got != want:
            out[name] = (want, got)
    return out
