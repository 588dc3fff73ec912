"""Element-wise integer ops on 8-bit tensors as table look-ups: the op itself, evaluated once on every input value.

    y = binary_lut(lambda a, b: add(a, b), a, b)      # a, b int8/uint8 (broadcastable) -> add(a, b), any ufunc-like op
    y = channel_lut(lambda v: scale(v), x)            # x (..., C) int8/uint8, v (256, C): a per-channel unary op

An 8-bit tensor takes 256 values, so an element-wise op of one or two of them is a table of 256 or 65536 entries.
The table is filled by the op's own (reference) code on a grid of every value, then indexed by the inputs: the
result equals the op's bit for bit by construction, whatever it computes (int64 fixed point, float32 FMAs),
at the cost of one gather instead of a dozen int64 passes. Tables are built per call (no state kept).
"""

from __future__ import annotations

import numpy as np

LUT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))  # 256 values each: what the tables cover


def values(dtype) -> np.ndarray:
    """Every value of an 8-bit integer dtype, ascending: (256,) of that dtype."""
    info = np.iinfo(dtype)
    return np.arange(info.min, info.max + 1).astype(dtype)


def _index(x: np.ndarray) -> np.ndarray:
    """x - min(dtype) as uint16 (0..255): a uint8 view, sign bit flipped for int8."""
    u = x.view(np.uint8) if x.dtype == np.uint8 else x.view(np.uint8) ^ np.uint8(0x80)
    return u.astype(np.uint16)


def binary_lut(fn, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """fn(a, b) for 8-bit integer arrays (broadcast together), fn element-wise: via its (256, 256) table."""
    table = np.asarray(fn(values(a.dtype)[:, None], values(b.dtype)[None, :]))  # (256, 256)
    idx = (_index(a) << np.uint16(8)) | _index(b)  # (broadcast shape) uint16: a-row, b-column
    return table.reshape(-1).take(idx)


def channel_lut(fn, x: np.ndarray) -> np.ndarray:
    """fn applied to x (..., C), an 8-bit integer array, where fn maps (256, C) -> (256, C) element by element
    (column c may depend on the channel c): via its table."""
    c = x.shape[-1]
    table = np.asarray(fn(np.repeat(values(x.dtype)[:, None], c, 1)))  # (256, C)
    idx = _index(x).astype(np.intp)
    idx *= c
    idx += np.arange(c)  # (..., C) row-major position in the table
    return table.reshape(-1).take(idx)
