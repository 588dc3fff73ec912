"""The flatbuffer pieces behind export.tflite: graph builder, quantization of activations, weights and biases.

    g = _Graph(schema, headroom=True)              # tensors, buffers, ops; g.finish(...) -> .tflite bytes
    wt, bt = _affine(g, name, w_int, s_w=s_w, b_int=b_int, s_in=s_in, s_out=s_out)  # int8 weight / int32|int64 bias

export/_tflite_lower.py walks a network's torch.fx graph with these (build_tflite); see export/tflite.py for
the graph it writes and how the artifact is proven.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from export.registry import get_exporter
from qadtr._errors import QadtrError

EXPORTER_VERSION = get_exporter("tflite").version  # the registry row's; written into every file's description


# -- flatbuffer graph ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Q:
    """How one activation's integers sit in its storage tensor."""

    scale: float
    zp: int  # Brevitas' zero point: as is when signed, - 128 when unsigned (int8 storage); 0 / -128 if symmetric
    lo: int  # clamp range of the stored integers
    hi: int


@dataclass(frozen=True)
class _T:
    index: int
    shape: tuple[int, ...]  # NHWC, batch 1 (the signature marks it dynamic)
    q: _Q | None


class _Graph:
    def __init__(self, schema, headroom: bool):
        self.S, self.headroom = schema, headroom  # headroom: see `_affine`
        self.tensors, self.buffers, self.ops, self.opcodes = [], [schema.BufferT()], [], {}
        self.named: dict[str, _T] = {}  # activations compared with the reference, by torch module name

    def tensor(self, name: str, shape, dtype: str, *, data=None, q: _Q | None = None, scales=None,
               zero_points=None, dynamic: bool = False) -> _T:
        S, t = self.S, self.S.TensorT()
        t.name, t.shape, t.type = name, list(shape), getattr(S.TensorType, dtype.upper())
        if dynamic:
            t.shapeSignature = [-1, *shape[1:]]
        if data is not None:
            arr = np.ascontiguousarray(np.asarray(data, dtype=dtype))
            t.buffer = len(self.buffers)
            self.buffers.append(S.BufferT(data=np.frombuffer(arr.tobytes(), np.uint8)))
        if q is not None or scales is not None:
            qp = S.QuantizationParametersT()
            qp.scale = [float(s) for s in (scales if scales is not None else [q.scale])]
            qp.zeroPoint = [int(z) for z in (zero_points if zero_points is not None else [q.zp] * len(qp.scale))]
            qp.quantizedDimension = 0
            t.quantization = qp
        self.tensors.append(t)
        return _T(len(self.tensors) - 1, tuple(shape), q)

    def op(self, kind: str, inputs: list[int], outputs: list[int], *, version: int = 1, opt=None, opt_type: str = ""):
        S = self.S
        code = getattr(S.BuiltinOperator, kind)
        if kind not in self.opcodes:
            oc = S.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
            self.opcodes[kind] = (len(self.opcodes), oc)
        o = S.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.opcodes[kind][0], list(inputs), list(outputs)
        if opt is not None:
            o.builtinOptionsType, o.builtinOptions = getattr(S.BuiltinOptions, opt_type), opt
        self.ops.append((kind, o))

    def act(self, name: str, shape, q: _Q, *, dtype: str = "int8") -> _T:
        return self.tensor(name, shape, dtype, q=q, dynamic=True)

    def clamp(self, x: _T, name: str) -> _T:
        """MAXIMUM/MINIMUM with constants where the activation's range is narrower than int8.

        The clamped tensor takes `name`; the unclamped one is renamed `name/unclamped`.
        """
        for kind, bound, active in (("MAXIMUM", x.q.lo, x.q.lo > -128), ("MINIMUM", x.q.hi, x.q.hi < 127)):
            if active:
                if self.tensors[x.index].name == name:
                    self.tensors[x.index].name = f"{name}/unclamped"
                c = self.tensor(f"{name}/{kind.lower()}_const", [], "int8", data=bound, q=x.q)
                y = self.act(name, x.shape, x.q)
                self.op(kind, [x.index, c.index], [y.index], version=2,
                        opt=self.S.MaximumMinimumOptionsT(), opt_type="MaximumMinimumOptions")
                x = y
        return x

    def finish(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        import flatbuffers

        S = self.S
        sg = S.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = self.tensors, inputs, outputs, [o for _, o in self.ops], "main"
        m = S.ModelT()
        m.version, m.description, m.buffers, m.subgraphs = 3, description, self.buffers, [sg]
        m.operatorCodes = [oc for _, oc in sorted(self.opcodes.values(), key=lambda p: p[0])]
        b = flatbuffers.Builder(1 << 16)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


@dataclass(frozen=True)
class Built:
    data: bytes  # the .tflite flatbuffer
    op_counts: dict[str, int]
    logit_scale: float  # one step of the int16 logits
    activations: dict[str, _Q]  # compared integer activations, by torch module name


@torch.no_grad()
def _act_q(module, what: str) -> _Q:
    aq = module.act_quant
    bits, signed, narrow = int(aq.bit_width()), bool(aq.is_signed), bool(aq.is_narrow_range)
    zps = aq.zero_point().reshape(-1)
    zp = float(zps[0])
    if zps.numel() != 1 or zp != round(zp):  # a learned integer zero point (ShiftedUint8...) maps, not these
        raise QadtrError(f"{what}: activation zero point {zps[:4].tolist()} is not one "
                         "integer; TFLite takes one integer zero point per tensor; use export.onnx")
    if bits > 8:
        raise QadtrError(f"{what}: {bits}-bit activations do not fit int8 TFLite kernels; use export.onnx")
    if signed:
        return _Q(float(aq.scale()), int(zp), -(2 ** (bits - 1)) + narrow, 2 ** (bits - 1) - 1)
    return _Q(float(aq.scale()), int(zp) - 128, -128, 2 ** bits - 1 - 128)  # stored = unsigned integer - 128


@torch.no_grad()
def _weights(layer, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Brevitas' integer weights and per-output-channel scales: (Cout, ...) int8, (Cout,) float32."""
    qw = layer.quant_weight()
    if int(qw.bit_width) > 8 or float(qw.zero_point.abs().max()) != 0.0:
        raise QadtrError(f"{what}: {int(qw.bit_width)}-bit or asymmetric weights; TFLite takes int8 symmetric; "
                         "use export.onnx")
    scale = qw.scale.detach().reshape(-1)
    if scale.numel() == 1:
        scale = scale.expand(qw.int().shape[0])
    return qw.int().numpy().astype(np.int8), scale.numpy().astype(np.float32)


def _bias(layer, s_in: float, s_w: np.ndarray, *, dtype: str) -> np.ndarray:
    """Brevitas' own Int32Bias integers for this layer: its bias proxy on a dummy input quant tensor."""
    from brevitas.quant_tensor import IntQuantTensor

    if layer.bias is None:
        return np.zeros(len(s_w), dtype)
    shape = (1, layer.weight.shape[1], *[1] * (layer.weight.dim() - 2))  # (1, Cin[, 1, 1])
    dummy_in = IntQuantTensor(torch.zeros(shape), torch.tensor(s_in), torch.tensor(0.0), torch.tensor(8.0), True, False)
    qb = layer.bias_quant(layer.bias, dummy_in, layer.quant_weight())
    return qb.int().numpy().astype(dtype)


def _affine(g: _Graph, name: str, w_int: np.ndarray, *, s_w: np.ndarray, b_int: np.ndarray, s_in: float,
            s_out: float, qdim: int = 0) -> tuple[_T, _T]:
    """Weight and bias tensors, each output channel's integers scaled by 2^k into the int8 range.

    The real weights w_int * s_w are unchanged (w_int * 2^k at scale s_w / 2^k, bias * 2^k). LiteRT's
    builtin kernels requantize an accumulator a by M = s_in * s_w / s_out as round(round(a * m) / 2^r)
    (M = m * 2^-r, m in [0.5, 1)): the double rounding flips a step whenever r > 0 and a * M lies
    within 2^-r of a half, which small low-bit accumulators do often (12% of a 2-bit layer's outputs).
    Scaling a by 2^k shrinks that window to 2^-(r + k). Channels with M >= 0.5 (r = 0, one rounding)
    keep k = 0: headroom there would add the double rounding it removes elsewhere.
    """
    flat = np.abs(w_int.astype(np.int64)).reshape(w_int.shape[qdim], -1) if qdim == 0 else \
        np.abs(w_int.astype(np.int64)).reshape(-1, w_int.shape[qdim]).T  # (Cout, fan_in)
    k = np.floor(np.log2(127 / np.maximum(flat.max(1), 1))).astype(np.int64) if g.headroom else np.zeros(len(s_w), np.int64)
    k[np.float64(s_in) * s_w.astype(np.float64) / s_out >= 0.5] = 0  # single rounding already
    bias_max = np.iinfo(b_int.dtype).max
    k = np.clip(np.minimum(k, np.floor(np.log2(bias_max / np.maximum(np.abs(b_int.astype(np.float64)), 1)))), 0, None).astype(np.int64)
    view = [1] * w_int.ndim
    view[qdim] = -1
    w_scaled = (w_int.astype(np.int64) * (2 ** k).reshape(view)).astype(np.int8)
    s_scaled = (s_w / (2.0 ** k)).astype(np.float32)  # exact: a power of two
    b_scaled = (b_int.astype(np.int64) * 2 ** k).astype(b_int.dtype)
    zeros = [0] * len(s_w)
    wt = g.tensor(f"{name}/weight", w_scaled.shape, "int8", data=w_scaled, scales=s_scaled, zero_points=zeros)
    wt_q = g.tensors[wt.index].quantization
    wt_q.quantizedDimension = qdim
    bt = g.tensor(f"{name}/bias", b_scaled.shape, b_int.dtype.name, data=b_scaled,
                  scales=(np.float32(s_in) * s_scaled).astype(np.float32), zero_points=zeros)
    return wt, bt


def _conv(g: _Graph, conv, x: _T, *, out_q: _Q, name: str, relu: bool,
          weights: tuple[np.ndarray, np.ndarray] | None = None) -> _T:
    """CONV_2D (groups 1) or DEPTHWISE_CONV_2D (groups = channels), int8 with int32 bias; torch's symmetric
    padding as SAME (stride 1) or PAD + VALID (TFLite SAME pads the far side more)."""
    S = g.S
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    depthwise = conv.groups > 1
    w_int, s_w = weights if weights is not None else _weights(conv, name)
    b_int = _bias(conv, x.q.scale, s_w, dtype="int32")
    layout = (1, 2, 3, 0) if depthwise else (0, 2, 3, 1)  # OIHW -> 1HWO (depthwise) or OHWI
    wt, bt = _affine(g, name, w_int.transpose(*layout), s_w=s_w, b_int=b_int, s_in=x.q.scale, s_out=out_q.scale,
                     qdim=3 if depthwise else 0)
    _, h, w, _ = x.shape
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # dilated kernel extent
    if sh == sw == 1 and 2 * ph == eh - 1 and 2 * pw == ew - 1:
        padding, ho, wo = S.Padding.SAME, h, w
    else:
        if ph or pw:
            pads = g.tensor(f"{name}/pads", [4, 2], "int32", data=[[0, 0], [ph, ph], [pw, pw], [0, 0]])
            y = g.act(f"{name}/pad", (1, h + 2 * ph, w + 2 * pw, x.shape[3]), x.q)
            g.op("PAD", [x.index, pads.index], [y.index], version=2, opt=S.PadOptionsT(), opt_type="PadOptions")
            x, h, w = y, h + 2 * ph, w + 2 * pw
        padding, ho, wo = S.Padding.VALID, (h - eh) // sh + 1, (w - ew) // sw + 1
    out = g.act(name, (1, ho, wo, len(s_w)), out_q)
    opt = S.DepthwiseConv2DOptionsT() if depthwise else S.Conv2DOptionsT()
    opt.padding, opt.strideH, opt.strideW, opt.dilationHFactor, opt.dilationWFactor = padding, sh, sw, dh, dw
    opt.fusedActivationFunction = S.ActivationFunctionType.RELU if relu else S.ActivationFunctionType.NONE
    if depthwise:
        opt.depthMultiplier = 1
    kind = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
    g.op(kind, [x.index, wt.index, bt.index], [out.index], version=3, opt=opt,
         opt_type="DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
    return out


def _normalize_op(g: _Graph, x: _T, mean: np.ndarray, *, std: np.ndarray, name: str) -> _T:
    """(x - mean) / std on float pixels: SUB, DIV by (C,) float32 constants, as torch computes it."""
    S = g.S
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    centred = g.tensor(f"{name}/sub", x.shape, "float32", dynamic=True)
    normed = g.tensor(f"{name}/div", x.shape, "float32", dynamic=True)
    g.op("SUB", [x.index, g.tensor(f"{name}/mean", [len(mean)], "float32", data=mean).index], [centred.index],
         version=1, opt=S.SubOptionsT(), opt_type="SubOptions")
    g.op("DIV", [centred.index, g.tensor(f"{name}/std", [len(std)], "float32", data=std).index], [normed.index],
         version=1, opt=S.DivOptionsT(), opt_type="DivOptions")
    return normed


def _add_op(g: _Graph, a: _T, b: _T, *, q: _Q, name: str, relu: bool) -> _T:
    """ADD of two int8 tensors requantized to `q` (fused RELU if `relu`)."""
    S = g.S
    out = g.act(name, a.shape, q)
    act = S.ActivationFunctionType.RELU if relu else S.ActivationFunctionType.NONE
    g.op("ADD", [a.index, b.index], [out.index], version=2, opt=S.AddOptionsT(fusedActivationFunction=act),
         opt_type="AddOptions")
    return out


def _mean_op(g: _Graph, x: _T, q: _Q, *, name: str, axes: str, keep_dims: bool) -> _T:
    """Global average pool over H, W requantized to `q`: one rounding, as in torch."""
    S = g.S
    pooled = g.act(name, (1, 1, 1, x.shape[3]) if keep_dims else (1, x.shape[3]), q)
    axes_t = g.tensor(axes, [2], "int32", data=[1, 2])
    g.op("MEAN", [x.index, axes_t.index], [pooled.index], version=2, opt=S.ReducerOptionsT(keepDims=keep_dims),
         opt_type="ReducerOptions")
    return pooled


def _classifier_16x8(g: _Graph, x: _T, layer, *, name: str) -> tuple[_T, float]:
    """The last QuantLinear, 16x8: int16 copy of its integer input (same scale, zero point 0: exact), int64 bias."""
    S = g.S
    q16 = _Q(x.q.scale, 0, -32768, 32767)
    p16 = g.act(f"{g.tensors[x.index].name}/int16", x.shape, q16, dtype="int16")
    g.op("QUANTIZE", [x.index], [p16.index], version=3)
    w_int, s_w = _weights(layer, name)  # (classes, C): pooled features have no spatial order
    b_int = _bias(layer, x.q.scale, s_w, dtype="int64")
    acc_lsb = np.float64(x.q.scale) * s_w.astype(np.float64)  # (classes,)
    top = max(x.q.hi - x.q.zp, x.q.zp - x.q.lo)  # largest |input integer|
    bound = float((acc_lsb * (top * np.abs(w_int.astype(np.int64)).sum(1) + np.abs(b_int))).max())
    s_out = max(bound, 1e-6) / 32767  # worst-case |logit| maps to int16 max: no saturation possible
    wt, bt = _affine(g, name, w_int, s_w=s_w, b_int=b_int, s_in=x.q.scale, s_out=s_out)
    y16 = g.act("logits/int16", (1, w_int.shape[0]), _Q(s_out, 0, -32768, 32767), dtype="int16")
    g.op("FULLY_CONNECTED", [p16.index, wt.index, bt.index], [y16.index], version=11,
         opt=S.FullyConnectedOptionsT(), opt_type="FullyConnectedOptions")
    logits = g.tensor("logits", y16.shape, "float32", dynamic=True)
    g.op("DEQUANTIZE", [y16.index], [logits.index], version=4)
    return logits, s_out


def _requant(g: _Graph, x: _T, q: _Q, *, name: str, relu: bool = False) -> _T:
    """int8 -> int8 requantization as a 1x1 DEPTHWISE_CONV_2D with unit weights (fused RELU if `relu`).

    A QUANTIZE op would do, but XNNPACK's int8 QUANTIZE uses an 8-bit fixed-point multiplier and
    flipped ~2% of the residual operands by one step; convolutions requantize in fp32 there.
    """
    S, c = g.S, x.shape[3]
    wt, bt = _affine(g, name, np.ones((1, 1, 1, c), np.int8), s_w=np.ones(c, np.float32), b_int=np.zeros(c, np.int32),
                     s_in=x.q.scale, s_out=q.scale, qdim=3)
    y = g.act(name, x.shape, q)
    opt = S.DepthwiseConv2DOptionsT()
    opt.padding, opt.strideH, opt.strideW, opt.depthMultiplier = S.Padding.VALID, 1, 1, 1
    opt.dilationHFactor = opt.dilationWFactor = 1
    if relu:
        opt.fusedActivationFunction = S.ActivationFunctionType.RELU
    g.op("DEPTHWISE_CONV_2D", [x.index, wt.index, bt.index], [y.index], version=3, opt=opt,
         opt_type="DepthwiseConv2DOptions")
    return y


def with_outputs(data: bytes, names: list[str]) -> bytes:
    """A .tflite's bytes with the tensors called `names` appended to its subgraph outputs.

    XNNPACK materialises only partition outputs, so reading an intermediate activation of an existing
    artifact (not a fresh `build_tflite(debug=True)`) needs it as an output; everything else is unchanged.

    Raises:
        QadtrError: a name no tensor of the first subgraph has.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as S

    m = S.ModelT.InitFromObj(S.Model.GetRootAsModel(data, 0))
    sg = m.subgraphs[0]
    index = {(t.name.decode() if isinstance(t.name, bytes) else t.name): i for i, t in enumerate(sg.tensors)}
    missing = [n for n in names if n not in index]
    if missing:
        raise QadtrError(f"the .tflite has no tensors {missing[:5]}; it was not written by this export.tflite")
    outputs = list(sg.outputs)
    sg.outputs = outputs + [index[n] for n in names if index[n] not in outputs]
    b = flatbuffers.Builder(len(data) + 4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())
