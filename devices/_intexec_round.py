"""Rounding primitives of the integer executors: TFLite / gemmlowp fixed point (reference forms, int64) and the
float64 form of MultiplyByQuantizedMultiplier that the convolutions use where a bound proves it exact.

    y = requant_fixed(acc, q, shift, bound=bound)  # == mbqm(acc, q, shift) bit for bit, in float64 where it can be

The int64 functions are the definitions (each cites its source); `requant_fixed` is a faster evaluation of
the same integers, checked against them in tests/unit/test_intexec_round.py.
"""

from __future__ import annotations

import math

import numpy as np

from devices._runner import RunnerError

_I32_MIN, _I32_MAX = -(2 ** 31), 2 ** 31 - 1  # int32 saturation bounds (gemmlowp)
_FIX = ("run the artifact under LiteRT instead (devices.litert.LiteRTRunner), or export it with "
        "export.tflite, whose graphs use only the ops this executor implements")
F64_EXACT = 2 ** 53  # float64 represents every integer of smaller magnitude exactly


# -- rounding primitives (double) ---------------------------------------------------------------------
def quantize_multiplier(m: float) -> tuple[int, int]:
    """QuantizeMultiplier (quantization_util.cc): m = q * 2^shift, q an int32 in [2^30, 2^31)."""
    if m == 0.0:
        return 0, 0
    frac, shift = math.frexp(m)  # frac in [0.5, 1)
    q = math.floor(frac * 2.0 ** 31 + 0.5)  # TfLiteRound: half away from zero (frac > 0)
    if q == 2 ** 31:  # frac rounded up to 1.0
        q, shift = q // 2, shift + 1
    if shift < -31:  # too small for the shift range: flush to zero (as TFLite does)
        q, shift = 0, 0
    return int(q), int(shift)


def srdhm(a, b) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul (gemmlowp fixedpoint.h): round(a*b / 2^31), halves away from 0."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b  # |ab| <= 2^62: exact in int64
    # gemmlowp: v = ab + (ab >= 0 ? 2^30 : 1 - 2^30), then C++ '/' 2^31 (toward zero). For v < 0 truncation is
    # floor((v + 2^31 - 1) / 2^31) = floor((ab + 2^30) / 2^31), the same expression as for v >= 0: one shift.
    q = (ab + (1 << 30)) >> 31
    if np.any(b == _I32_MIN):  # the one overflow, INT32_MIN * INT32_MIN (never with a positive multiplier)
        q = np.where((a == _I32_MIN) & (b == _I32_MIN), _I32_MAX, q)
    return q


def rdbpot(x, exponent) -> np.ndarray:
    """RoundingDivideByPOT (gemmlowp): x / 2^exponent, round to nearest, halves away from zero."""
    x, e = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << e) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + ((x & mask) > threshold)


def mbqm(x, q, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier(int32 x, ...) (common.h): left shift, SRDHM, RoundingDivideByPOT."""
    q, shift = np.asarray(q, np.int64), np.asarray(shift, np.int64)
    x = np.asarray(x, np.int64)
    if (shift > 0).any():  # left shift: the int32 product wraps as in C++ (never for in-range scales)
        x = (((x << np.maximum(shift, 0)) - _I32_MIN) % 2 ** 32) + _I32_MIN
    return rdbpot(srdhm(x, q), np.maximum(-shift, 0))


def mbqm64(x, q, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier(int64 x, ...) (common.cc, 16x8 kernels): one rounding, half up.

    round(x * q / 2^(31 - shift)) with the full int32 multiplier; measured bit-exact on LiteRT 2.3.0 (the
    older 15-bit `reduced_multiplier` form flips ~5% of the int16 logits). |x| < 2^32 keeps x * q in int64.
    """
    x, q, shift = np.asarray(x, np.int64), np.asarray(q, np.int64), np.asarray(shift, np.int64)
    if x.size and np.abs(x).max() >= 2 ** 32:
        raise RunnerError(f"16x8 accumulator {int(np.abs(x).max())} >= 2^32 would overflow int64 here; {_FIX}")
    total = 31 - shift
    return (x * q + (np.int64(1) << (total - 1))) >> total


def rdbpot_half_up(x, exponent) -> np.ndarray:
    """ruy's rounding right shift (x86 kernels behind the builtin optimized CONV_2D): halves toward +inf."""
    e = np.asarray(exponent, np.int64)
    return (np.asarray(x, np.int64) + ((np.int64(1) << e) >> 1)) >> e


def rint_f32(v) -> np.ndarray:
    """float32 -> integer, round half to even (XNNPACK's magic bias / cvtps / nearbyint)."""
    return np.rint(np.asarray(v, np.float32)).astype(np.int64)


def round_away(v) -> np.ndarray:
    """std::round (TfLiteRound): to nearest, halves away from zero; exact for any float."""
    a = np.abs(v)
    f = np.floor(a)
    return (np.sign(v) * (f + (a - f >= 0.5))).astype(np.int64)


def requant_fixed(acc: np.ndarray, q, shift, *, bound: int | None = None, half_up: bool = False) -> np.ndarray:
    """mbqm(acc, q, shift) (or, with `half_up`, ruy's srdhm then rdbpot_half_up) of integer `acc` (..., C) held in
    any numeric dtype, per-channel q, shift (C,): int64 integers, bit-exact with the int64 definitions.

    Where every shift <= 0 and |acc| * q + 2^30 < 2^53 (|acc| <= `bound`, measured when it does not prove
    it), it runs in float64: acc * q is then exact, floor((acc * q + 2^30) / 2^31) is srdhm, and the second
    rounding (x / 2^e, halves away from zero, or up) is exact too (a power-of-two scale and a floor). Else int64.
    """
    q, shift = np.asarray(q, np.int64), np.asarray(shift, np.int64)
    qmax = int(q.max(initial=0))
    fits = lambda b: b * qmax + (1 << 30) < F64_EXACT  # noqa: E731
    if (shift > 0).any() or not (bound is not None and fits(bound) or fits(int(np.abs(acc).max(initial=0)))):
        acc = np.asarray(acc).astype(np.int64)
        if half_up:
            return rdbpot_half_up(srdhm(acc << np.maximum(shift, 0), q), np.maximum(-shift, 0))
        return mbqm(acc, q, shift)
    t = np.multiply(acc, q.astype(np.float64), dtype=np.float64)  # (..., C) exact: below 2^53
    t += 2.0 ** 30
    t *= 2.0 ** -31
    np.floor(t, out=t)  # srdhm (q > 0 or 0, so no saturating case)
    t *= np.exp2(shift.astype(np.float64))  # / 2^e, e = -shift >= 0: exact
    if half_up:
        t += 0.5
        return np.floor(t, out=t)
    t += np.copysign(0.5, t)  # t / 2^e has at most 31 fraction bits: exact
    return np.trunc(t, out=t)  # halves away from zero
