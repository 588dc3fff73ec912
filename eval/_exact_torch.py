"""A deployed .tflite as a differentiable torch model whose forward is the integer executor's, bit for bit.

    net = ExactTflite("w2a2.tflite", semantics="double-ruy")   # a key of devices.intexec.SEMANTICS (.tflite)
    logits = net(x)            # x: (B, 3, H, W) pixels in [0, 1], as qadtr's fake-quant models take them
    patch = universal_patch(net, train.images, train.labels, cfg=cfg)   # a white-box patch on the exact arithmetic

Forward: the executor itself (`TfliteIntGraph.run(..., keep_ints=True)`) computes every integer tensor and the
logits under the named semantics, so the values are the deployed kernel set's (its double rounding, ruy's
half-up shift, XNNPACK's fp32 requantization) by construction, not by a second implementation of them.
Backward: a straight-through estimator per op. Each op also gets a real-valued surrogate in torch float64:
the same integer accumulation of the (exact) integer inputs, scaled by the real requantization scale
s_in * s_w / s_out and offset by the output zero point, *without* rounding, then `torch.clamp` to the op's
integer range (fused activation or storage type). The op's output tensor is

    exact + (surrogate - surrogate.detach())          # value: exact (x - x == 0 exactly); gradient: surrogate's

so every rounding passes its gradient straight through, and a clamp passes zero gradient where the surrogate
(pre-rounding, real-valued) lies outside [lo, hi] and one inside (MINIMUM/MAXIMUM clamps: torch's own
gradient, to the side that wins). Every tensor holds integers in float64 (exact: all are below 2^53); the
logits are the executor's float32 DEQUANTIZE output. The surrogates compute in float32 (SURROGATE_DTYPE) from
those exact values; float ops (the normalisation SUB/DIV) have no executor value kept and are torch's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from devices import _intexec_tflite as T
from devices.intexec import SEMANTICS, candidates, load_graph
from qadtr._errors import QadtrError


# The surrogates' dtype: they only steer the gradient, and torch's float64 (depthwise) convolutions run ~40x
# slower than float32 on CPU; the values the next op sees stay the exact float64 integers.
SURROGATE_DTYPE = torch.float32


def _t(a, dtype=SURROGATE_DTYPE) -> torch.Tensor:
    """A constant (numpy) as a torch tensor, by default of the surrogates' dtype."""
    return torch.from_numpy(np.asarray(a).astype(np.float64)).to(dtype)


def _requant(acc: torch.Tensor, s_in, s_w, *, out, lo: float, hi: float) -> torch.Tensor:
    """acc (..., C) real -> acc * s_in * s_w[c] / s_out + zp, clamped: the requantization without its rounding."""
    scale = _t(float(s_in) * s_w.astype(np.float64) / float(out.scale[0]))  # (C,) or (1,)
    return torch.clamp(acc * scale + out.zp0, lo, hi)


def _nchw_conv(g, x: torch.Tensor, xt, *, w: torch.Tensor, opt, groups: int) -> torch.Tensor:
    """conv2d of x - zp (N, H, W, C) with w (Cout, Cin/groups, KH, KW), SAME/VALID as the executor pads: NHWC out."""
    kh, kw = w.shape[2], w.shape[3]
    top, left, bottom, right = (T._same_pads(x, (kh, kw), opt.strideH) if g._pad[opt.padding] == "SAME"
                                else (0, 0, 0, 0))
    xc = F.pad((x - xt.zp0).permute(0, 3, 1, 2).contiguous(), (left, right, top, bottom))  # (N, C, H', W'), 0 pads
    return F.conv2d(xc, w, stride=opt.strideH, groups=groups).permute(0, 2, 3, 1).contiguous()  # (N, Ho, Wo, Cout)


def _conv2d(g, args, tin, *, out, opt):
    w = _t(tin[1].data).permute(0, 3, 1, 2)  # (Cout, KH, KW, Cin) -> (Cout, Cin, KH, KW)
    acc = _nchw_conv(g, args[0], tin[0], w=w, opt=opt, groups=1) + (_t(args[2]) if args[2] is not None else 0.0)
    lo, hi = g._clamp_range(out, opt.fusedActivationFunction)
    return _requant(acc, tin[0].scale[0], tin[1].scale, out=out, lo=lo, hi=hi)


def _depthwise(g, args, tin, *, out, opt):
    w = _t(tin[1].data).permute(3, 0, 1, 2)  # (1, KH, KW, C) -> (C, 1, KH, KW)
    acc = (_nchw_conv(g, args[0], tin[0], w=w, opt=opt, groups=w.shape[0])
           + (_t(args[2]) if args[2] is not None else 0.0))
    lo, hi = g._clamp_range(out, opt.fusedActivationFunction)
    return _requant(acc, tin[0].scale[0], tin[1].scale, out=out, lo=lo, hi=hi)


def _fully_connected(g, args, tin, *, out, opt):
    w = _t(tin[1].data)  # (Cout, Cin)
    acc = (args[0] - tin[0].zp0).reshape(-1, w.shape[1]) @ w.T + (_t(args[2]) if args[2] is not None else 0.0)
    s_w = tin[1].scale if tin[1].scale.size > 1 else np.repeat(tin[1].scale, w.shape[0])
    lo, hi = g._clamp_range(out, opt.fusedActivationFunction)
    return _requant(acc, tin[0].scale[0], s_w, out=out, lo=lo, hi=hi)


def _add(g, args, tin, *, out, opt):
    a, b = ((v if torch.is_tensor(v) else _t(v)) - t.zp0 for v, t in zip(args, tin))
    so = float(out.scale[0])
    y = a * (float(tin[0].scale[0]) / so) + b * (float(tin[1].scale[0]) / so) + out.zp0
    return torch.clamp(y, *g._clamp_range(out, opt.fusedActivationFunction if opt is not None else 0))


def _mean(g, args, tin, *, out, opt):
    axes = tuple(int(v) for v in np.atleast_1d(args[1]))
    y = (args[0] - tin[0].zp0).mean(dim=axes, keepdim=bool(opt.keepDims))
    return torch.clamp(y * (float(tin[0].scale[0]) / float(out.scale[0])) + out.zp0, T._QMIN[out.type],
                       T._QMAX[out.type])


def _quantize(g, args, tin, *, out, opt):
    x = args[0] if tin[0].type == "FLOAT32" else (args[0] - tin[0].zp0) * float(tin[0].scale[0])
    return torch.clamp(x / float(out.scale[0]) + out.zp0, T._QMIN[out.type], T._QMAX[out.type])


def _dequantize(g, args, tin, *, out, opt):
    return (args[0] - tin[0].zp0) * float(tin[0].scale[0])


def _pad(g, args, tin, *, out, opt):
    pads = np.asarray(args[1], np.int64)  # (rank, 2), first axis first; F.pad takes the last axis first
    flat = [int(p) for pair in pads[::-1] for p in pair]
    return F.pad(args[0], flat, value=float(out.zp0 if out.quantized else 0))


def _strided_slice(g, args, tin, *, out, opt):
    if (np.asarray(args[3]) < 0).any():
        raise QadtrError("a STRIDED_SLICE with a negative stride has no torch surrogate here; export the model with "
                         "export.tflite, whose graphs slice forwards")
    return T._OPS["STRIDED_SLICE"](g, None, args, tin=tin, out=out, opt=opt)  # the executor's own indexing, on torch


def _elementwise(fn):
    def op(g, args, tin, *, out, opt):
        return fn(*((v if torch.is_tensor(v) else _t(v)) for v in args))
    return op


SURROGATES = {"CONV_2D": _conv2d, "DEPTHWISE_CONV_2D": _depthwise, "FULLY_CONNECTED": _fully_connected,
              "ADD": _add, "MEAN": _mean, "QUANTIZE": _quantize, "DEQUANTIZE": _dequantize, "PAD": _pad,
              "STRIDED_SLICE": _strided_slice, "SUB": _elementwise(torch.sub), "DIV": _elementwise(torch.div),
              "MAXIMUM": _elementwise(torch.maximum), "MINIMUM": _elementwise(torch.minimum)}


class ExactTflite(nn.Module):
    """(B, 3, H, W) pixels in [0, 1] -> (B, K) float32 logits equal to IntExecRunner(path, semantics)'s, with
    straight-through gradients (module docstring). `surrogate_only=True` skips the exact values: the
    real-valued (unrounded) chain alone, to check the surrogates track the integer model."""

    def __init__(self, path: str | Path, semantics: str, *, surrogate_only: bool = False):
        super().__init__()
        if semantics not in SEMANTICS or SEMANTICS[semantics].artifact != ".tflite":
            raise QadtrError(f"--semantics {semantics!r}: the exact-arithmetic model runs a .tflite under one of "
                             f"{', '.join(candidates('x.tflite'))}")
        if Path(path).suffix != ".tflite":
            raise QadtrError(f"{Path(path).name}: the exact-arithmetic model takes a .tflite (export.tflite); an "
                             ".onnx goes through eval._exact_onnx.ExactOnnx")
        self.graph, self.semantics, self.surrogate_only = load_graph(path), semantics, surrogate_only
        names = [t.name for t in self.graph.tensors]
        missing = sorted({k for k, *_ in self.graph.ops} - set(SURROGATES))
        first_out = self.graph.tensors[names.index(self.graph.output_names[0])]
        if missing or len(set(names)) != len(names) or self.graph.input_shape[-1] != 3 or first_out.quantized:
            raise QadtrError(f"{Path(path).name}: ops without a surrogate {missing}, repeated tensor names, a "
                             "non-NHWC input or integer logits; export the model with export.tflite")
        self._index = {n: i for i, n in enumerate(names)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.graph
        nhwc = x.permute(0, 2, 3, 1)  # (B, H, W, 3), as LiteRT takes it
        exact = {}
        if not self.surrogate_only:
            outs, ints = g.run(nhwc.detach().to(torch.float32).contiguous().numpy(),
                               SEMANTICS[self.semantics].graph_name, keep_ints=True)
            exact = {self._index[n]: v for n, v in {**ints, **outs}.items()}  # tensor index -> executor values
        vals = {self._index[g.input_name]: nhwc.to(torch.float64)}
        for kind, ins, outs_, opt in g.ops:
            args = [vals[i].to(SURROGATE_DTYPE) if i in vals else g.tensors[i].data if i >= 0 else None for i in ins]
            tin = [g.tensors[i] if i >= 0 else None for i in ins]
            s = SURROGATES[kind](g, args, tin, out=g.tensors[outs_[0]], opt=opt)
            o = outs_[0]
            s = s.to(torch.float64)
            vals[o] = s if o not in exact else _t(exact[o], torch.float64) + (s - s.detach())
        (logits,) = [vals[self._index[n]] for n in g.output_names[:1]]
        return logits.reshape(len(logits), -1).to(torch.float32)  # (B, K): float64 of float32 values, exact
