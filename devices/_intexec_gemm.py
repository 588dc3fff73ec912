"""Exact integer convolution for the numpy executors: integer values held in float32, float32 BLAS where it
cannot round.

    xc = pad_nhwc(x, zp, (1, 1, 1, 1))                       # x: (B, H, W, C) int8/uint8 -> (B, H+2, W+2, C) f32
    acc, (oh, ow) = conv_nhwc(xc, w, (1, 1), dilation=(1, 1), bound=bound)  # (B*OH*OW, M) float32/64, exact integers

float32 holds every integer below 2^24 exactly, so a GEMM whose partial sums all stay below it returns the
exact integer sum whatever order BLAS adds in. Every partial sum of output m is at most
bound * sum_k |w[k, m]| (bound >= max |x - zp|), so when that is below 2^24 one float32 GEMM is exact (every
4-bit and, on the zoo, every 8-bit layer). Otherwise K (the NHWC im2col order kh, kw, c) is cut into chunks
short enough (bound * max|w| * chunk < 2^24) and the chunks are summed in float64, exact below 2^53.
The zero point is removed once, on the (1x) activation while it is converted to float32 and padded; pads hold
0 (= the zero point, removed), so no correction term is needed afterwards.
"""

from __future__ import annotations

import numpy as np

F32_EXACT = 2 ** 24  # float32 represents every integer of smaller magnitude exactly


def pad_nhwc(x: np.ndarray, zp: int, pads: tuple[int, int, int, int]) -> np.ndarray:
    """x - zp as float32, (B, H, W, C) -> (B, pt + H + pb, pl + W + pr, C) with zeros (the zero point) in
    the pads (top, left, bottom, right); one pass over x. Exact: |x - zp| < 2^24 for every integer storage type."""
    b, h, w, c = x.shape
    pt, pl, pb, pr = pads
    out = np.empty((b, pt + h + pb, pl + w + pr, c), np.float32)
    out[:, :pt], out[:, pt + h:], out[:, :, :pl], out[:, :, pl + w:] = 0, 0, 0, 0
    np.subtract(x, np.float32(zp), out=out[:, pt:pt + h, pl:pl + w], dtype=np.float32)
    return out


def im2col(xc: np.ndarray, kh: int, kw: int, *, stride, dilation) -> tuple[np.ndarray, tuple[int, int]]:
    """(B, H', W', C) float32 -> (B*OH*OW, KH*KW*C) columns in (kh, kw, c) order, and (OH, OW).

    A 1x1 kernel at stride 1 is a reshape (no copy); every other kernel takes one copy.
    """
    b, h, w, c = xc.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    x = np.ascontiguousarray(xc, np.float32)
    if kh == kw == sh == sw == 1:
        return x.reshape(b * h * w, c), (oh, ow)
    sb, sy, sx, sc = x.strides
    if dw == 1:  # (kw, c) of one window row are KW*C adjacent floats: copied as one run, ~3x faster than per pixel
        rows = np.lib.stride_tricks.as_strided(  # (B, OH, OW, KH, KW*C) view, no copy
            x, (b, oh, ow, kh, kw * c), (sb, sy * sh, sx * sw, sy * dh, sc), writeable=False)
        return rows.reshape(b * oh * ow, kh * kw * c), (oh, ow)  # the one copy, same (kh, kw, c) order
    windows = np.lib.stride_tricks.as_strided(  # (B, OH, OW, KH, KW, C) view, no copy
        x, (b, oh, ow, kh, kw, c), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc), writeable=False)
    return windows.reshape(b * oh * ow, kh * kw * c), (oh, ow)  # the one copy


def sum_bound(w2: np.ndarray, bound: int) -> int:
    """The largest |partial sum| of cols @ w2 over |cols| <= bound: bound * max_m sum_k |w2[k, m]|."""
    return int(bound) * int(np.abs(w2.astype(np.int64)).sum(0).max(initial=0))


def exact_matmul(cols: np.ndarray, w2: np.ndarray, bound: int) -> np.ndarray:
    """cols (N, K) float32 integers with |cols| <= bound, w2 (K, M) integers -> (N, M) exact integer sums:
    float32 when one GEMM cannot round (sum_bound < 2^24), else float64 over exact float32 chunks of K."""
    wf = w2.astype(np.float32)
    if sum_bound(w2, bound) < F32_EXACT:
        return cols @ wf  # (N, M) float32, every partial sum below 2^24
    k = w2.shape[0]
    wmax = int(np.abs(w2.astype(np.int64)).max(initial=0))
    chunk = max(1, (F32_EXACT - 1) // max(1, int(bound) * wmax))  # K per exact float32 GEMM
    acc = np.zeros((cols.shape[0], w2.shape[1]), np.float64)
    for k0 in range(0, k, chunk):
        acc += cols[:, k0:k0 + chunk] @ wf[k0:k0 + chunk]  # (N, M), every partial sum below 2^24
    return acc


def exact_depthwise(xc: np.ndarray, w: np.ndarray, stride, *, dilation,
                    bound: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Depthwise conv as a sum of KH*KW shifted elementwise products: xc (B, H', W', C) padded float32 integers
    (zero point removed, |xc| <= bound), w (KH, KW, C) integers -> ((B*OH*OW, C) exact sums, (OH, OW)).

    The same bound as exact_matmul, per channel: every partial sum of channel c is at most
    bound * sum_k |w[k, c]|, so below 2^24 the float32 sums are exact in any order; otherwise they are taken in
    float64 (each product below 2^24 * 2^8, every sum below 2^53: exact)."""
    b, h, wd, c = xc.shape
    kh, kw, _ = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (wd - dw * (kw - 1) - 1) // sw + 1
    dtype = np.float32 if sum_bound(w.reshape(kh * kw, c), bound) < F32_EXACT else np.float64
    x, wf = xc.astype(dtype, copy=False), w.astype(dtype)
    acc = np.zeros((b, oh, ow, c), dtype)
    for i in range(kh):
        for j in range(kw):  # (B, OH, OW, C) window of tap (i, j) times its per-channel weight
            acc += x[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] * wf[i, j]
    return acc.reshape(b * oh * ow, c), (oh, ow)


def conv_nhwc(xc: np.ndarray, w_khkwcm: np.ndarray, stride, *, dilation, bound: int | None = None
              ) -> tuple[np.ndarray, tuple[int, int]]:
    """xc (B, H', W', C) padded float32 integers (zero point removed, |xc| <= bound; measured when None),
    w (KH, KW, C, M) integers -> ((B*OH*OW, M) exact sums in float32 or float64, (OH, OW))."""
    kh, kw, c, m = w_khkwcm.shape
    w2 = w_khkwcm.reshape(kh * kw * c, m)  # (K, M)
    bound = int(np.abs(xc).max(initial=0)) if bound is None else proven_bound(xc, w2, bound)
    cols, out_hw = im2col(xc, kh, kw, stride=stride, dilation=dilation)
    return exact_matmul(cols, w2, bound), out_hw


def storage_span(dtype, zp: int) -> int:
    """max |x - zp| over every value x of an integer storage type: the static bound of a zero-point-removed input."""
    info = np.iinfo(dtype)
    return max(int(zp) - int(info.min), int(info.max) - int(zp))


def with_bias(acc: np.ndarray, bias: np.ndarray | None, bound: int) -> tuple[np.ndarray, int]:
    """(acc + bias, its bound) for exact integer sums acc (N, M) with |acc| <= bound and integer bias (M,):
    in place in float32 while bound + max|bias| < 2^24 (exact), else in float64 (exact below 2^53)."""
    if bias is None:
        return acc, bound
    total = int(bound) + int(np.abs(bias.astype(np.int64)).max(initial=0))
    if acc.dtype == np.float32 and total < F32_EXACT:
        return np.add(acc, bias.astype(np.float32), out=acc), total
    return np.add(acc, bias.astype(np.float64), dtype=np.float64), total


def proven_bound(xc: np.ndarray, w2: np.ndarray, span: int) -> int:
    """A bound on |xc| for exact_matmul: the static `span` where it proves one float32 GEMM exact, else measured."""
    return span if sum_bound(w2, span) < F32_EXACT else int(np.abs(xc).max(initial=0))
