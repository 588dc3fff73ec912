"""The data-movement ops of devices/_intexec_tflite.py: PAD, PADV2, STRIDED_SLICE, CONCATENATION, MAX_POOL_2D.

    y = _OPS["MAX_POOL_2D"](graph, semantics, args, input tensors, output tensor, options)

None of them rounds, so every kernel set computes the same integers and the semantics is not read: PAD fills
with the output zero point (reference/pad.h), PADV2 with its constant; CONCATENATION copies operands that
all share the output's scale and zero point (concatenation.cc refuses anything else on int8, and so does
this); MAX_POOL_2D takes the max of each window, clipped to the input under SAME (reference/integer_ops/
pooling.h MaxPool: padded taps are left out, the window origin at -pad_top / -pad_left of
ComputePaddingHeightWidth), then clamps to the fused activation's range.
"""

from __future__ import annotations

import numpy as np

from devices._intexec_round import _FIX
from devices._runner import RunnerError


def _pad(g, sem, args, *, tin, out, opt):
    pads = args[1].astype(np.int64)  # (rank, 2)
    fill = out.zp0 if out.quantized else 0  # quantized PAD fills with the output zero point
    return _filled(args[0], pads, fill)


def _padv2(g, sem, args, *, tin, out, opt):
    """PAD with the constant of its third input (a stored integer for a quantized tensor)."""
    fill = args[2].reshape(-1)[0] if len(args) > 2 and args[2] is not None else (out.zp0 if out.quantized else 0)
    return _filled(args[0], args[1].astype(np.int64), fill)


def _filled(x: np.ndarray, pads: np.ndarray, fill) -> np.ndarray:
    y = np.full([d + int(p0) + int(p1) for d, (p0, p1) in zip(x.shape, pads)], fill, x.dtype)
    y[tuple(slice(int(p0), int(p0) + d) for d, (p0, _) in zip(x.shape, pads))] = x
    return y


def _strided_slice(g, sem, args, *, tin, out, opt):
    if opt.ellipsisMask or opt.newAxisMask or opt.shrinkAxisMask or getattr(opt, "offset", False):
        raise RunnerError(f"STRIDED_SLICE with ellipsis/new-axis/shrink/offset masks is not implemented; {_FIX}")
    x, begin, end, strides = args
    idx = tuple(slice(None if opt.beginMask >> d & 1 else int(begin[d]), None if opt.endMask >> d & 1 else int(end[d]),
                      int(strides[d])) for d in range(x.ndim))
    return x[idx]


def _concatenation(g, sem, args, *, tin, out, opt):
    """np.concatenate of operands quantized as the output (concatenation.cc's int8 precondition)."""
    if g._act.get(opt.fusedActivationFunction or 0, "NONE") != "NONE":
        raise RunnerError(f"CONCATENATION with a fused activation is not implemented; {_FIX}")
    if out.quantized and any(t.scale.tolist() != out.scale.tolist() or t.zp0 != out.zp0 for t in tin):
        raise RunnerError(f"CONCATENATION of {out.name}: operands quantized unlike the output, which LiteRT "
                          f"refuses on int8; requantize them first; {_FIX}")
    return np.concatenate([a.astype(args[0].dtype, copy=False) for a in args], axis=int(opt.axis))


def _max_pool2d(g, sem, args, *, tin, out, opt):
    x = args[0]  # (N, H, W, C)
    if x.dtype.kind != "i":
        raise RunnerError(f"float MAX_POOL_2D is not implemented; {_FIX}")
    kh, kw, sh, sw = opt.filterHeight, opt.filterWidth, opt.strideH, opt.strideW
    (t, b), (l, r) = ((0, 0), (0, 0)) if g._pad[opt.padding] != "SAME" else (
        _same(x.shape[1], kh, sh), _same(x.shape[2], kw, sw))
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=np.iinfo(x.dtype).min)  # never the max
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    y = np.max([xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i in range(kh) for j in range(kw)],
               axis=0)  # (N, Ho, Wo, C)
    return np.clip(y, *g._clamp_range(out, opt.fusedActivationFunction))


def _same(n: int, k: int, s: int) -> tuple[int, int]:
    """SAME padding of one axis (the extra one on the far side): (before, after)."""
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


OPS = {"PAD": _pad, "PADV2": _padv2, "STRIDED_SLICE": _strided_slice, "CONCATENATION": _concatenation,
       "MAX_POOL_2D": _max_pool2d}
