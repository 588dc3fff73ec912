"""Exact integer convolution for the numpy executors: one im2col copy, float32 BLAS where it cannot round.

    acc = conv_nhwc(xc, w, stride=(1, 1), dilation=(1, 1))  # xc: (B, H', W', C) padded, zero point removed

float32 holds every integer below 2^24 exactly, so a GEMM whose partial sums all stay below it returns the
exact integer sum whatever order BLAS adds in. K (the NHWC im2col order kh, kw, c) is cut into chunks short
enough for that (max|x| * max|w| * chunk < 2^24); the chunks are summed in float64, exact below 2^53.
At 4 bits one chunk covers every K of these networks; 8-bit layers take a few.
"""

from __future__ import annotations

import numpy as np

F32_EXACT = 2 ** 24  # float32 represents every integer of smaller magnitude exactly


def im2col(xc: np.ndarray, kh: int, kw: int, stride, dilation) -> tuple[np.ndarray, tuple[int, int]]:
    """(B, H', W', C) -> (B*OH*OW, KH*KW*C) float32 columns in (kh, kw, c) order, and (OH, OW)."""
    b, h, w, c = xc.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    x = np.ascontiguousarray(xc, np.float32)
    sb, sy, sx, sc = x.strides
    windows = np.lib.stride_tricks.as_strided(  # (B, OH, OW, KH, KW, C) view, no copy
        x, (b, oh, ow, kh, kw, c), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc), writeable=False)
    return windows.reshape(b * oh * ow, kh * kw * c), (oh, ow)  # the one copy


def exact_matmul(cols: np.ndarray, w2: np.ndarray, bound: int) -> np.ndarray:
    """cols (N, K) float32 integers with |cols| <= bound, w2 (K, M) integers -> (N, M) int64, exact."""
    k = w2.shape[0]
    wmax = int(np.abs(w2.astype(np.int64)).max(initial=0))
    chunk = max(1, (F32_EXACT - 1) // max(1, bound * wmax))  # K per exact float32 GEMM
    wf = w2.astype(np.float32)
    acc = None
    for k0 in range(0, k, chunk):
        part = cols[:, k0:k0 + chunk] @ wf[k0:k0 + chunk]  # (N, M), every partial sum below 2^24
        acc = part.astype(np.float64) if acc is None else acc + part
    return acc.astype(np.int64)


def conv_nhwc(xc: np.ndarray, w_khkwcm: np.ndarray, stride, dilation) -> tuple[np.ndarray, tuple[int, int]]:
    """xc (B, H', W', C) padded integers (zero point removed), w (KH, KW, C, M) integers ->
    ((B*OH*OW, M) int64 exact sums, (OH, OW))."""
    kh, kw, c, m = w_khkwcm.shape
    cols, out_hw = im2col(xc, kh, kw, stride, dilation)
    bound = int(np.abs(xc).max(initial=0))
    return exact_matmul(cols, w_khkwcm.reshape(kh * kw * c, m), bound), out_hw
