"""Handlers of export/_tflite_lower.py's table for max pooling, channel concatenation and hidden QuantLinears.

    _max_pool_module / _max_pool_function   # nn.MaxPool2d, F.max_pool2d -> MAX_POOL_2D on the stored integers
    _cat                                    # torch.cat on channels -> CONCATENATION (written now or by its quantizer)
    _emit_cat, _emit_linear                 # what the consuming quantizer writes for a pending cat / QuantLinear

Max pooling is exact on integers: every activation quantizer is monotone, so the max of the integers is the
integer of the max, at the input's own scale and zero point (Brevitas' QuantTensor max_pool2d keeps them too).
Torch pads with -inf; TFLite's SAME leaves the padded taps out, which is the same where SAME pads as torch
does, and otherwise the input is padded with PADV2 of the smallest int8 (a window always holds a real tap).
CONCATENATION on int8 takes equal scales and zero points on every operand and the output: operands at
one quantization are joined as they are; otherwise the quantizer after the cat (QuantIdentity / QuantReLU)
writes it at its own scale, each operand at another scale requantized first (export._tflite_graph._requant).
A QuantLinear that is not the classifier is an int8 FULLY_CONNECTED requantized to its quantizer's scale,
fused RELU for a QuantReLU, as a conv is.
"""
from __future__ import annotations

import torch.fx as fx

from export._tflite_graph import _Q, _T, _affine, _bias, _requant, _weights
from export._tflite_walk import _ONNX, _Lowering, _Pending, _owner, _where
from qadtr._errors import QadtrError

_POOL_FILL = -128  # PADV2's value before a max pool: no int8 integer is smaller, and a window always holds a real tap
_FC_VERSION = 11  # FULLY_CONNECTED's opcode version; the 16x8 classifier's too (one opcode entry serves both)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _name(node: fx.Node) -> str:
    """The tensor name of a layer without a quantizer: its module path, or `<enclosing module>.<fx node name>`."""
    if node.op == "call_module":
        return str(node.target)
    owner = _owner(node)
    return f"{owner}.{node.name}" if owner else node.name


def _max_pool_module(L: _Lowering, node: fx.Node) -> _T:
    m = L.module(node)
    return _max_pool(L, node, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                     ceil_mode=m.ceil_mode, indices=m.return_indices)


def _max_pool_function(L: _Lowering, node: fx.Node) -> _T:
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    given = {**dict(zip(names, node.args)), **node.kwargs}
    return _max_pool(L, node, given["kernel_size"], stride=given.get("stride"), padding=given.get("padding", 0),
                     dilation=given.get("dilation", 1), ceil_mode=given.get("ceil_mode", False),
                     indices=given.get("return_indices", False))


def _max_pool(L: _Lowering, node: fx.Node, kernel, *, stride, padding, dilation, ceil_mode, indices) -> _T:
    """MAX_POOL_2D of the integers, torch's symmetric padding as SAME where that pads alike, else PADV2 + VALID."""
    S, g, where = L.g.S, L.g, _where(node)
    x = L.quantized(node.args[0], where)
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel), _pair(padding), _pair(dilation)
    sh, sw = _pair(kernel if stride is None or stride == [] else stride)
    if (dh, dw) != (1, 1):
        raise QadtrError(f"{where}: MaxPool2d with dilation {(dh, dw)} has no TFLite kernel (MAX_POOL_2D is not "
                         f"dilated); use dilation 1 or {_ONNX}")
    if ceil_mode or indices:
        what = "ceil_mode=True" if ceil_mode else "return_indices=True"
        raise QadtrError(f"{where}: MaxPool2d with {what} is not lowered; use {what.split('=')[0]}=False (pad the "
                         f"input instead of ceil_mode) or {_ONNX}")
    if len(x.shape) != 4:
        raise QadtrError(f"{where}: MaxPool2d on a {len(x.shape)}-d tensor; give it (B, C, H, W)")
    _, h, w, c = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1  # torch's output size
    same = all(-(-n // s) == o and max((o - 1) * s + k - n, 0) // 2 == p
               for n, s, o, k, p in ((h, sh, ho, kh, ph), (w, sw, wo, kw, pw)))
    name = _name(node)
    if (ph or pw) and not same:  # TFLite SAME would put the windows elsewhere: pad explicitly
        pads = g.tensor(f"{name}/pads", [4, 2], "int32", data=[[0, 0], [ph, ph], [pw, pw], [0, 0]])
        fill = g.tensor(f"{name}/pad_value", [], "int8", data=_POOL_FILL, q=x.q)
        y = g.act(f"{name}/pad", (1, h + 2 * ph, w + 2 * pw, c), x.q)
        g.op("PADV2", [x.index, pads.index, fill.index], [y.index], version=2, opt=S.PadV2OptionsT(),
             opt_type="PadV2Options")
        x = y
    out = g.act(name, (1, ho, wo, c), x.q)
    opt = S.Pool2DOptionsT()
    opt.padding = S.Padding.SAME if (ph or pw) and same else S.Padding.VALID
    opt.strideH, opt.strideW, opt.filterHeight, opt.filterWidth = sh, sw, kh, kw
    g.op("MAX_POOL_2D", [x.index], [out.index], version=2, opt=opt, opt_type="Pool2DOptions")
    return out


def _cat(L: _Lowering, node: fx.Node) -> _T | _Pending:
    """torch.cat of quantized tensors on channels: one quantization -> CONCATENATION now; else pending."""
    where = _where(node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    xs = [L.quantized(a, where) for a in (node.args[0] if node.args else node.kwargs["tensors"])]
    rank = len(xs[0].shape)
    if rank not in (2, 4) or any(len(x.shape) != rank for x in xs) or dim % rank != 1:
        raise QadtrError(f"{where}: cat along dim {dim} of {rank}-d tensors is not lowered; concatenate channels "
                         "(dim 1) of (B, C) or (B, C, H, W) tensors")
    if any(x.shape[:-1] != xs[0].shape[:-1] for x in xs):
        raise QadtrError(f"{where}: cat of shapes {[x.shape for x in xs]} (NHWC); give every operand the same "
                         "batch, height and width")
    if all(x.q == xs[0].q for x in xs):  # what CONCATENATION takes as it is
        return _concat(L.g, xs, xs[0].q, name=_name(node))
    return _Pending("cat", where, tuple(xs))


def _concat(g, xs: list[_T], q: _Q, *, name: str) -> _T:
    """CONCATENATION on the channel axis (NHWC: the last) of operands all quantized as `q`."""
    S = g.S
    out = g.act(name, (*xs[0].shape[:-1], sum(x.shape[-1] for x in xs)), q)
    opt = S.ConcatenationOptionsT()
    opt.axis = len(xs[0].shape) - 1
    g.op("CONCATENATION", [x.index for x in xs], [out.index], version=2, opt=opt, opt_type="ConcatenationOptions")
    return out


def _emit_cat(L: _Lowering, p: _Pending, q: _Q, *, name: str, relu: bool) -> _T:
    """The quantizer after a cat of operands at several scales: each one not at `q` (or, under a QuantReLU,
    able to hold negatives) requantized to `q` by a unit-weight 1x1 depthwise (`name/in<i>`), then joined."""
    parts = [x if x.q == q and not (relu and x.q.lo < x.q.zp) else _requant(L.g, x, q, name=f"{name}/in{i}", relu=relu)
             for i, x in enumerate(p.inputs)]
    return _concat(L.g, parts, q, name=name)


def _emit_linear(L: _Lowering, p: _Pending, q: _Q, *, name: str, relu: bool) -> _T:
    """A QuantLinear inside the network: int8 FULLY_CONNECTED (per-channel weights, int32 bias) at `q`."""
    S, g, x = L.g.S, L.g, p.inputs[0]
    w_int, s_w = _weights(p.module, p.source)  # (Cout, Cin), (Cout,)
    wt, bt = _affine(g, p.source, w_int, s_w=s_w, b_int=_bias(p.module, x.q.scale, s_w, dtype="int32"),
                     s_in=x.q.scale, s_out=q.scale)
    out = g.act(name, (x.shape[0], w_int.shape[0]), q)
    act = S.ActivationFunctionType.RELU if relu else S.ActivationFunctionType.NONE
    g.op("FULLY_CONNECTED", [x.index, wt.index, bt.index], [out.index], version=_FC_VERSION,
         opt=S.FullyConnectedOptionsT(fusedActivationFunction=act), opt_type="FullyConnectedOptions")
    return out
