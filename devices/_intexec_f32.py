"""ONNX Runtime with graph optimizations off (ORT_DISABLE_ALL), node by node, in numpy: the "float-mlas" semantics.

    outs, ints = run_float_mlas(OnnxIntGraph("w8.onnx"), x, keep_ints=True)   # x: (B, 3, H, W) float32 in [0, 1]
    y = mlas_conv(x, w, b, attrs=attrs)  # ORT's float32 Conv<float> (MLAS SGEMM) bit for bit, (B, M, OH, OW)

Unfused, a QDQ graph runs DequantizeLinear -> float32 Conv / Gemm -> [Relu ->] QuantizeLinear, so its integer
activations depend on how MLAS rounds the float convolution. Every other node is the float32 op that
OnnxIntGraph._float_op already runs as ORT does; Conv and Gemm are modelled here, single-threaded
(intra_op_num_threads = 1, as eval.exactness and export.onnx.ort_run run ORT). From the sources of
microsoft/onnxruntime (core/providers/cpu/nn/conv.cc, math/gemm.cc, core/mlas/lib/convolve.cpp, sgemm.cpp,
x86_64/FgemmKernelCommon.h, FgemmKernelAvx512FCommon.h, FgemmKernelFma3Common.h, SgemmKernelM1TransposeBAvx.S):

- Conv<float> -> MlasConvPrepare / MlasConv. Every algorithm it picks (GemmDirect for a 1x1 stride-1 conv,
  ExpandThenGemm when filters > output pixels, else ExpandThenGemmSegmented) ends in MlasSgemmOperation on
  M = filters, N = output pixels of one image, K = C/group * KH * KW in NCHW im2col order (c, ky, kx); padding
  is a 0.0 column entry. K is cut into blocks by the stride rule of MlasSgemmOperation (same in MlasConvOperation):
  StrideN = StrideK = 128; if N >= K, halve StrideK (doubling StrideN) while StrideK / 2 >= K; else double StrideK
  (halving StrideN) while StrideN > 16 and StrideN / 2 >= N. (MlasConvOperation's per-block MlasSgemmOperation
  has N <= the segment's StrideN and K <= its StrideK, so it never cuts further.)
- The SGEMM kernels (AVX-512F and FMA3 alike: one accumulator per output, zeroed, one vfmadd231ps per k in
  order) give each block's sum as a chain of float32 FMAs acc = fma(a_k, w_k, acc) from 0; the first block is
  stored as acc * alpha (ZeroMode), each later one as fma(acc, alpha, C): with alpha = 1, C = fl32(acc + C).
- Conv bias: MlasActivation (Identity) after the GEMM, fl32(C + b[m]). Gemm bias (gemm.cc ComputeGemm): broadcast
  into Y first, then MlasGemm with beta = 1, so it is the C of the first block: fl32(acc + b).
- Gemm with one row (M = 1, a batch of one image) takes MlasSgemmKernelM1TransposeBAvx (transB) instead: 8 lanes
  of non-fused mul + add over k = j mod 8, reduced per group of 4 / 2 / 1 output columns as _m1_reduce spells out.
- Threads: with more than one, MLAS splits a convolution only by (image, group) when the batch is > 1, which
  keeps every element's order; a batch of one image or a threaded MlasGemm splits N, which can change StrideK.
  Only the single-threaded order is modelled (measured: 2 or 4 threads change a few integers of one image only).
- x86-64 with FMA3 (every AVX2 CPU) or AVX-512F; the SSE / AVX kernels of older CPUs (mul + add) and ARM are not
  modelled. Checked: tests/ort/test_intexec_onnx.py (native AVX-512 and qemu -cpu Haswell) and eval.exactness.

A float32 product is exact in float64, so each FMA is float64 p + acc rounded to float32; that double rounding
differs from one rounding only where the float64 sum is exactly a float32 midpoint, which _fma_step detects
(bit test) and resolves with the exact TwoSum residual. Values below float32's normal range are not modelled.
"""

from __future__ import annotations

import numpy as np

SGEMM_STRIDE = 128  # MLAS_SGEMM_STRIDEN = MLAS_SGEMM_STRIDEK (mlasi.h): the K-block rule starts from both
_LOW29 = np.int64((1 << 29) - 1)  # float64 fraction bits below float32's 23 (52 - 23 = 29)
_MID = np.int64(1 << 28)  # ... equal to 100..0 exactly when a float64 lies halfway between two float32
_CHUNK = 1 << 16  # output elements (rows x filters) per FMA-chain pass: ~0.5 MB float64 buffers stay in cache
M1_LANES = 8  # MlasSgemmKernelM1TransposeBAvx: one ymm register of float32 partial sums per output column


def k_blocks(n: int, k: int) -> list[tuple[int, int]]:
    """MlasSgemmOperation's K blocks [k0, k1) for an (M, K) x (K, N) product (TransA = NoTrans)."""
    stride_n = stride_k = SGEMM_STRIDE
    if n >= k:
        while stride_k // 2 >= k:
            stride_n, stride_k = stride_n * 2, stride_k // 2
    else:
        while stride_n > 16 and stride_n // 2 >= n:
            stride_n, stride_k = stride_n // 2, stride_k * 2
    return [(k0, min(k, k0 + stride_k)) for k0 in range(0, k, stride_k)]


def _fma_step(p: np.ndarray, acc: np.ndarray, s: np.ndarray, *, bits: np.ndarray) -> None:
    """acc = fma(a, w, acc) for p = a * w (float64, exact): acc (float32, C-contiguous) in place; s (float64) and
    bits (int64) are scratch of acc's shape."""
    np.add(p, acc, out=s)  # p + acc rounded once to float64
    np.bitwise_and(s.view(np.int64), _LOW29, out=bits)
    mid = np.flatnonzero(bits == _MID)  # s halfway between two float32: the float64 rounding may have decided it
    if len(mid):
        pm, am, sm = p.reshape(-1)[mid], acc.reshape(-1)[mid].astype(np.float64), s.reshape(-1)[mid]
        bb = sm - pm
        err = (pm - (sm - bb)) + (am - bb)  # TwoSum (Knuth): p + acc - s exactly
        fix = err != 0  # not a true tie: round toward the exact value's side
        fixed = np.nextafter(sm[fix], np.copysign(np.inf, err[fix])).astype(np.float32)
    np.copyto(acc, s, casting="same_kind")  # float64 -> float32, round half to even
    if len(mid):
        acc.reshape(-1)[mid[fix]] = fixed


def fma_gemm(at: np.ndarray, w: np.ndarray, blocks: list[tuple[int, int]], *, c0: np.ndarray | None = None
             ) -> np.ndarray:
    """MLAS SGEMM element by element: at (K, R) float32 (the rows' K values: A transposed, or im2col columns), w
    (K, M) float32 -> (R, M) float32. Each block of `blocks` is an FMA chain from 0 in k order, added to C as
    fl32(acc + C); C starts as `c0` (M,) (Gemm's broadcast bias, beta = 1) or, without it, as the first block."""
    k, r = at.shape
    m = w.shape[1]
    out = np.empty((r, m), np.float32)
    w64 = w.astype(np.float64)  # (K, M) float32 values, so every product below is exact
    step = max(1, _CHUNK // max(m, 1))  # rows per pass
    for r0 in range(0, r, step):
        a64 = at[:, r0:r0 + step].astype(np.float64)  # (K, R')
        rows = a64.shape[1]
        acc, p = np.empty((rows, m), np.float32), np.empty((rows, m))
        s, bits = np.empty((rows, m)), np.empty((rows, m), np.int64)
        c = None if c0 is None else np.broadcast_to(np.asarray(c0, np.float32), (rows, m))
        for k0, k1 in blocks:
            acc.fill(0)
            for i in range(k0, k1):
                np.multiply(a64[i][:, None], w64[i], out=p)  # (R', M) exact float32 products
                _fma_step(p, acc, s, bits=bits)
            c = acc.copy() if c is None else acc + c  # ZeroMode store, else vfmadd213ps acc * 1 + C
        out[r0:r0 + rows] = c
    return out


def _im2col_nchw(x: np.ndarray, kh: int, kw: int, *, stride, dilation) -> tuple[np.ndarray, tuple[int, int]]:
    """(B, C, H', W') padded float32 -> ((C*KH*KW, B*OH*OW) columns in MLAS's (c, ky, kx) K order, (OH, OW))."""
    b, c, h, w = x.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    x = np.ascontiguousarray(x, np.float32)
    sb, sc, sy, sx = x.strides
    view = np.lib.stride_tricks.as_strided(  # (C, KH, KW, B, OH, OW), no copy
        x, (c, kh, kw, b, oh, ow), (sc, sy * dh, sx * dw, sb, sy * sh, sx * sw), writeable=False)
    return view.reshape(c * kh * kw, b * oh * ow), (oh, ow)  # the one copy


def mlas_conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, *, attrs: dict) -> np.ndarray:
    """ORT Conv<float> (2-D): x (B, C, H, W), w (M, C/group, KH, KW), bias (M,) float32 -> (B, M, OH, OW) float32."""
    if len(w.shape) != 4:
        raise _err(f"float-mlas models 2-D Conv only, not a {len(w.shape) - 2}-D kernel; run it under ORT instead")
    m, cg, kh, kw = w.shape
    groups = int(attrs.get("group", 1))
    pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
    stride, dilation = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    xp = np.pad(np.asarray(x, np.float32), ((0, 0), (0, 0), (pt, pb), (pl, pr)))  # im2col's 0.0 pads
    mg, parts = m // groups, []
    for g in range(groups):  # one MlasSgemmOperation per (image, group): M = filters of the group
        cols, (oh, ow) = _im2col_nchw(xp[:, g * cg:(g + 1) * cg], kh, kw, stride=stride, dilation=dilation)
        wg = w[g * mg:(g + 1) * mg].reshape(mg, cg * kh * kw).T  # (K, Mg)
        parts.append(fma_gemm(cols, np.asarray(wg, np.float32), k_blocks(oh * ow, cg * kh * kw)))  # (B*OH*OW, Mg)
    y = parts[0] if groups == 1 else np.concatenate(parts, axis=1)  # (B*OH*OW, M)
    if bias is not None:  # MlasActivation (Identity) with bias, after the GEMM
        y = y + np.asarray(bias, np.float32)
    return y.reshape(x.shape[0], oh, ow, m).transpose(0, 3, 1, 2)


def mlas_gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, *, attrs: dict) -> np.ndarray:
    """ORT Gemm<float> (alpha = 1, beta = 1 or no C, C a row vector): a (M, K), b (K, N) or (N, K) with transB."""
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if attrs.get("transA", 0) or alpha != 1.0 or (c is not None and beta != 1.0):
        raise _err(f"float-mlas models Gemm with transA = 0, alpha = 1 and beta = 1, not {attrs}; "
                   "re-export with a plain Linear layer (export.onnx) or run it under ORT instead")
    trans_b = bool(attrs.get("transB", 0))
    bk = np.asarray(b, np.float32).T if trans_b else np.asarray(b, np.float32)  # (K, N)
    n = bk.shape[1]
    bias = None if c is None else np.broadcast_to(np.asarray(c, np.float32).reshape(-1), (n,))
    if a.shape[0] == 1 or n == 1:  # MlasSgemmOperation's M = 1 / N = 1 kernels
        if a.shape[0] == 1 and trans_b and n > 1:
            return _m1_transb(np.asarray(a[0], np.float32), np.asarray(b, np.float32), bias)[None]
        raise _err(f"float-mlas does not model MLAS's M = 1 kernel for a ({a.shape}) x ({bk.shape}) Gemm "
                   "without transB or with one column; run it under ORT instead")
    return fma_gemm(np.asarray(a, np.float32).T, bk, k_blocks(n, bk.shape[0]), c0=bias)


def _m1_transb(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """MlasSgemmKernelM1TransposeBAvx: a (K,) . b (N, K) -> (N,) float32; lane j sums fl32(a_k * b_k) for
    k = j mod 8 (vmulps then vaddps, masked tail = 0), then _m1_reduce, then + C (the bias, or 0 for beta = 0)."""
    k = a.shape[0]
    kp = -(-k // M1_LANES) * M1_LANES
    a8 = np.pad(a, (0, kp - k)).reshape(-1, M1_LANES)  # (K/8, 8)
    b8 = np.pad(b, ((0, 0), (0, kp - k))).reshape(b.shape[0], -1, M1_LANES)  # (N, K/8, 8)
    lanes = np.zeros((b.shape[0], M1_LANES), np.float32)
    for i in range(a8.shape[0]):
        lanes = lanes + a8[i] * b8[:, i]  # float32 product, then float32 sum
    n = b.shape[0]
    width = [4] * (n // 4) + [w for w in (2, 1) if n % 4 & w]  # the kernel's 4-, 2- and 1-column groups
    starts = np.cumsum([0] + width)
    out = np.concatenate([_m1_reduce(lanes[s:s + w], w) for s, w in zip(starts, width)])
    return out if bias is None else out + bias


def _m1_reduce(l: np.ndarray, width: int) -> np.ndarray:
    """The kernel's horizontal sums of (width, 8) lanes: 4 columns by unpck + 3 adds per 128-bit half, 2 by
    unpck + add + movhlps, 1 by two vhaddps; then low half + high half. float32 throughout."""
    c = [l[:, j] for j in range(M1_LANES)]
    if width == 4:
        return (((c[0] + c[1]) + c[2]) + c[3]) + (((c[4] + c[5]) + c[6]) + c[7])
    if width == 2:
        return ((c[2] + c[0]) + (c[6] + c[4])) + ((c[3] + c[1]) + (c[7] + c[5]))
    return ((c[0] + c[1]) + (c[2] + c[3])) + ((c[4] + c[5]) + (c[6] + c[7]))


def run_float_mlas(graph, x: np.ndarray, keep_ints: bool = False
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every node of an OnnxIntGraph in order, unfused, as ORT_DISABLE_ALL runs it: Conv and Gemm here, the rest by
    graph._float_op (DequantizeLinear, QuantizeLinear, Add, Relu, GlobalAveragePool, ...). Returns
    ({output: array}, {integer activation: array} if keep_ints else {})."""
    env = dict(graph.const)
    env[graph.input_name] = np.asarray(x, np.float32)
    for n in graph.nodes:
        if n.output[0] in graph.const:  # folded at load: weights' Clip and DequantizeLinear, shape arithmetic
            continue
        ins = [env.get(i) for i in n.input]
        if n.op_type in ("Conv", "Gemm"):
            op = mlas_conv if n.op_type == "Conv" else mlas_gemm
            outs = [op(ins[0], ins[1], ins[2] if len(ins) > 2 else None, attrs=graph._attr(n))]
        else:
            outs = graph._float_op(n, ins)
        env.update(zip(n.output, outs))
    return {k: env[k] for k in graph.output_names}, ({k: env[k] for k in graph.int_names} if keep_ints else {})


def _err(msg: str):
    from devices._runner import RunnerError

    return RunnerError(msg)
