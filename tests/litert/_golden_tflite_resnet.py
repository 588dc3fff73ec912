"""Golden lowering: export._tflite_graph's ResNet-only build_tflite, frozen as it was before the fx lowering.

tests/litert/test_tflite_lower.py checks that export._tflite_lower writes the same bytes for every qadtr
ResNet (FINN-style: the byte identity is the proof that the graph walk lowers what the class walk did).
It reads the ResNet's attribute names (conv1, layers, relu1, q_main, ...); keep it unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from export._tflite_graph import EXPORTER_VERSION, Built, _Graph, _Q, _T, _act_q, _affine, _bias, _requant, _weights
from qadtr._errors import QadtrError


def _conv(g: _Graph, conv, x: _T, out_q: _Q, name: str, relu: bool) -> _T:
    """CONV_2D int8 with int32 bias; torch's symmetric padding via SAME (stride 1) or PAD + VALID."""
    S = g.S
    (k, _), (s, s2), (p, p2) = conv.kernel_size, conv.stride, conv.padding
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or k != conv.kernel_size[1] or s != s2 or p != p2:
        raise QadtrError(f"{name}: grouped, dilated or non-square convolution is not supported by the TFLite "
                         "exporter; use export.onnx")
    w_int, s_w = _weights(conv, name)
    b_int = _bias(conv, x.q.scale, s_w, dtype="int32")
    wt, bt = _affine(g, name, w_int.transpose(0, 2, 3, 1), s_w=s_w, b_int=b_int, s_in=x.q.scale,  # OIHW -> OHWI
                     s_out=out_q.scale)
    _, h, w, _ = x.shape
    if s == 1 and 2 * p == k - 1:
        padding = S.Padding.SAME
    else:
        if p:
            pads = g.tensor(f"{name}/pads", [4, 2], "int32", data=[[0, 0], [p, p], [p, p], [0, 0]])
            y = g.act(f"{name}/pad", (1, h + 2 * p, w + 2 * p, x.shape[3]), x.q)
            g.op("PAD", [x.index, pads.index], [y.index], version=2, opt=S.PadOptionsT(), opt_type="PadOptions")
            x, h, w = y, h + 2 * p, w + 2 * p
        padding = S.Padding.VALID
    ho, wo = (h - 1) // s + 1 if padding == S.Padding.SAME else (h - k) // s + 1, \
        (w - 1) // s + 1 if padding == S.Padding.SAME else (w - k) // s + 1
    out = g.act(name, (1, ho, wo, len(s_w)), out_q)
    opt = S.Conv2DOptionsT()
    opt.padding, opt.strideH, opt.strideW, opt.dilationHFactor, opt.dilationWFactor = padding, s, s, 1, 1
    opt.fusedActivationFunction = S.ActivationFunctionType.RELU if relu else S.ActivationFunctionType.NONE
    g.op("CONV_2D", [x.index, wt.index, bt.index], [out.index], version=3, opt=opt, opt_type="Conv2DOptions")
    return out



def _block(g: _Graph, blk, x: _T, prefix: str) -> _T:
    """One BasicBlock: relu2(q_main(conv2(relu1(conv1 x))) + q_short(shortcut x))."""
    S = g.S
    q1, qm, qs, q2 = (_act_q(getattr(blk, n), f"{prefix}.{n}") for n in ("relu1", "q_main", "q_short", "relu2"))
    h = g.clamp(_conv(g, blk.conv1, x, q1, f"{prefix}.relu1", relu=True), f"{prefix}.relu1")
    g.named[f"{prefix}.relu1"] = h
    main = g.clamp(_conv(g, blk.conv2, h, qm, f"{prefix}.q_main", relu=False), f"{prefix}.q_main")
    g.named[f"{prefix}.q_main"] = main
    if blk.proj is not None:  # resnet8: 1x1 strided projection conv, quantized by q_short
        short = g.clamp(_conv(g, blk.proj, x, qs, f"{prefix}.q_short", relu=False), f"{prefix}.q_short")
    else:
        if blk.downsample:  # option A: x[:, :, ::2, ::2], zero channels on both sides (zero = the zero point)
            b, hh, ww, c = x.shape
            const = lambda n, v: g.tensor(f"{prefix}.shortcut/{n}", [len(v)], "int32", data=v).index  # noqa: E731
            y = g.act(f"{prefix}.shortcut/slice", (b, (hh + 1) // 2, (ww + 1) // 2, c), x.q)
            opt = S.StridedSliceOptionsT()
            opt.beginMask = opt.endMask = 0b1111
            g.op("STRIDED_SLICE", [x.index, const("begin", [0] * 4), const("end", [0] * 4), const("strides", [1, 2, 2, 1])],
                 [y.index], version=2, opt=opt, opt_type="StridedSliceOptions")
            pads = g.tensor(f"{prefix}.shortcut/pads", [4, 2], "int32", data=[[0, 0], [0, 0], [0, 0], [blk.pad, blk.pad]])
            z = g.act(f"{prefix}.shortcut/pad", (b, y.shape[1], y.shape[2], c + 2 * blk.pad), x.q)
            g.op("PAD", [y.index, pads.index], [z.index], version=2, opt=S.PadOptionsT(), opt_type="PadOptions")
            x = z
        short = g.clamp(_requant(g, x, qs, name=f"{prefix}.q_short"), f"{prefix}.q_short")
    g.named[f"{prefix}.q_short"] = short
    out = g.act(f"{prefix}.relu2", main.shape, q2)
    g.op("ADD", [main.index, short.index], [out.index], version=2,
         opt=S.AddOptionsT(fusedActivationFunction=S.ActivationFunctionType.RELU), opt_type="AddOptions")
    out = g.clamp(out, f"{prefix}.relu2")
    g.named[f"{prefix}.relu2"] = out
    return out



@torch.no_grad()
def golden_build_tflite(net, height: int, width: int, *, debug: bool = False, headroom: bool = True) -> Built:
    """What export._tflite_graph.build_tflite wrote for a deploy-form qadtr ResNet before the fx lowering."""
    from ai_edge_litert import schema_py_generated as S

    g = _Graph(S, headroom)
    mean = net.normalize.mean.reshape(-1).numpy().astype(np.float32)  # (3,)
    std = net.normalize.std.reshape(-1).numpy().astype(np.float32)  # (3,)
    shape = (1, height, width, 3)
    x = g.tensor("pixels", shape, "float32", dynamic=True)
    centred = g.tensor("normalize/sub", shape, "float32", dynamic=True)
    normed = g.tensor("normalize/div", shape, "float32", dynamic=True)
    g.op("SUB", [x.index, g.tensor("normalize/mean", [3], "float32", data=mean).index], [centred.index], version=1,
         opt=S.SubOptionsT(), opt_type="SubOptions")
    g.op("DIV", [centred.index, g.tensor("normalize/std", [3], "float32", data=std).index], [normed.index], version=1,
         opt=S.DivOptionsT(), opt_type="DivOptions")
    h = g.act("quant_input", shape, _act_q(net.quant_input, "quant_input"))
    g.op("QUANTIZE", [normed.index], [h.index], version=2)
    h = g.clamp(h, "quant_input")
    g.named["quant_input"] = h
    h = g.clamp(_conv(g, net.conv1, h, _act_q(net.relu, "relu"), "relu", relu=True), "relu")
    g.named["relu"] = h
    for i, stage in enumerate(net.layers):
        for j, blk in enumerate(stage):
            h = _block(g, blk, h, f"layers.{i}.{j}")
    # global average pool, requantized to pool_quant's unsigned 8 bits: one rounding, as in torch
    qp = _act_q(net.pool_quant, "pool_quant")
    pooled = g.act("pool_quant", (1, h.shape[3]), qp)
    axes = g.tensor("pool/axes", [2], "int32", data=[1, 2])
    g.op("MEAN", [h.index, axes.index], [pooled.index], version=2, opt=S.ReducerOptionsT(keepDims=False),
         opt_type="ReducerOptions")
    g.named["pool_quant"] = pooled
    # 16x8 classifier: int16 copy of the pooled integers (same scale, zero point 0: exact), int64 bias
    q16 = _Q(qp.scale, 0, -32768, 32767)
    p16 = g.act("pool_quant/int16", pooled.shape, q16, dtype="int16")
    g.op("QUANTIZE", [pooled.index], [p16.index], version=3)
    w_int, s_w = _weights(net.linear, "linear")  # (classes, C): pooled features have no spatial order
    b_int = _bias(net.linear, qp.scale, s_w, dtype="int64")
    acc_lsb = np.float64(qp.scale) * s_w.astype(np.float64)  # (classes,)
    bound = float((acc_lsb * (255 * np.abs(w_int.astype(np.int64)).sum(1) + np.abs(b_int))).max())
    s_out = max(bound, 1e-6) / 32767  # worst-case |logit| maps to int16 max: no saturation possible
    wt, bt = _affine(g, "linear", w_int, s_w=s_w, b_int=b_int, s_in=qp.scale, s_out=s_out)
    y16 = g.act("logits/int16", (1, w_int.shape[0]), _Q(s_out, 0, -32768, 32767), dtype="int16")
    g.op("FULLY_CONNECTED", [p16.index, wt.index, bt.index], [y16.index], version=11,
         opt=S.FullyConnectedOptionsT(), opt_type="FullyConnectedOptions")
    logits = g.tensor("logits", y16.shape, "float32", dynamic=True)
    g.op("DEQUANTIZE", [y16.index], [logits.index], version=4)
    outputs = [logits.index] + ([t.index for t in g.named.values()] if debug else [])
    counts: dict[str, int] = {}
    for kind, _ in g.ops:
        counts[kind] = counts.get(kind, 0) + 1
    data = g.finish([x.index], outputs, f"qadtr export.tflite v{EXPORTER_VERSION}")
    return Built(data, counts, s_out, {name: t.q for name, t in g.named.items()})
