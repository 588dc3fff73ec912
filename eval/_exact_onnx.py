"""A deployed QDQ .onnx as a differentiable torch model whose forward is the integer executor's, bit for bit.

    net = ExactOnnx("w2a2.onnx", semantics="single")   # an integer .onnx semantics of devices.intexec.SEMANTICS
    logits = net(x)            # x: (B, 3, H, W) pixels in [0, 1], NCHW as the ONNX graph and qadtr's models take them
    patch = universal_patch(net, train.images, train.labels, cfg=cfg)   # a white-box patch on the exact arithmetic

Forward: the executor itself (`OnnxIntGraph.run(..., keep_ints=True)`) computes every integer tensor (each
activation DequantizeLinear's input) and the logits under the named semantics, so the values are the deployed
kernel set's (ORT's float32 requantization with round-half-even, QLinearAdd's FMAs, the AVX2 int16 pair
saturation under "single-u8s8sat") by construction, not by a second implementation of them.
Backward: a straight-through estimator per op, on the executor's own fusion plan (the QLinearConv / QLinearAdd /
QGemm groups ORT_ENABLE_ALL forms, the unfused nodes as they run). Each gets a real-valued surrogate in torch:
a fused op is the same integer accumulation of its (exact) integer inputs minus their zero points, scaled by the
real requantization scale s_in * s_w / s_out and offset by the output zero point, *without* rounding (and without
the AVX2 saturation), then `torch.clamp` to its storage range (from the zero point up after a fused Relu);
QuantizeLinear is x / s + z clamped, the rest (DequantizeLinear, Clip, Relu, data movement, pooling, the
normalisation Sub / Div) are their own torch ops. Every tensor the executor keeps is

    exact + (surrogate - surrogate.detach())          # value: exact (x - x == 0 exactly); gradient: surrogate's

so every rounding passes its gradient straight through, and a clamp passes zero gradient where the surrogate
(pre-rounding, real-valued) lies outside its range and one inside. Kept values are integers or float32 logits,
held in float64 (exact); the surrogates compute in float32 (eval._exact_torch.SURROGATE_DTYPE) from them, and
float tensors between two kept ones (DequantizeLinear outputs, the shortcuts' Slice / Pad) are the surrogate's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from devices.intexec import SEMANTICS, candidates, load_graph
from eval._exact_torch import SURROGATE_DTYPE, _t
from qadtr._errors import QadtrError

_RANGE = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}  # the storage types ORT's Q/DQ use here
FUSED = {"conv": "QLinearConv", "add": "QLinearAdd", "gemm": "QGemm", "gemm_q": "QGemm+Q"}  # executor kind -> op


def _qp(g, node) -> tuple[float, float, tuple[int, int]]:
    """(scale, zero point, storage range) of a Q / DQ node with a per-tensor scale."""
    scale, zp = g._qparams(node)
    return float(scale), float(zp), _RANGE[np.dtype(zp.dtype)]


def _out_range(g, grp) -> tuple[float, float, float, float]:
    """(s_out, z_out, lo, hi) of a fused op's QuantizeLinear; a fused Relu clamps from the zero point up."""
    s, z, (lo, hi) = _qp(g, grp.q)
    return s, z, (max(lo, z) if grp.relu else lo), hi


def _qlinear_conv(g, grp, args):
    (x,) = args  # (B, C, H, W) integers
    at = grp.attrs
    xs, xz, _ = _qp(g, grp.x)
    pt, pl, pb, pr = at.get("pads", [0, 0, 0, 0])
    acc = F.conv2d(F.pad(x - xz, (pl, pr, pt, pb)), _t(grp.w), stride=tuple(at.get("strides", [1, 1])),
                   dilation=tuple(at.get("dilations", [1, 1])), groups=int(at.get("group", 1)))  # pads: zero point
    if grp.bias is not None:
        acc = acc + _t(grp.bias).reshape(1, -1, 1, 1)
    so, zo, lo, hi = _out_range(g, grp)
    scale = _t(xs * grp.w_scale.astype(np.float64) / so).reshape(1, -1, 1, 1)
    return torch.clamp(acc * scale + zo, lo, hi)


def _qlinear_add(g, grp, args):
    (sa, za, _), (sb, zb, _) = _qp(g, grp.a), _qp(g, grp.b)
    so, zo, lo, hi = _out_range(g, grp)
    return torch.clamp((args[0] - za) * (sa / so) + (args[1] - zb) * (sb / so) + zo, lo, hi)


def _gemm_acc(g, grp, args) -> tuple[torch.Tensor, np.ndarray]:
    """((B, N) real accumulator (a - z_a) @ W + bias, the (N,) or (1,) float64 scale alpha * s_a * s_w)."""
    s, z, _ = _qp(g, grp.x)
    w2 = grp.w.T if grp.attrs.get("transB", 0) else grp.w  # (K, N)
    acc = (args[0] - z).reshape(len(args[0]), -1) @ _t(w2) + (0.0 if grp.bias is None else _t(grp.bias))
    return acc, float(grp.attrs.get("alpha", 1.0)) * s * grp.w_scale.astype(np.float64)


def _qgemm(g, grp, args):
    acc, scale = _gemm_acc(g, grp, args)
    return acc * _t(scale)


def _qgemm_q(g, grp, args):
    acc, scale = _gemm_acc(g, grp, args)
    so, zo, lo, hi = _out_range(g, grp)
    return torch.clamp(acc * _t(scale / so) + zo, lo, hi)


def _quantize(g, n, args):
    scale, zp = float(np.asarray(args[1]).reshape(())), np.asarray(args[2])
    return torch.clamp(args[0] / scale + float(zp.reshape(())), *_RANGE[zp.dtype])


def _dequantize(g, n, args):
    scale, zp = (np.asarray(a, np.float64) for a in args[1:3])
    if scale.ndim == 1 and args[0].ndim > 1:  # per-axis, as devices._intexec_mlas._dequantize
        shape = [1] * args[0].ndim
        shape[g._attr(n).get("axis", 1)] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (args[0] - _t(zp)) * _t(scale)


def _clip(g, n, args):
    lo, hi = (None if len(args) <= i or args[i] is None else float(np.asarray(args[i])) for i in (1, 2))
    return torch.clamp(args[0], lo, hi)


def _slice(g, n, args):
    steps = args[4] if len(args) > 4 else None
    if steps is not None and (np.asarray(steps) < 0).any():
        raise QadtrError(f"{n.name}: a Slice with a negative step has no torch surrogate here; export the model with "
                         "export.onnx, whose graphs slice forwards")
    return g._slice(args[0], args[1], args[2], axes=args[3] if len(args) > 3 else None, steps=steps)  # its indexing


def _pad(g, n, args):
    mode = g._attr(n).get("mode", b"constant")
    if mode not in (b"constant", "constant"):
        raise QadtrError(f"{n.name}: Pad mode {mode!r} has no torch surrogate; export the model with export.onnx")
    p, r = np.asarray(args[1]).tolist(), args[0].ndim  # ONNX: all begins, then all ends; F.pad: last axis first
    value = float(np.asarray(args[2])) if len(args) > 2 and args[2] is not None else 0.0
    return F.pad(args[0], [q for i in reversed(range(r)) for q in (p[i], p[i + r])], value=value)


def _reshape(g, n, args):
    return args[0].reshape([args[0].shape[i] if s == 0 else s for i, s in enumerate(np.asarray(args[1]).tolist())])


def _flatten(g, n, args):
    ax = g._attr(n).get("axis", 1)
    return args[0].reshape(int(np.prod(args[0].shape[:ax])), -1)


def _max_pool(g, n, args):
    at = g._attr(n)
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or at.get("ceil_mode", 0):
        raise QadtrError(f"{n.name}: MaxPool {at} has no torch surrogate; export the model with export.onnx")
    pt, pl, pb, pr = at.get("pads", [0, 0, 0, 0])
    x = F.pad(args[0], (pl, pr, pt, pb), value=-float("inf"))  # padded taps never win
    return F.max_pool2d(x, tuple(at["kernel_shape"]), stride=tuple(at.get("strides", [1, 1])),
                        dilation=tuple(at.get("dilations", [1, 1])))


def _binary(fn):
    def op(g, n, args):
        return fn(*((v if torch.is_tensor(v) else _t(v)) for v in args[:2]))
    return op


def _unary(fn):
    def op(g, n, args):
        return fn(args[0], g._attr(n))
    return op


SURROGATES = {
    "QLinearConv": _qlinear_conv, "QLinearAdd": _qlinear_add, "QGemm": _qgemm, "QGemm+Q": _qgemm_q,
    "QuantizeLinear": _quantize, "DequantizeLinear": _dequantize, "Clip": _clip, "Slice": _slice, "Pad": _pad,
    "Reshape": _reshape, "Flatten": _flatten, "MaxPool": _max_pool,
    "Sub": _binary(torch.sub), "Div": _binary(torch.div), "Add": _binary(torch.add), "Mul": _binary(torch.mul),
    "Relu": _unary(lambda x, at: torch.relu(x)), "Identity": _unary(lambda x, at: x),
    "Transpose": _unary(lambda x, at: x.permute(*at["perm"])),
    "GlobalAveragePool": _unary(lambda x, at: x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)),
    "Concat": lambda g, n, args: torch.cat(args, dim=g._attr(n)["axis"]),
}


class ExactOnnx(nn.Module):
    """(B, 3, H, W) pixels in [0, 1] -> (B, K) float32 logits equal to IntExecRunner(path, semantics)'s, with
    straight-through gradients (module docstring). `surrogate_only=True` skips the exact values: the
    real-valued (unrounded) chain alone, to check the surrogates track the integer model."""

    def __init__(self, path: str | Path, semantics: str, *, surrogate_only: bool = False):
        super().__init__()
        fused = candidates("x.onnx", deployed_only=True)  # the fused integer plans (float-mlas runs unfused)
        if semantics not in fused:
            raise QadtrError(f"--semantics {semantics!r}: the exact-arithmetic model runs a .onnx under one of "
                             f"{', '.join(fused)}")
        if Path(path).suffix != ".onnx" or not Path(path).is_file():
            raise QadtrError(f"{path}: the ONNX exact-arithmetic model takes an existing .onnx (export.onnx)")
        try:
            self.graph = load_graph(path)
        except QadtrError:
            raise
        except Exception as e:  # a file onnx cannot parse
            raise QadtrError(f"{Path(path).name}: not a readable ONNX model ({type(e).__name__}); export it with "
                             "export.onnx") from None
        self.semantics, self.surrogate_only = semantics, surrogate_only
        g = self.graph
        self._steps = [(n, g.groups.get(n.output[0])) for n in g.nodes if id(n) in g.live[False]]
        kinds = {FUSED[grp.kind] if grp is not None else n.op_type for n, grp in self._steps}
        missing = sorted(kinds - set(SURROGATES))
        out, last = g.output_names[0], g.producer.get(g.output_names[0])
        int_logits = (out in g.groups and g.groups[out].kind != "gemm") or last is None or \
            last.op_type in ("Clip", "QuantizeLinear")  # the runner would dequantize them: not the graph's output
        if missing or len(g.input_shape) != 4 or g.input_shape[1] != 3 or int_logits:
            raise QadtrError(f"{Path(path).name}: ops without a torch surrogate {missing}, a non-NCHW input "
                             f"{g.input_shape} or integer logits; add the ops to eval/_exact_onnx.py SURROGATES or "
                             "export the model with export.onnx")

    def _surrogate(self, n, grp, vals: dict) -> torch.Tensor:
        """One step's surrogate from the values so far (torch, float64) and the graph's constants (numpy)."""
        g = self.graph
        if grp is not None:
            names = [grp.a.input[0], grp.b.input[0]] if grp.kind == "add" else [grp.x.input[0]]
            return SURROGATES[FUSED[grp.kind]](g, grp, [vals[i].to(SURROGATE_DTYPE) for i in names])
        args = [vals[i].to(SURROGATE_DTYPE) if i in vals else g.const.get(i) if i else None for i in n.input]
        return SURROGATES[n.op_type](g, n, args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.graph
        exact = {}
        if not self.surrogate_only:
            outs, ints = g.run(x.detach().to(torch.float32).contiguous().numpy(),
                               SEMANTICS[self.semantics].graph_name, keep_ints=True)
            exact = {**ints, **outs}  # tensor name -> executor values
        vals = {g.input_name: x.to(torch.float64)}
        for n, grp in self._steps:
            s = self._surrogate(n, grp, vals).to(torch.float64)
            o = n.output[0]
            vals[o] = s if o not in exact else _t(exact[o], torch.float64) + (s - s.detach())
        logits = vals[g.output_names[0]]
        return logits.reshape(len(logits), -1).to(torch.float32)  # (B, K): float64 of float32 values, exact
