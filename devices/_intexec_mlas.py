"""MLAS numerics for the ONNX integer executor (devices/_intexec_onnx.py, whose docstring cites the sources).

    err = saturation_error(cols, w2, amax, offset=za)  # (N, M) AVX2 pair saturation of u8 (cols + za) x s8 w2
    q = requant_f32(acc, scale, zp, dtype=np.uint8, relu=relu)  # MlasRequantizeOutput of exact sums held in float
"""

from __future__ import annotations

import numpy as np

I16 = (-32768, 32767)  # VPMADDUBSW saturates each pair sum to int16
_QRANGE = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


def pair_dot_sat(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """VPMADDUBSW + VPMADDWD: a (..., K) u8 times w (K, M) s8 -> (..., M) int64, pairs (2j, 2j+1) saturated to int16."""
    a = a.astype(np.int32)
    w = w.astype(np.int32)
    if a.shape[-1] % 2:  # odd K: MLAS pads K with zero weights
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), np.int32)], -1)
        w = np.concatenate([w, np.zeros((1,) + w.shape[1:], np.int32)], 0)
    pairs = a[..., 0::2, None] * w[0::2] + a[..., 1::2, None] * w[1::2]  # (..., K/2, M)
    return np.clip(pairs, *I16).sum(-2, dtype=np.int64)


def saturation_error(cols: np.ndarray, w: np.ndarray, amax: np.ndarray, *, offset: int = 0) -> np.ndarray | None:
    """pair_dot_sat minus the exact product, (N, M) float64, for the u8 inputs `cols + offset` (N, K) (cols in
    any numeric dtype), or None where no pair can saturate.

    `amax` (K,) bounds each column's u8 inputs; only the (pair, output) cells whose bound
    amax[2j] |w[2j]| + amax[2j+1] |w[2j+1]| can leave int16 are evaluated, one pair j (all its outputs) per
    step, so layers of small weights (every layer below 8 bits but the stem) cost nothing and the rest of the
    sum stays exact in BLAS. A pair sum is at most 2 * 255 * 128 = 65280 in magnitude: exact in float32.
    """
    n, k = cols.shape[0], w.shape[0]
    amax = np.asarray(amax, np.int64)
    if k % 2:  # odd K: MLAS pads K with zero weights
        w, amax = np.concatenate([w, np.zeros((1, w.shape[1]), w.dtype)]), np.append(amax, 0)
    w = w.astype(np.int64)
    bound = amax[0::2, None] * np.abs(w[0::2]) + amax[1::2, None] * np.abs(w[1::2])  # (K/2, M)
    pairs = np.nonzero((bound > I16[1]).any(1))[0]
    if not len(pairs):
        return None
    err = np.zeros((n, w.shape[1]), np.float64)
    wf = w.astype(np.float32)
    def col(i: int) -> np.ndarray:  # (N,) u8 inputs of K index i; the padded index holds 0
        return cols[:, i].astype(np.float32) + np.float32(offset) if i < k else np.zeros(n, np.float32)

    for j in pairs:  # the pairs that can saturate, with the outputs where they can
        ms = np.nonzero(bound[j] > I16[1])[0]
        pair = col(2 * j)[:, None] * wf[2 * j, ms] + col(2 * j + 1)[:, None] * wf[2 * j + 1, ms]  # (N, |ms|)
        err[:, ms] += np.clip(pair, *I16) - pair
    return err


def requant_f32(acc: np.ndarray, scale: np.ndarray, zp: int, *, dtype, relu: bool) -> np.ndarray:
    """_requant of exact integer sums held in float (|acc| < 2^31, so int32 -> float32 is one rounding, as
    float64 -> float32 is): float32(acc) * scale, round-half-even, + zp, saturate; in float32, in place."""
    lo, hi = _QRANGE[np.dtype(dtype)]
    v = np.multiply(acc, scale, dtype=np.float32)  # (N, M)
    np.rint(v, out=v)
    v += np.float32(zp)  # beyond 2^24 the sum may round, but it saturates either way
    np.clip(v, max(lo, zp) if relu else lo, hi, out=v)
    return v.astype(dtype)


def _fma32(x: np.ndarray, y: np.float32, z) -> np.ndarray:
    """float32 fused multiply-add: x*y+z rounded once (x small integers, so the float64 sum is exact)."""
    return (x.astype(np.float64) * np.float64(y) + np.asarray(z, np.float64)).astype(np.float32)


def _quantize(v: np.ndarray, scale, zp, *, dtype) -> np.ndarray:
    """MlasQuantizeLinear: v / scale in float32, round-half-even, + zero point, saturate."""
    lo, hi = _QRANGE[np.dtype(dtype)]
    q = np.rint(v.astype(np.float32) / np.float32(scale)).astype(np.int64) + int(zp)
    return np.clip(q, lo, hi).astype(dtype)


def _dequantize(q: np.ndarray, scale, zp, *, axis: int = 1) -> np.ndarray:
    scale, zp = np.asarray(scale, np.float32), np.asarray(zp).astype(np.int32)
    if scale.ndim == 1 and q.ndim > 1:  # per-axis
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q.astype(np.int32) - zp).astype(np.float32) * scale


def _requant(acc: np.ndarray, scale: np.ndarray, zp: int, *, dtype, relu: bool) -> np.ndarray:
    """MlasRequantizeOutput / ConvSym post-process: float32(acc) * scale, round-half-even, + zp, saturate."""
    lo, hi = _QRANGE[np.dtype(dtype)]
    q = np.rint(acc.astype(np.int32).astype(np.float32) * scale).astype(np.int64) + zp
    return np.clip(q, max(lo, zp) if relu else lo, hi).astype(dtype)


def _gap(x: np.ndarray) -> np.ndarray:
    """MlasPoolGlobalKernel average: (B, C, H, W) float32 -> (B, C, 1, 1), 4-lane sums as MLAS does them."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1).astype(np.float32)
    n = flat.shape[-1]
    lanes = np.zeros((b, c, 4), np.float32)
    for i in range(0, n - n % 4, 4):  # MLAS_FLOAT32X4 accumulation, one vector at a time
        lanes = lanes + flat[..., i:i + 4]
    total = (lanes[..., 0] + lanes[..., 2]) + (lanes[..., 1] + lanes[..., 3])  # MlasReduceAddFloat32x4
    for i in range(n - n % 4, n):
        total = total + flat[..., i]
    return (total / np.float32(n)).reshape(b, c, 1, 1)
