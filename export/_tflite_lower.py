"""Any deploy-form Brevitas CNN -> full-integer TFLite bytes: a torch.fx graph walked by a handler table.

    built = build_tflite(net, 32, 32)              # Built(data, op counts, output scale, activations)
    check_exportable(net)                          # QadtrError naming the first layer with no mapping

The net is traced with torch.fx (Brevitas layers and the input Normalize as leaves); each node is lowered by
one small handler keyed by its module type (`_MODULES`), function (`_FUNCTIONS`) or method (`_METHODS`), as
Brevitas' export managers are built: a new layer kind is one handler. A conv, linear, add or pool yields a
float result not in the graph yet (`_Pending`); the quantizer consuming it writes the op at its own scale
(fused RELU for a QuantReLU), named after the quantizer's module path: the activations the proof compares.
Anything unhandled is refused (module path, type, fix) in one QadtrError line before any file is written.
Slicing and channel padding (ResNet option A) are named `<enclosing module>.shortcut/...`.
"""
from __future__ import annotations

import operator
from dataclasses import replace
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from export._tflite_graph import (EXPORTER_VERSION, Built, _Graph, _Q, _T, _act_q, _add_op, _classifier_16x8,
                                  _conv, _mean_op, _normalize_op, _requant, _weights)
from export._tflite_layers import _cat, _emit_cat, _emit_linear, _max_pool_function, _max_pool_module
from export._tflite_walk import _ONNX, _Lowering, _Pending, _is_brevitas, _owner, _where
from qadtr._errors import QadtrError
from qadtr.models.resnet import Normalize

class _Tracer(fx.Tracer):
    """Brevitas layers and the input normalisation are single nodes; everything else is traced through."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_brevitas(m) or isinstance(m, Normalize) or super().is_leaf_module(m, module_qualified_name)


def trace(net: nn.Module) -> fx.Graph:
    """`net`'s torch.fx graph (see `_Tracer`); QadtrError when torch.fx cannot trace its forward."""
    try:
        return _Tracer().trace(net)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the same fix
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise QadtrError(f"torch.fx cannot trace {type(net).__name__} ({first}); make its forward free of "
                         f"data-dependent control flow, or {_ONNX}") from None


# -- emitters: the ops a quantizer writes for the float result it consumes (see export._tflite_graph) --
def _emit_conv(L: _Lowering, p: _Pending, q: _Q, *, name: str, relu: bool) -> _T:
    return _conv(L.g, p.module, p.inputs[0], out_q=q, name=name, relu=relu, weights=p.weights)


def _emit_add(L: _Lowering, p: _Pending, q: _Q, *, name: str, relu: bool) -> _T:
    return _add_op(L.g, *p.inputs, q=q, name=name, relu=relu)


def _emit_mean(L: _Lowering, p: _Pending, q: _Q, *, name: str, relu: bool) -> _T:
    if relu and q.zp > q.lo:
        raise QadtrError(f"{name}: a QuantReLU with negative levels after a pool has no TFLite op; make its "
                         "quantizer unsigned or use a QuantIdentity")
    return _mean_op(L.g, p.inputs[0], q, name=name, axes=f"{p.owner + '.' if p.owner else ''}pool/axes",
                    keep_dims=not p.flat)


_EMIT: dict[str, Callable[..., _T]] = {"conv": _emit_conv, "add": _emit_add, "mean": _emit_mean,
                                       "linear": _emit_linear, "cat": _emit_cat}


# -- module handlers ---------------------------------------------------------------------------------------
def _quantizer(L: _Lowering, node: fx.Node) -> _T:
    """QuantIdentity / QuantReLU: writes the op of the float result it consumes, at its own scale."""
    import brevitas.nn as qnn

    g, m, name = L.g, L.module(node), str(node.target)
    q, relu = _act_q(m, name), isinstance(m, qnn.QuantReLU)
    x = L.val(node.args[0])
    if isinstance(x, _Pending):
        L.consume(x, name)
        t = _EMIT[x.kind](L, x, q, name=name, relu=relu)
    elif isinstance(x, _T) and x.q is None:  # the float input (pixels or normalised): QUANTIZE
        if relu and q.zp > q.lo:
            raise QadtrError(f"{name}: a QuantReLU with negative levels on a float tensor has no TFLite op; put a "
                             "QuantIdentity before it or make its quantizer unsigned")
        t = g.act(name, x.shape, q)
        g.op("QUANTIZE", [x.index], [t.index], version=2)
    else:  # an integer tensor at another scale: a unit-weight 1x1 depthwise requantizes (see _requant)
        t = _requant(g, L.quantized(node.args[0], name), q, name=name, relu=relu)
    t = g.clamp(t, name)
    g.named[name] = t
    return t


def _conv_layer(L: _Lowering, node: fx.Node) -> _Pending:
    conv, name = L.module(node), str(node.target)
    x = L.quantized(node.args[0], name)
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise QadtrError(f"{name}: QuantConv2d with padding {conv.padding!r} ({conv.padding_mode}) is not lowered; "
                         f"give integer zero padding or {_ONNX}")
    if conv.groups != 1 and not (conv.groups == conv.in_channels == conv.out_channels):
        raise QadtrError(f"{name}: QuantConv2d with groups={conv.groups} ({conv.in_channels} -> {conv.out_channels} "
                         "channels) has no TFLite kernel (CONV_2D takes groups=1, DEPTHWISE_CONV_2D groups = in = "
                         f"out channels); split it into per-group convs and concatenate, or {_ONNX}")
    if len(x.shape) != 4:
        raise QadtrError(f"{name}: QuantConv2d on a {len(x.shape)}-d tensor; give it (B, C, H, W)")
    weights = _weights(conv, name)  # refuses >8-bit or asymmetric weights here, at the layer
    return _Pending("conv", name, (x,), module=conv, weights=weights)


def _linear_layer(L: _Lowering, node: fx.Node) -> _Pending:
    name = str(node.target)
    x = L.quantized(node.args[0], name)
    if len(x.shape) != 2:
        raise QadtrError(f"{name}: QuantLinear on a {len(x.shape)}-d tensor; global-average-pool and flatten "
                         "to (B, C) before it")
    _weights(L.module(node), name)
    return _Pending("linear", name, (x,), module=L.module(node))


def _normalize(L: _Lowering, node: fx.Node) -> _T:
    """(x - mean) / std in float, as torch computes it."""
    if L.val(node.args[0]) is not L.input:
        raise QadtrError(f"{node.target}: Normalize must take the network's input pixels; move it first")
    m = L.module(node)
    return _normalize_op(L.g, L.input, m.mean.reshape(-1).numpy(), std=m.std.reshape(-1).numpy(), name=str(node.target))


def _identity(L: _Lowering, node: fx.Node) -> Any:
    return L.val(node.args[0])


def _batchnorm(L: _Lowering, node: fx.Node) -> Any:
    raise QadtrError(f"{node.target}: BatchNorm left unfolded; export the deploy net (export._common.deploy_model)")


def _module_pool(L: _Lowering, node: fx.Node) -> _Pending:
    return _pool(L, node, L.module(node).output_size)


def _module_flatten(L: _Lowering, node: fx.Node) -> Any:
    return _flatten(L, node, L.module(node).start_dim, end=L.module(node).end_dim)


# -- function and method handlers ------------------------------------------------------------------------
def _pool(L: _Lowering, node: fx.Node, size) -> _Pending:
    where = _where(node)
    if size not in (1, (1, 1), [1, 1]):
        raise QadtrError(f"{where}: adaptive average pool to {size} is not lowered; pool to 1 (global) or {_ONNX}")
    return _Pending("mean", where, (L.quantized(node.args[0], where),), owner=_owner(node))


def _f_pool(L: _Lowering, node: fx.Node) -> _Pending:
    return _pool(L, node, node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size"))


def _mean(L: _Lowering, node: fx.Node) -> _Pending:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = {d % 4 for d in ((dims,) if isinstance(dims, int) else (dims or ()))}
    if dims != {2, 3}:
        raise QadtrError(f"{_where(node)}: mean over dims {sorted(dims)} is not lowered; average over H, W (2, 3)")
    p = _pool(L, node, 1)
    return replace(p, flat=not (node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)))


def _flatten(L: _Lowering, node: fx.Node, start: int = 1, *, end: int = -1) -> Any:
    x = L.val(node.args[0])
    ndim = 4 if isinstance(x, _Pending) else len(getattr(x, "shape", ()))
    if start != 1 or end not in (-1, ndim - 1):
        raise QadtrError(f"{_where(node)}: flatten({start}, {end}) is not lowered; flatten(1) after a global pool")
    if isinstance(x, _Pending) and x.kind == "mean":
        L.consume(x, _where(node))
        return replace(x, flat=True)
    t = L.quantized(node.args[0], _where(node))
    if len(t.shape) != 2:
        raise QadtrError(f"{_where(node)}: flatten of a (B, C, H, W) tensor would reorder it (TFLite is NHWC); "
                         "global-average-pool right before flatten")
    return t


def _f_flatten(L: _Lowering, node: fx.Node) -> Any:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return _flatten(L, node, start, end=end)


def _add(L: _Lowering, node: fx.Node) -> _Pending:
    """A residual add of two integer tensors: ADD, written by the quantizer after it."""
    where = _where(node)
    if len(node.args) != 2 or node.kwargs:
        raise QadtrError(f"{where}: add with alpha or more operands is not lowered; add two quantized tensors")
    a, b = (L.quantized(arg, where) for arg in node.args)
    if a.shape != b.shape:
        raise QadtrError(f"{where}: adds shapes {a.shape} and {b.shape}; broadcasting adds are not lowered")
    return _Pending("add", where, (a, b))


def _getattr(L: _Lowering, node: fx.Node) -> Any:
    if node.args[1] != "value":
        raise QadtrError(f"{_where(node)}: reads QuantTensor.{node.args[1]}; only .value is lowered")
    return L.val(node.args[0])


def _slice(L: _Lowering, node: fx.Node) -> _T:
    """x[:, :, ::sh, ::sw]: STRIDED_SLICE (the subsampling of a ResNet option-A shortcut)."""
    S, g, where = L.g.S, L.g, _where(node)
    x, index = L.quantized(node.args[0], where), node.args[1]
    index = tuple(index) if isinstance(index, tuple) else (index,)
    full = [isinstance(i, slice) and i.start in (None, 0) and i.stop is None for i in index]
    if len(x.shape) != 4 or len(index) > 4 or not all(full) or any(i.step not in (None, 1) for i in index[:2]):
        raise QadtrError(f"{where}: indexing {index} is not lowered; only x[:, :, ::s, ::s] subsampling is")
    sh, sw = [(index[d].step or 1) if d < len(index) else 1 for d in (2, 3)]
    base = L.unique(f"{_owner(node) + '.' if _owner(node) else ''}shortcut", "slice", node)
    b, h, w, c = x.shape
    const = lambda n, v: g.tensor(f"{base}/{n}", [len(v)], "int32", data=v).index  # noqa: E731
    y = g.act(f"{base}/slice", (b, -(-h // sh), -(-w // sw), c), x.q)
    opt = S.StridedSliceOptionsT()
    opt.beginMask = opt.endMask = 0b1111
    g.op("STRIDED_SLICE", [x.index, const("begin", [0] * 4), const("end", [0] * 4), const("strides", [1, sh, sw, 1])],
         [y.index], version=2, opt=opt, opt_type="StridedSliceOptions")
    return y


def _pad(L: _Lowering, node: fx.Node) -> _T:
    """F.pad with zeros (the zero point: a real zero) on W, H, C: PAD (ResNet option-A channel padding)."""
    S, g, where = L.g.S, L.g, _where(node)
    x, widths = L.quantized(node.args[0], where), list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    if len(x.shape) != 4 or mode != "constant" or value not in (None, 0, 0.0) or len(widths) not in (2, 4, 6):
        raise QadtrError(f"{where}: pad {widths} mode {mode} value {value} is not lowered; only zero padding of "
                         "W, H and channels is")
    wl, wr, ht, hb, cf, cb = widths + [0] * (6 - len(widths))
    base = L.unique(f"{_owner(node) + '.' if _owner(node) else ''}shortcut", "pad", node)
    b, h, w, c = x.shape
    pads = g.tensor(f"{base}/pads", [4, 2], "int32", data=[[0, 0], [ht, hb], [wl, wr], [cf, cb]])
    z = g.act(f"{base}/pad", (b, h + ht + hb, w + wl + wr, c + cf + cb), x.q)
    g.op("PAD", [x.index, pads.index], [z.index], version=2, opt=S.PadOptionsT(), opt_type="PadOptions")
    return z


def _node(L: _Lowering, node: fx.Node) -> Any:
    """Dispatch one fx node to its handler, or refuse it."""
    if node.op == "placeholder":
        if L.input is not None:
            raise QadtrError(f"forward takes a second input {node.name!r}; the TFLite exporter lowers one image input")
        L.input = L.g.tensor("pixels", (1, *L.size, 3), "float32", dynamic=True)
        return L.input
    if node.op == "output":
        out = L.val(node.args[0])
        if not (isinstance(out, _Pending) and out.kind == "linear"):
            raise QadtrError("the network's output is not a QuantLinear's float logits; end it with a QuantLinear")
        L.consume(out, "the output")
        L.logits, L.logit_scale = _classifier_16x8(L.g, out.inputs[0], out.module, name=out.source)  # 16x8, DEQUANTIZE
        return L.logits
    if node.op == "call_module":
        m = L.module(node)
        handler = next((_MODULES[c] for c in type(m).__mro__ if c in _MODULES), None)
        if handler is None:
            fix = _ONNX if _is_brevitas(m) else f"replace it with a Brevitas layer or {_ONNX}"
            raise QadtrError(f"{node.target}: {type(m).__name__} has no TFLite mapping; {fix}")
        return handler(L, node)
    table = _FUNCTIONS if node.op == "call_function" else _METHODS if node.op == "call_method" else {}
    if node.target not in table:
        raise QadtrError(f"{_where(node)} has no TFLite mapping; express it with Brevitas layers or {_ONNX}")
    return table[node.target](L, node)


def _module_handlers() -> dict[type, Callable[[_Lowering, fx.Node], Any]]:
    import brevitas.nn as qnn

    return {qnn.QuantIdentity: _quantizer, qnn.QuantReLU: _quantizer, qnn.QuantConv2d: _conv_layer,
            qnn.QuantLinear: _linear_layer, Normalize: _normalize, nn.Identity: _identity, nn.Dropout: _identity,
            nn.BatchNorm2d: _batchnorm, nn.AdaptiveAvgPool2d: _module_pool, nn.Flatten: _module_flatten,
            nn.MaxPool2d: _max_pool_module}


_MODULES: dict[type, Callable[[_Lowering, fx.Node], Any]] = {}  # filled on first use (brevitas imports late)
_FUNCTIONS: dict[Any, Callable[[_Lowering, fx.Node], Any]] = {
    operator.add: _add, torch.add: _add, getattr: _getattr, operator.getitem: _slice, F.pad: _pad,
    F.adaptive_avg_pool2d: _f_pool, torch.flatten: _f_flatten, torch.mean: _mean, F.max_pool2d: _max_pool_function,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat}
_METHODS: dict[str, Callable[[_Lowering, fx.Node], Any]] = {
    "flatten": _f_flatten, "mean": _mean, "add": _add}


@torch.no_grad()
def build_tflite(net: nn.Module, height: int, width: int, *, debug: bool = False, headroom: bool = True) -> Built:
    """The .tflite of a deploy-form Brevitas CNN (see the module docstring) and what its proof needs.

    `debug=True` also makes every compared activation a subgraph output (named after its torch module);
    `headroom=False` writes Brevitas' integers unscaled (see export._tflite_graph._affine).

    Raises:
        QadtrError: a layer with no exact mapping (its path, type and the fix), before anything is written.
    """
    from ai_edge_litert import schema_py_generated as S

    if not any(_is_brevitas(m) for m in net.modules()):
        raise QadtrError(f"the TFLite exporter lowers Brevitas-quantized networks, not a {type(net).__name__}; "
                         f"{_ONNX}")
    if not _MODULES:
        _MODULES.update(_module_handlers())
    L = _Lowering(_Graph(S, headroom), net, height, width=width)
    for node in trace(net).nodes:
        L.env[node] = _node(L, node)
    g = L.g
    outputs = [L.logits.index] + ([t.index for t in g.named.values()] if debug else [])
    counts: dict[str, int] = {}
    for kind, _ in g.ops:
        counts[kind] = counts.get(kind, 0) + 1
    data = g.finish([L.input.index], outputs, f"qadtr export.tflite v{EXPORTER_VERSION}")
    return Built(data, counts, L.logit_scale, {name: t.q for name, t in g.named.items()})


def check_exportable(net: nn.Module, height: int = 32, width: int = 32) -> None:
    """Raise QadtrError (before anything is written) if `net` has a layer this exporter can't express:
    the whole lowering, at `height` x `width`, with its bytes dropped."""
    build_tflite(net, height, width)
