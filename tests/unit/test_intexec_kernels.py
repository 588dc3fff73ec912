"""The integer executors' fast helpers against the straightforward int64 computation, extremes included.

devices/_intexec_gemm.py (exact float32 GEMM and its bounds), _intexec_round.py (requant_fixed = mbqm),
_intexec_lut.py (tables of an op = the op), _intexec_mlas.py (vectorised pair saturation, float32 requant).
"""

from __future__ import annotations

import numpy as np
import pytest

from devices import _intexec_gemm as G
from devices import _intexec_lut as L
from devices import _intexec_mlas as M
from devices import _intexec_round as R

RNG = np.random.default_rng(0)
K_MAX = 576  # the largest K of the zoo's convolutions (3 x 3 x 64)


def extremes(lo: int, hi: int, shape) -> np.ndarray:
    """Random integers in [lo, hi] with the first rows at the extremes (lo, hi) and the rest random."""
    x = RNG.integers(lo, hi + 1, shape).astype(np.int64)
    x[0], x[1] = lo, hi
    return x


# -- _intexec_gemm -------------------------------------------------------------------------------------------
def test_pad_nhwc_removes_the_zero_point_and_zero_pads():
    x = extremes(-128, 127, (2, 5, 4, 3)).astype(np.int8)
    got = G.pad_nhwc(x, -128, (1, 2, 0, 1))
    want = np.pad(x.astype(np.int64) + 128, ((0, 0), (1, 0), (2, 1), (0, 0)))
    assert got.dtype == np.float32 and np.array_equal(got, want)


@pytest.mark.parametrize("lo, hi, wmax", [(-255, 255, 127), (0, 255, 8), (-3, 3, 2)])
def test_exact_matmul_is_the_int64_product_at_the_extremes(lo, hi, wmax):
    cols = extremes(lo, hi, (64, K_MAX))
    w = extremes(-wmax - 1, wmax, (K_MAX, 5))
    w[:, 0] = -wmax - 1  # a column of the largest weights: sum_bound beyond 2^24 at 8 bits (chunked path)
    bound = max(-lo, hi)
    got = G.exact_matmul(cols.astype(np.float32), w, bound)
    assert np.array_equal(got.astype(np.int64), cols @ w)
    assert got.dtype == (np.float32 if G.sum_bound(w, bound) < G.F32_EXACT else np.float64)
    assert G.sum_bound(w, bound) == bound * np.abs(w).sum(0).max()


def test_conv_nhwc_matches_a_direct_convolution():
    x = extremes(-128, 127, (2, 6, 7, 4)).astype(np.int8)
    w = extremes(-128, 127, (3, 3, 4, 5))
    xc = G.pad_nhwc(x, 3, (1, 1, 1, 1))
    acc, (oh, ow) = G.conv_nhwc(xc, w, (2, 2), dilation=(1, 1), bound=G.storage_span(np.int8, 3))
    xi = xc.astype(np.int64)
    want = np.array([[[np.einsum("ijc,ijcm->m", xi[b, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w) for j in range(ow)]
                      for i in range(oh)] for b in range(2)])  # (B, OH, OW, M)
    assert (oh, ow) == (3, 4) and np.array_equal(acc.reshape(want.shape).astype(np.int64), want)



@pytest.mark.parametrize("kernel", [(3, 3), (1, 1), (1, 3), (5, 3)])
@pytest.mark.parametrize("stride", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("dilation", [(1, 1), (2, 1), (1, 2)])
def test_im2col_is_every_window_in_kh_kw_c_order(kernel, stride, dilation):
    """Both copy paths (KW*C runs when dw = 1, per pixel otherwise) give the windows a direct slice gives."""
    x = np.arange(2 * 11 * 13 * 5, dtype=np.float32).reshape(2, 11, 13, 5)  # every value distinct: order shows
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    cols, (oh, ow) = G.im2col(x, kh, kw, stride=stride, dilation=dilation)
    want = np.stack([x[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
                     for i in range(kh) for j in range(kw)], 3)  # (B, OH, OW, KH*KW, C)
    assert (oh, ow) == ((11 - dh * (kh - 1) - 1) // sh + 1, (13 - dw * (kw - 1) - 1) // sw + 1)
    assert np.array_equal(cols, want.reshape(2 * oh * ow, kh * kw * 5))

def test_bounds_and_bias():
    assert G.storage_span(np.int8, -128) == 255 and G.storage_span(np.uint8, 0) == 255
    assert G.storage_span(np.int8, 0) == 128 and G.storage_span(np.int16, 0) == 32768
    acc = np.float32([[2 ** 24 - 2, -5]])
    bias = np.int32([1, 2 ** 31 - 1])
    total, bound = G.with_bias(acc.copy(), bias, 2 ** 24 - 2)
    assert total.dtype == np.float64 and bound == 2 ** 24 - 2 + 2 ** 31 - 1
    assert np.array_equal(total.astype(np.int64), acc.astype(np.int64) + bias)
    small, b2 = G.with_bias(np.float32([[7, -8]]), np.int32([-2, 3]), 8)
    assert small.dtype == np.float32 and b2 == 11 and small.tolist() == [[5, -5]]
    xc = np.float32([[3, -200]])
    assert G.proven_bound(xc, np.ones((2, 1), np.int8), 255) == 255  # proves one GEMM: static
    assert G.proven_bound(xc, np.full((K_MAX, 1), 127, np.int8), 255) == 200  # does not: measured


# -- _intexec_round ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("half_up", [False, True])
def test_requant_fixed_equals_mbqm(half_up):
    acc = extremes(-(2 ** 21), 2 ** 21, (400, 6))  # |acc| * q < 2^53: the float64 path
    acc[2:40] = RNG.integers(-300, 300, (38, 6))  # ties: small accumulators hit x.5 often
    mults = [R.quantize_multiplier(m) for m in (0.5, 2 ** -9, 0.0123, 0.999999, 2 ** -31, 0.0)]
    q, shift = np.array([m for m, _ in mults]), np.array([s for _, s in mults])
    if half_up:
        want = R.rdbpot_half_up(R.srdhm(acc, q), -shift)
    else:
        want = R.mbqm(acc, q, shift)
    for held in (acc, acc.astype(np.float64), acc.astype(np.float32)):  # float32 is exact below 2^24
        got = R.requant_fixed(held, q, shift, bound=2 ** 21, half_up=half_up)
        assert got.dtype == np.float64 and np.array_equal(got.astype(np.int64), want)
    big = extremes(-(2 ** 31), 2 ** 31 - 1, (50, 6))  # beyond the float64 proof: the int64 definition
    assert R.requant_fixed(big, q, shift, bound=None, half_up=half_up).dtype == np.int64
    assert np.array_equal(R.requant_fixed(big, q, shift, bound=None), R.mbqm(big, q, shift))
    up = R.quantize_multiplier(3.0)  # left shift: the int64 definition
    assert np.array_equal(R.requant_fixed(acc[:5, :1], [up[0]], [up[1]], bound=2 ** 21), R.mbqm(acc[:5, :1], *up))


# -- _intexec_lut --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("da, db", [(np.int8, np.int8), (np.uint8, np.int8), (np.uint8, np.uint8)])
def test_binary_lut_is_the_op(da, db):
    a = extremes(np.iinfo(da).min, np.iinfo(da).max, (3, 40, 7)).astype(da)
    b = extremes(np.iinfo(db).min, np.iinfo(db).max, (3, 40, 7)).astype(db)
    op = lambda u, v: np.clip((u.astype(np.int64) * 3 - v * 7 + 5) >> 2, -128, 127).astype(np.int8)  # noqa: E731
    got = L.binary_lut(op, a, b)
    assert got.dtype == np.int8 and np.array_equal(got, op(a, b))
    assert np.array_equal(L.binary_lut(op, a, b[:1, :1, :1]), op(a, b[:1, :1, :1]))  # broadcasting
    assert L.values(np.int8)[[0, -1]].tolist() == [-128, 127] and len(L.values(np.uint8)) == 256


def test_channel_lut_is_the_per_channel_op():
    x = extremes(-128, 127, (4, 6, 5, 3)).astype(np.int8)
    scale = np.array([0.5, -1.25, 3.0])
    op = lambda v: np.rint(v * scale).astype(np.int64)  # noqa: E731 - column c depends on channel c
    assert np.array_equal(L.channel_lut(op, x), op(x))


# -- _intexec_mlas -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [K_MAX, 27, 7])
def test_saturation_error_is_pair_dot_sat_minus_exact(k):
    a = extremes(0, 255, (300, k))
    w = extremes(-128, 127, (k, 6))
    w[:, 0] = 127  # every pair saturates on the 255 rows
    w[:, 1] = RNG.integers(-4, 4, k)  # none can
    err = M.saturation_error(a - 9, w, a.max(0), offset=9)  # cols hold x - zp, offset the zero point
    assert np.array_equal(a @ w + err.astype(np.int64), M.pair_dot_sat(a, w))
    assert err[1, 0] < 0 and not err[:, 1].any()  # row 1 is all 255: its pairs saturate
    assert M.saturation_error(a, np.ones((k, 2), np.int8), a.max(0)) is None  # nothing can saturate


def test_requant_f32_is_the_int64_requant():
    acc = extremes(-(2 ** 31 - 1), 2 ** 31 - 1, (200, 4))
    acc[2:100] = RNG.integers(-2 ** 20, 2 ** 20, (98, 4))
    scale = np.float32([1e-4, 3.3e-3, 0.5, 1e-9])
    for dtype, zp in ((np.uint8, 0), (np.int8, -128), (np.int8, 5)):
        for relu in (False, True):
            want = M._requant(acc, scale, zp, dtype=dtype, relu=relu)
            got = M.requant_f32(acc.astype(np.float64), scale, zp, dtype=dtype, relu=relu)
            assert got.dtype == want.dtype and np.array_equal(got, want)


# -- depthwise and grouped convs (OnnxIntGraph._run_conv's groups) ------------------------------------------
def _conv_int64(x: np.ndarray, w: np.ndarray, groups: int, stride: int) -> np.ndarray:
    """Straightforward grouped conv: x (B, H, W, C) int64 (already padded), w (M, C/groups, KH, KW) -> (B, OH, OW, M)."""
    b, h, wd, c = x.shape
    m, cg, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((b, oh, ow, m), np.int64)
    mg = m // groups
    for o in range(m):
        g = o // mg
        for i in range(kh):
            for j in range(kw):
                patch = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, g * cg:(g + 1) * cg]
                out[..., o] += patch @ w[o, :, i, j].astype(np.int64)
    return out


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("span", [3, 255])  # 2-bit inputs (float32 path) and 8-bit extremes (float64 path)
def test_exact_depthwise_equals_int64(stride, span):
    c = 24
    x = RNG.integers(-span, span + 1, (2, 9, 9, c))
    w = RNG.integers(-127, 128, (3, 3, c))
    w[..., 0] = 127  # a channel at the extreme
    x[0, ..., 0] = span
    acc, (oh, ow) = G.exact_depthwise(x.astype(np.float32), w, (stride, stride), dilation=(1, 1), bound=span)
    ref = _conv_int64(x, w.transpose(2, 0, 1)[:, None], c, stride)  # (B, OH, OW, C)
    assert acc.dtype == (np.float32 if G.sum_bound(w.reshape(9, c), span) < G.F32_EXACT else np.float64)
    assert np.array_equal(acc.astype(np.int64), ref.reshape(-1, c)) and (oh, ow) == ref.shape[1:3]


def test_grouped_and_depthwise_convs_in_the_executor_equal_int64():
    from devices._intexec_onnx import OnnxIntGraph

    x = RNG.integers(0, 256, (2, 7, 7, 8)).astype(np.float32)  # zero point removed, 8 channels
    for groups, cg in ((8, 1), (2, 4), (4, 2)):
        w = RNG.integers(-127, 128, (8, cg, 3, 3)).astype(np.int8)
        if cg == 1:
            acc, _, _ = OnnxIntGraph._depthwise(x, w, (1, 1), dilation=(1, 1), span=255)
        else:
            parts = [OnnxIntGraph._conv_gemm(x[..., i * cg:(i + 1) * cg], w[i * (8 // groups):(i + 1) * (8 // groups)],
                                             np.uint8, xz=0, stride=(1, 1), dilation=(1, 1), span=255,
                                             semantics="single")[0] for i in range(groups)]
            acc = np.concatenate(parts, axis=1)
        ref = _conv_int64(x.astype(np.int64), w, groups, 1)
        assert np.array_equal(acc.astype(np.int64), ref.reshape(-1, 8)), groups


def test_depthwise_never_saturates_where_a_pair_would():
    """u8 255 x s8 127 in every tap: an AVX2 int16 pair would clamp, MLAS's depthwise kernels widen (exact)."""
    from devices._intexec_onnx import OnnxIntGraph

    x = np.full((1, 3, 3, 16), 255, np.float32)
    w = np.full((16, 1, 3, 3), 127, np.int8)
    acc, _, _ = OnnxIntGraph._depthwise(x, w, (1, 1), dilation=(1, 1), span=255)
    assert np.all(acc == 9 * 255 * 127)


# -- _intexec_f32 (float-mlas: MLAS's float32 SGEMM order) -----------------------------------------------------
def test_fma_step_rounds_once_where_float64_lands_on_a_float32_midpoint():
    from devices._intexec_f32 import _fma_step

    # acc = 1 + 2^-23, p = (1 + 2^-23)(2^-24 - 2^-47) = 2^-24 - 2^-70: the exact sum 1 + 3 * 2^-24 - 2^-70 is just
    # below the float32 midpoint 1 + 3 * 2^-24, so fma gives 1 + 2^-23; float64 first rounds onto the midpoint,
    # whose half-to-even float32 is 1 + 2^-22. Second column: p = 2^-24 exactly, a true tie (half to even).
    a, b = np.float32(1 + 2 ** -23), np.float32(2 ** -24 - 2 ** -47)
    p = np.array([[np.float64(a) * np.float64(b), 2.0 ** -24]])
    acc = np.array([[a, np.float32(1)]], np.float32)
    assert np.float32(p[0, 0] + np.float64(acc[0, 0])) == np.float32(1 + 2 ** -22)  # plain double rounding
    _fma_step(p, acc, np.empty((1, 2)), bits=np.empty((1, 2), np.int64))
    assert acc[0, 0] == np.float32(1 + 2 ** -23) and acc[0, 1] == np.float32(1)


def test_fma_gemm_matches_an_exact_fma_chain():
    from fractions import Fraction

    from devices._intexec_f32 import fma_gemm

    at, w = RNG.standard_normal((20, 3)).astype(np.float32), RNG.standard_normal((20, 2)).astype(np.float32)
    got = fma_gemm(at, w, [(0, 12), (12, 20)])  # (3, 2): two K blocks, the second added as fl32(acc + C)

    def fl32(q: Fraction) -> np.float32:  # correctly rounded: float64 of a Fraction is exact-then-round only once
        f = np.float32(float(q))  # may double-round; fix by comparing neighbours exactly
        lo, hi = np.nextafter(f, np.float32(-np.inf)), np.nextafter(f, np.float32(np.inf))
        return min((lo, f, hi), key=lambda c: (abs(Fraction(float(c)) - q), int(np.float32(c).view(np.int32)) & 1))

    for r in range(3):
        for m in range(2):
            c = None
            for k0, k1 in ((0, 12), (12, 20)):
                acc = np.float32(0)
                for k in range(k0, k1):
                    acc = fl32(Fraction(float(at[k, r])) * Fraction(float(w[k, m])) + Fraction(float(acc)))
                c = acc if c is None else fl32(Fraction(float(acc)) + Fraction(float(c)))
            assert got[r, m] == c


@pytest.mark.parametrize("n, k, blocks", [(1024, 27, [(0, 27)]), (1024, 144, [(0, 128), (128, 144)]),
                                          (256, 288, [(0, 128), (128, 256), (256, 288)]),
                                          (64, 576, [(0, 256), (256, 512), (512, 576)]), (10, 64, [(0, 64)])])
def test_k_blocks_follow_mlas_sgemm_strides(n, k, blocks):
    from devices._intexec_f32 import k_blocks

    assert k_blocks(n, k) == blocks  # resnet20's stem, stages 1-3 (N output pixels) and its 10-way Gemm
