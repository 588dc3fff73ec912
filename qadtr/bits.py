"""Bit widths as one small value type: parse and format "w4a8" in one place.

    >>> Bits.parse("w4a8"), str(Bits(4, 4)), parse_bits("2,4,8"), bits_name((4, 8)), bits_names(((2, 2), (4, 4)))
    (Bits(w=4, a=8), 'w4a4', ((2, 2), (4, 4), (8, 8)), 'w4a8', 'w2a2+w4a4')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Bits:
    """Weight and activation bit widths of one quantized network."""

    w: int
    a: int

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.w, self.a)) or min(self.w, self.a) < 1:
            raise ValueError(f"bit widths w={self.w!r}, a={self.a!r}: write positive integers, e.g. Bits(4, 4)")

    @classmethod
    def parse(cls, text: str) -> Bits:
        """"4" -> Bits(4, 4); "w4a8" -> Bits(4, 8)."""
        tok = text.strip()
        try:
            if tok.startswith("w") and "a" in tok:
                return cls(int(tok[1:tok.index("a")]), int(tok[tok.index("a") + 1:]))
            return cls(int(tok), int(tok))
        except ValueError:
            raise ValueError(f"bad bit width {tok!r}; write e.g. 4, 2,4,8 or w4a8") from None

    @property
    def pair(self) -> tuple[int, int]:
        return (self.w, self.a)

    def __str__(self) -> str:
        return f"w{self.w}a{self.a}"


def bits_name(bits: tuple[int, int] | Bits | None) -> str:
    """The one name of a bit width: (4, 8) or Bits(4, 8) -> "w4a8"; None or () -> "float"."""
    if not bits:
        return "float"
    w, a = bits.pair if isinstance(bits, Bits) else bits
    return str(Bits(int(w), int(a)))


def bits_names(pairs) -> str:
    """Several bit widths as one name: ((2, 2), (4, 4)) -> "w2a2+w4a4"; () or None -> "float"."""
    return "+".join(bits_name(p) for p in pairs) if pairs else "float"


def parse_bits(text: str) -> tuple[tuple[int, int], ...]:
    """"4" -> ((4, 4),); "2,4,8" -> three pairs; "w4a8" -> ((4, 8),); "" -> () (float)."""
    return tuple(Bits.parse(tok).pair for tok in filter(None, (t.strip() for t in text.split(","))))
