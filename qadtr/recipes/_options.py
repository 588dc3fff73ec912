"""`--recipe-arg KEY=VALUE` -> typed keyword arguments of a recipe's frozen config.

One lookup by the field's declared type; an unknown key or type lists what is valid, so a misspelt
option can never fall back to a default silently.
"""

from __future__ import annotations

import dataclasses

from qadtr.bits import parse_bits

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean; write true or false")


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "") else int(text)


def _bits(text: str) -> tuple[tuple[int, int], ...]:
    return parse_bits(text)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",") if t.strip())


PARSERS = {  # declared field type (as written in the dataclass) -> parser of its CLI text
    "bool": _bool,
    "int": int,
    "float": float,
    "str": str,
    "int | None": _int_or_none,
    "tuple[tuple[int, int], ...]": _bits,
    "tuple[float, ...]": _floats,
}


def parse_overrides(cls: type, items) -> dict:
    """["beta=1e-4", "edges=false"] -> {"beta": 1e-4, "edges": False} for the fields of `cls`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--recipe-arg {item!r}: write KEY=VALUE, e.g. {next(iter(fields))}=...")
        if key not in fields:
            raise ValueError(f"{cls.__name__} has no option {key!r}; valid: {sorted(fields)}")
        kind = str(fields[key].type)
        if kind not in PARSERS:
            raise ValueError(f"{cls.__name__}.{key} ({kind}) cannot be set from the command line")
        try:
            out[key] = PARSERS[kind](text.strip())
        except ValueError as e:
            raise ValueError(f"--recipe-arg {key}={text!r}: expected {kind} ({e})") from None
    return out
