"""qadtr.bits: the one place a bit width is parsed and named ("w4a8", "float", "w2a2+w4a4")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qadtr.bits import Bits, bits_name, bits_names, parse_bits

ROOT = Path(__file__).resolve().parents[2]


def test_parse_and_name_round_trip():
    assert Bits.parse("w4a8") == Bits(4, 8) and Bits.parse("4") == Bits(4, 4)
    assert parse_bits("2,4,w4a8") == ((2, 2), (4, 4), (4, 8)) and parse_bits("") == ()
    for pair in ((2, 2), (4, 8), (8, 8)):
        assert Bits.parse(bits_name(pair)).pair == pair
    assert bits_name(None) == bits_name(()) == "float" and bits_name(Bits(2, 2)) == "w2a2"
    assert bits_names(((2, 2), (4, 4))) == "w2a2+w4a4" and bits_names(()) == "float"


@pytest.mark.parametrize("bad", [(0, 4), (4, -1)])
def test_a_bad_pair_is_refused(bad):
    with pytest.raises(ValueError, match="write positive integers"):
        bits_name(bad)


def test_no_module_formats_a_bit_width_by_hand():
    """`f"w{w}a{a}"` written inline drifts (three formatters once); every name comes from qadtr.bits."""
    inline = re.compile(r"""f["'][^"'\n]*w\{[^}]+\}a\{""")
    found = [f"{p.relative_to(ROOT)}:{i}" for folder in ("qadtr", "export", "eval", "devices", "bench")
             for p in sorted((ROOT / folder).rglob("*.py")) if p.name != "bits.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if inline.search(line)]
    assert not found, f"format bit widths with qadtr.bits.bits_name: {found}"
