"""A numpy-only integer executor for the full-integer .tflite graphs of export.tflite, with named semantics.

    g = TfliteIntGraph("r20.tflite")
    outs, ints = g.run(pixels, "double", keep_ints=True)   # pixels: float32 (B, H, W, 3) in [0, 1]

Every integer op accumulates exactly (float32 / float64 sums proven exact, devices/_intexec_gemm.py, or int64)
and then requantizes the way one LiteRT kernel set does:

"double"  TFLite's builtin kernels (tensorflow/lite/kernels/internal/reference/integer_ops/conv.h,
          depthwise_conv.h, fully_connected.h, add.h; reference/reduce.h QuantizedMeanOrSum;
          reference/quantize.h AffineQuantize, requantize.h, dequantize.h). Scales become an int32
          multiplier and a shift (quantization_util.cc QuantizeMultiplier, computed in double), applied
          by common.h MultiplyByQuantizedMultiplier = SaturatingRoundingDoublingHighMul then
          RoundingDivideByPOT (gemmlowp fixedpoint.h: two roundings, halves away from zero). ADD
          rescales both inputs by 2^20 and per-input multipliers (add.cc PrepareInt8AddSub); the
          per-channel FULLY_CONNECTED (16x8 and int8) takes the int64 MultiplyByQuantizedMultiplier (one
          rounding, halves up; measured on the int8 one, see _fully_connected).
"single"  XNNPACK, LiteRT's default delegate. Convolutions requantize once in fp32: scale =
          input_scale * kernel_scale[c] / output_scale in float (src/operators/convolution-nhwc.c),
          y = rint(float(acc) * scale) + zp, round half to even (the qs8-qc8w "fp32" microkernels,
          src/xnnpack/requantization.h); so does the int8 FULLY_CONNECTED. QUANTIZE: rint(x * (1.0f /
          scale)) + zp (f32-qs8-vcvt). ADD: 20-bit fixed-point multipliers of a_scale / out_scale, floor shift
          (microparams-init.c xnn_init_qs8_add_minmax_scalar_params, qs8-vadd). MEAN: int32 sum, then
          rint(sum * s + zp') in float (operators/reduce-nd.c, reference/unary-elementwise.cc).
          Ops XNNPACK does not take on int8/int16 (MINIMUM/MAXIMUM, the int16 QUANTIZE,
          the 16x8 FULLY_CONNECTED, DEQUANTIZE) run on the builtin kernels under LiteRT's AUTO resolver, so
          "single" runs them as "double" does.

"double-ruy" (BUILTIN_X86, not in SEMANTICS) models the builtin *optimized* kernels on x86
          (BUILTIN_WITHOUT_DEFAULT_DELEGATES): "double" except the final shift of CONV_2D and of the int8
          FULLY_CONNECTED (srdhm, then a shift that ruy rounds halves toward +inf); and int8 ADD, whose
          optimized kernel (optimized/integer_ops/add.h, the NEON path, which x86 builds run through
          NEON_2_SSE) shifts each input left by left_shift + input_shift before
          SaturatingRoundingDoublingHighMul instead of rounding the input shift afterwards as the
          reference add.h does (measured: 14,511 of 82M resnet20 w8a8 integers differ without it, 0 with it).

Float ops (SUB, DIV of the normalisation) are float32 element-wise, as every kernel set computes them; the
data-movement ops (PAD, PADV2, STRIDED_SLICE, CONCATENATION, MAX_POOL_2D: devices/_intexec_tflite_move.py)
do not round, so every kernel set moves the same integers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devices._intexec_gemm import conv_nhwc, pad_nhwc, storage_span, sum_bound, with_bias
from devices._intexec_lut import LUT_DTYPES, binary_lut, channel_lut
from devices._intexec_tflite_move import OPS as MOVE_OPS  # PAD, PADV2, STRIDED_SLICE, CONCATENATION, MAX_POOL_2D
from devices._intexec_round import (  # noqa: F401 - the rounding primitives, re-exported
    _I32_MAX, _I32_MIN, _FIX, mbqm, mbqm64, quantize_multiplier, rdbpot, rdbpot_half_up, requant_fixed, rint_f32,
    round_away, srdhm)
from devices._runner import RunnerError

SEMANTICS = ("single", "double")
# Private extra: TFLite's builtin *optimized* kernels on x86 (BUILTIN_WITHOUT_DEFAULT_DELEGATES). Their
# CONV_2D runs on ruy, whose rounding right shift rounds halves toward +inf, not away from zero, so it
# departs from "double" on negative ties (measured: 1.6% of an unclamped 4-bit conv output).
BUILTIN_X86 = "double-ruy"
_QMIN = {"INT8": -128, "INT16": -32768, "INT32": _I32_MIN}  # storage ranges of quantized tensors
_QMAX = {"INT8": 127, "INT16": 32767, "INT32": _I32_MAX}
_NP = {"INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FLOAT32": np.float32,
       "UINT8": np.uint8}


# -- graph ----------------------------------------------------------------------------------------------
class _Tensor:
    def __init__(self, t, buffers, types):
        self.name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        self.type = types[t.type]
        qp = t.quantization
        self.scale = np.asarray(qp.scale if qp is not None and qp.scale is not None else [], np.float32)
        self.zp = np.asarray(qp.zeroPoint if qp is not None and qp.zeroPoint is not None else [], np.int64)
        self.quantized = self.scale.size > 0 and self.type in _QMIN
        buf = buffers[t.buffer] if t.buffer else None
        self.data = None
        if buf is not None and buf.data is not None and len(buf.data):
            shape = [int(d) for d in t.shape] if t.shape is not None else []
            self.data = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), _NP[self.type]).reshape(shape)
        elif buf is not None and (buf.offset or 0) > 1:
            raise RunnerError(f"tensor {self.name}: external (offset) buffers are not supported; {_FIX}")

    @property
    def zp0(self) -> int:
        return int(self.zp[0]) if self.zp.size else 0


class TfliteIntGraph:
    """A parsed full-integer .tflite (first subgraph), replayed in numpy under a named semantics."""

    def __init__(self, model: str | Path | bytes):
        from ai_edge_litert import schema_py_generated as S

        data = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
        m = S.ModelT.InitFromObj(S.Model.GetRootAsModel(bytes(data), 0))
        sg = m.subgraphs[0]
        opnames = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
        self._act = {v: k for k, v in vars(S.ActivationFunctionType).items() if not k.startswith("_")}
        self._pad = {v: k for k, v in vars(S.Padding).items() if not k.startswith("_")}
        types = {v: k for k, v in vars(S.TensorType).items() if not k.startswith("_")}
        self.tensors = [_Tensor(t, m.buffers, types) for t in sg.tensors]
        self.ops = []  # (kind, inputs, outputs, options)
        for o in sg.operators:
            oc = m.operatorCodes[o.opcodeIndex]
            kind = opnames.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "CUSTOM")
            if kind not in _OPS:
                raise RunnerError(f"op {kind} is not implemented by the numpy integer executor "
                                  f"(it runs {sorted(_OPS)}); {_FIX}")
            self.ops.append((kind, list(o.inputs), list(o.outputs), o.builtinOptions))
        self._in, self._out = int(sg.inputs[0]), [int(i) for i in sg.outputs]
        if len(sg.inputs) != 1:
            raise RunnerError(f"the graph has {len(sg.inputs)} inputs; the executor takes one; {_FIX}")
        self.input_name = self.tensors[self._in].name
        sig = sg.tensors[self._in].shapeSignature
        dims = sig if sig is not None and len(sig) else sg.tensors[self._in].shape
        self.input_shape = tuple(None if int(d) < 0 else int(d) for d in dims)  # (None, H, W, 3): None = dynamic
        self.output_names = [self.tensors[i].name for i in self._out]

    def run(self, x: np.ndarray, semantics: str = "double", *, keep_ints: bool = False
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """x: the model's input as LiteRT takes it (export.tflite artifacts: float32 NHWC in [0,1]).

        Returns ({output name: array}, {tensor name: int8/int16/int32 array of every quantized
        intermediate tensor} if keep_ints else {}).
        """
        if semantics not in SEMANTICS + (BUILTIN_X86,):
            raise RunnerError(f"semantics {semantics!r}: choose from {SEMANTICS}")
        t_in = self.tensors[self._in]
        x = np.asarray(x)
        if x.dtype != _NP[t_in.type]:
            raise RunnerError(f"input {t_in.name!r} has dtype {x.dtype}, expected {np.dtype(_NP[t_in.type])}")
        vals: dict[int, np.ndarray] = {self._in: x}
        for kind, ins, outs, opt in self.ops:
            args = [vals[i] if i in vals else self.tensors[i].data if i >= 0 else None for i in ins]
            tin = [self.tensors[i] if i >= 0 else None for i in ins]
            y = _OPS[kind](self, semantics, args, tin=tin, out=self.tensors[outs[0]], opt=opt)
            vals[outs[0]] = y.astype(_NP[self.tensors[outs[0]].type], copy=False)
        outputs = {self.tensors[i].name: vals[i] for i in self._out}
        ints = {self.tensors[i].name: v for i, v in vals.items()
                if keep_ints and i != self._in and self.tensors[i].quantized} if keep_ints else {}
        return outputs, ints

    def _clamp_range(self, out: _Tensor, act: int) -> tuple[int, int]:
        """CalculateActivationRangeQuantized (kernel_util.cc): fused activation bounds in stored integers."""
        lo, hi = _QMIN[out.type], _QMAX[out.type]
        q = lambda f: out.zp0 + int(round_away(np.float32(f) / out.scale[0]))  # noqa: E731
        name = self._act.get(act or 0, "NONE")
        if name == "RELU":
            return max(lo, q(0.0)), hi
        if name == "RELU6":
            return max(lo, q(0.0)), min(hi, q(6.0))
        if name == "RELU_N1_TO_1":
            return max(lo, q(-1.0)), min(hi, q(1.0))
        if name != "NONE":
            raise RunnerError(f"fused activation {name} is not implemented; {_FIX}")
        return lo, hi


# -- ops: each (graph, semantics, args, input tensors, output tensor, options) -> array ------------------
def _requant(sem: str, acc: np.ndarray, s_in: np.float32, *, s_w: np.ndarray, out: _Tensor, lo: int, hi: int,
             ruy: bool = False, bound: int | None = None):
    """Per-channel requantization of an integer accumulator (..., C), held in any numeric dtype (|acc| <= bound
    where known), into out's integers (float or int64 values in [lo, hi])."""
    if sem != "single":  # conv.cc PopulateConvolutionQuantizationParams: double effective scale
        qs = [quantize_multiplier(float(s_in) * float(w) / float(out.scale[0])) for w in s_w]
        q, shift = np.array([q for q, _ in qs], np.int64), np.array([s for _, s in qs], np.int64)
        # ruy (ruy and BUILTIN_X86): the same high mul, then halves toward +inf; else mbqm
        y = requant_fixed(acc, q, shift, bound=bound, half_up=ruy and sem == BUILTIN_X86)
    else:  # convolution-nhwc.c: float input_scale * kernel_scale / output_scale; rint = round half to even
        scale = (np.float32(s_in) * s_w.astype(np.float32)) / np.float32(out.scale[0])
        y = np.rint(np.multiply(acc, scale, dtype=np.float32))  # acc: float32 rounds once, as int -> float does
    y += y.dtype.type(out.zp0)  # beyond 2^24 (float32) the sum may round, but it is clamped away either way
    return np.clip(y, lo, hi, out=y)


def _same_pads(x: np.ndarray, k: tuple[int, int], s: int) -> tuple[int, int, int, int]:
    """SAME padding (TFLite: the extra row/column on the far side): (top, left, bottom, right)."""
    _, h, w, _ = x.shape  # (N, H, W, C)
    ph = max((-(-h // s) - 1) * s + k[0] - h, 0)
    pw = max((-(-w // s) - 1) * s + k[1] - w, 0)
    return ph // 2, pw // 2, ph - ph // 2, pw - pw // 2


def _padded(g, x: np.ndarray, xt: _Tensor, *, kh: int, kw: int, opt) -> np.ndarray:
    """x - zp (conv.h: input_offset = -zero_point) after SAME/VALID padding: (N, H', W', C) float32 integers."""
    if (opt.dilationHFactor or 1) != 1 or (opt.dilationWFactor or 1) != 1 or opt.strideH != opt.strideW:
        raise RunnerError(f"dilated or anisotropic-stride convolution is not implemented; {_FIX}")
    same = g._pad[opt.padding] == "SAME"
    return pad_nhwc(x, xt.zp0, _same_pads(x, (kh, kw), opt.strideH) if same else (0, 0, 0, 0))


def _windows(g, x: np.ndarray, xt: _Tensor, *, kh: int, kw: int, opt):
    """(N, Ho, Wo, C) views of x - zp, one per kernel tap (kh, kw), after SAME/VALID padding."""
    s = opt.strideH
    x = _padded(g, x, xt, kh=kh, kw=kw, opt=opt)
    ho, wo = (x.shape[1] - kh) // s + 1, (x.shape[2] - kw) // s + 1
    return {(i, j): x[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] for i in range(kh) for j in range(kw)}


def _conv2d(g, sem, args, *, tin, out, opt):
    x, w, b = args[0], args[1], args[2]  # w: (Cout, KH, KW, Cin)
    xc = _padded(g, x, tin[0], kh=w.shape[1], kw=w.shape[2], opt=opt)  # (N, H', W', Cin), zero point removed
    s, w4 = opt.strideH, w.transpose(1, 2, 3, 0)  # (KH, KW, Cin, Cout)
    span = storage_span(x.dtype, tin[0].zp0)  # |x - zp| <= span
    acc, (ho, wo) = conv_nhwc(xc, w4, (s, s), dilation=(1, 1), bound=span)  # (N*Ho*Wo, Cout), exact
    acc, bound = with_bias(acc, b, sum_bound(w4.reshape(-1, w.shape[0]), span))
    lo, hi = g._clamp_range(out, opt.fusedActivationFunction)
    return _requant(sem, acc.reshape(x.shape[0], ho, wo, -1), tin[0].scale[0], s_w=tin[1].scale, out=out, lo=lo,
                    hi=hi, ruy=True, bound=bound)


def _depthwise(g, sem, args, *, tin, out, opt):
    """A 1x1 stride-1 depthwise conv of int8 is a per-channel map of 256 values: one table (devices._intexec_lut)."""
    w = args[1]  # (1, KH, KW, C * multiplier)
    if w.shape[1:3] == (1, 1) and opt.strideH == opt.strideW == 1 and args[0].dtype in LUT_DTYPES:
        grid = lambda v: _depthwise_taps(  # noqa: E731
            g, sem, [v[None, :, None], *args[1:]], tin=tin, out=out, opt=opt)[0, :, 0]
        return channel_lut(lambda v: grid(v).astype(_NP[out.type]), args[0])
    return _depthwise_taps(g, sem, args, tin=tin, out=out, opt=opt)


def _depthwise_taps(g, sem, args, *, tin, out, opt):
    x, w, b = args[0], args[1].astype(np.int64), args[2]  # w: (1, KH, KW, C * multiplier)
    if (opt.depthMultiplier or 1) != 1 and w.shape[3] != x.shape[3]:
        raise RunnerError(f"depthwise multiplier {opt.depthMultiplier} is not implemented; {_FIX}")
    taps = _windows(g, x, tin[0], kh=w.shape[1], kw=w.shape[2], opt=opt)
    acc = sum(t.astype(np.int64) * w[0, i, j, :] for (i, j), t in taps.items())
    acc = acc + (b.astype(np.int64) if b is not None else 0)
    lo, hi = g._clamp_range(out, opt.fusedActivationFunction)
    return _requant(sem, acc, tin[0].scale[0], s_w=tin[1].scale, out=out, lo=lo, hi=hi)


def _fully_connected(g, sem, args, *, tin, out, opt):
    """fully_connected.h, per-channel (export.tflite writes every FC so), int8 or 16x8: exact accumulate, then
    BUILTIN_REF's int64 MultiplyByQuantizedMultiplier (one rounding, halves up) for both; the int8 optimized
    kernel (BUILTIN_X86) through ruy, as CONV_2D; XNNPACK's fp32 requantization for int8, builtin's for int16.
    Measured on a hidden w8a8 layer written without headroom: 186 of 6400 outputs differ under "double"'s two
    roundings from BUILTIN_REF, 172 under ruy's; none as here, against each kernel set."""
    x, w, b = args[0].astype(np.int64) - tin[0].zp0, args[1].astype(np.float64), args[2]  # w: (Cout, Cin)
    acc = (x.reshape(-1, w.shape[1]).astype(np.float64) @ w.T).astype(np.int64)  # (N, Cout), exact
    acc = acc + (b.astype(np.int64) if b is not None else 0)
    s_w = tin[1].scale if tin[1].scale.size > 1 else np.repeat(tin[1].scale, w.shape[0])
    qs = [quantize_multiplier(float(tin[0].scale[0]) * float(s) / float(out.scale[0])) for s in s_w]
    q, sh = np.array([v for v, _ in qs]), np.array([v for _, v in qs])
    lo, hi = g._clamp_range(out, opt.fusedActivationFunction)
    if tin[0].type == "INT16" or sem == "double":
        y = mbqm64(acc, q, sh)
    elif sem == BUILTIN_X86:
        y = requant_fixed(acc, q, sh, half_up=True)
    else:
        return _requant(sem, acc, tin[0].scale[0], s_w=s_w, out=out, lo=lo, hi=hi)
    return np.clip(y + out.zp0, lo, hi)


def _add(g, sem, args, *, tin, out, opt):
    """int8 + int8 is a function of 65536 value pairs: one table (devices._intexec_lut), filled by _add_ints."""
    if all(v.dtype in LUT_DTYPES for v in args):
        return binary_lut(lambda a, b: _add_ints(g, sem, [a, b], tin=tin, out=out, opt=opt).astype(_NP[out.type]),
                          *args)
    return _add_ints(g, sem, args, tin=tin, out=out, opt=opt)


def _add_ints(g, sem, args, *, tin, out, opt):
    a, b = (v.astype(np.int64) for v in args)
    lo, hi = g._clamp_range(out, opt.fusedActivationFunction if opt is not None else 0)
    if sem != "single":
        return np.clip(_add_tflite(a, b, tin[0], tb=tin[1], out=out, fold_shift=sem == BUILTIN_X86), lo, hi)
    return np.clip(_add_xnnpack(a, b, tin[0], tb=tin[1], out=out), lo, hi)


def _add_tflite(a, b, ta: _Tensor, *, tb: _Tensor, out: _Tensor, fold_shift: bool = False) -> np.ndarray:
    """add.cc PrepareInt8AddSub + integer_ops/add.h: inputs << 20, per-input multipliers, output multiplier.
    `fold_shift`: the optimized kernel's input scaling (see the module docstring, "double-ruy")."""
    left_shift = 20 if out.type == "INT8" else 15  # add.cc: headroom bits for int8 (15 for int16)
    twice_max = 2.0 * max(float(ta.scale[0]), float(tb.scale[0]))
    qa, sa = quantize_multiplier(float(ta.scale[0]) / twice_max)
    qb, sb = quantize_multiplier(float(tb.scale[0]) / twice_max)
    qo, so = quantize_multiplier(twice_max / ((1 << left_shift) * float(out.scale[0])))
    if fold_shift:  # optimized add.h (NEON / NEON_2_SSE): vshlq by left_shift + s, then vqrdmulhq; one rounding
        scaled = lambda v, t, q, s: srdhm(_vshl(v - t.zp0, left_shift + s), q)  # noqa: E731
    else:  # reference add.h: SRDHM of v << left_shift, then RoundingDivideByPOT(-s); two roundings
        scaled = lambda v, t, q, s: rdbpot(srdhm((v - t.zp0) << left_shift, q), -s)  # noqa: E731 (s <= 0)
    raw = scaled(a, ta, qa, sa) + scaled(b, tb, qb, sb)
    return rdbpot(srdhm(raw, qo), -so) + out.zp0


def _vshl(x: np.ndarray, n: int) -> np.ndarray:
    """vshlq_s32 by a scalar: left for n >= 0, arithmetic (flooring) right for n < 0."""
    return x << n if n >= 0 else x >> -n


def _add_xnnpack(a, b, ta: _Tensor, *, tb: _Tensor, out: _Tensor) -> np.ndarray:
    """microparams-init.c xnn_init_qs8_add_minmax_scalar_params + qs8-vadd: 20-bit multipliers, floor shift."""
    sa = np.float32(ta.scale[0]) / np.float32(out.scale[0])  # float, as XNNPACK divides
    sb = np.float32(tb.scale[0]) / np.float32(out.scale[0])
    exp = int((np.float32(max(sa, sb)).view(np.uint32) >> 23) & 0xFF) - 127
    shift = 20 - exp  # the larger multiplier lands in [2^20, 2^21)
    mult = lambda s: int(np.rint(np.float32(s) * np.float32(2.0 ** shift)))  # noqa: E731 (exponent add = exact scale)
    ma, mb = mult(sa), mult(sb)
    bias = (1 << (shift - 1)) - ma * ta.zp0 - mb * tb.zp0  # rounding constant folded with the zero points
    return ((bias + a * ma + b * mb) >> shift) + out.zp0  # math_asr_s32: floor


def _mean(g, sem, args, *, tin, out, opt):
    x, axes = args[0].astype(np.int64), tuple(int(v) for v in np.atleast_1d(args[1]))
    n = int(np.prod([x.shape[a] for a in axes]))
    total = x.sum(axis=axes, keepdims=bool(opt.keepDims))  # (N, C): exact int sum
    s_in, s_out = tin[0].scale[0], out.scale[0]
    if sem != "single":  # reference/reduce.h QuantizedMeanOrSum, multiplier from reduce.cc (double)
        q, shift = quantize_multiplier(float(s_in) / float(s_out))
        k = min(n.bit_length() - 1, 32, 31 + shift)  # fold 1/n into the multiplier, keep precision
        q, shift = int((q << k) // n), shift - k
        y = mbqm(total - tin[0].zp0 * n, q, shift)
    else:  # reduce-nd.c: scale = (in/out) * (1/n) in float; zp' = zp - n * in_zp * scale
        scale = np.float32(np.float32(s_in) / np.float32(s_out)) * np.float32(np.float32(1.0) / np.float32(n))
        zp = np.float32(out.zp0) - np.float32(n * tin[0].zp0) * scale
        y = rint_f32(total.astype(np.float32) * scale + zp)
    return np.clip(y + (out.zp0 if sem != "single" else 0), _QMIN[out.type], _QMAX[out.type])


def _quantize(g, sem, args, *, tin, out, opt):
    x, lo, hi = args[0], _QMIN[out.type], _QMAX[out.type]
    if tin[0].type == "FLOAT32":
        s = np.float32(out.scale[0])
        if sem != "single":  # reference/quantize.h AffineQuantize: round(x / scale) + zp, half away
            y = round_away(x.astype(np.float32) / s)
        else:  # f32-qs8-vcvt: x * (1/scale) in float, round half to even
            y = rint_f32(x.astype(np.float32) * (np.float32(1.0) / s))
        return np.clip(y + out.zp0, lo, hi)
    # requantize.h (quantize.cc int -> int): MultiplyByQuantizedMultiplier of the double scale ratio
    q, shift = quantize_multiplier(float(tin[0].scale[0]) / float(out.scale[0]))
    return np.clip(mbqm(x.astype(np.int64) - tin[0].zp0, q, shift) + out.zp0, lo, hi)


def _dequantize(g, sem, args, *, tin, out, opt):
    """dequantize.h: float(double(scale) * (x - zp))."""
    return (np.float64(tin[0].scale[0]) * (args[0].astype(np.int64) - tin[0].zp0)).astype(np.float32)


def _binary_float(fn):
    def op(g, sem, args, *, tin, out, opt):
        if out.quantized or tin[0].type != "FLOAT32":
            raise RunnerError(f"quantized {fn.__name__} is not implemented; {_FIX}")
        return fn(args[0].astype(np.float32), args[1].astype(np.float32))
    return op


def _minmax(fn):
    def op(g, sem, args, *, tin, out, opt):  # same scale and zero point on both sides (export.tflite clamps)
        return fn(args[0], args[1].astype(args[0].dtype))
    return op


_OPS = {"CONV_2D": _conv2d, "DEPTHWISE_CONV_2D": _depthwise, "FULLY_CONNECTED": _fully_connected, "ADD": _add,
        "MEAN": _mean, "QUANTIZE": _quantize, "DEQUANTIZE": _dequantize, **MOVE_OPS,
        "SUB": _binary_float(np.subtract), "DIV": _binary_float(np.divide),
        "MAXIMUM": _minmax(np.maximum), "MINIMUM": _minmax(np.minimum)}
