"""The state of export/_tflite_lower.py's walk over a torch.fx graph, shared by its handler modules.

    L = _Lowering(graph, net, height, width)       # L.val(arg), L.quantized(arg, where), L.consume(pending, where)
    _Pending("conv", "stem", (x,), module=conv)    # a float result its consuming quantizer writes

export/_tflite_lower.py (the walk, the handler tables) and export/_tflite_layers.py (pooling, concatenation,
hidden fully-connected layers) both build on these; a handler returns a `_T` (an integer tensor in the graph)
or a `_Pending`, and refuses what it cannot map in one QadtrError line naming the layer and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn

from export._tflite_graph import _Graph, _T
from qadtr._errors import QadtrError

_ONNX = "use export.onnx"  # the fix for a layer only the ONNX exporter maps
_QUANTIZE_AFTER = "put a QuantIdentity (or QuantReLU) after it"  # the fix for a float result with no quantizer


def _is_brevitas(m: nn.Module) -> bool:
    return type(m).__module__.startswith("brevitas.")


@dataclass(frozen=True)
class _Pending:
    """A float result not in the graph yet: the quantizer that consumes it writes its op."""

    kind: str  # "conv", "linear", "add", "mean" or "cat"
    source: str  # where it came from, for refusals
    inputs: tuple[_T, ...]  # cat: its operands, in order
    module: nn.Module | None = None  # the conv or linear
    weights: tuple[np.ndarray, np.ndarray] | None = None  # conv: its _weights, checked at the layer
    flat: bool = False  # mean: the pooled H, W dropped (flatten or keepdim=False)
    owner: str = ""  # mean: the enclosing module path (names its constant)


class _Lowering:
    """The walk's state: the flatbuffer graph, each fx node's value, what was consumed."""

    def __init__(self, g: _Graph, net: nn.Module, height: int, *, width: int):
        self.g, self.modules, self.size = g, dict(net.named_modules()), (height, width)
        self.env: dict[fx.Node, Any] = {}
        self.consumed: set[int] = set()  # ids of _Pending values already lowered
        self.input: _T | None = None
        self.logits: _T | None = None
        self.logit_scale = 0.0

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    def val(self, arg) -> Any:
        return self.env[arg] if isinstance(arg, fx.Node) else arg

    def quantized(self, arg, where: str) -> _T:
        """The integer tensor `arg` stands for; refuses a float result or a float tensor."""
        x = self.val(arg)
        if isinstance(x, _Pending):
            raise QadtrError(f"{x.source}: its float {x.kind} output reaches {where} unquantized; {_QUANTIZE_AFTER}")
        if not isinstance(x, _T) or x.q is None:
            raise QadtrError(f"{where}: takes a float tensor; put a QuantIdentity before it")
        return x

    def consume(self, p: _Pending, where: str) -> None:
        if id(p) in self.consumed:
            raise QadtrError(f"{p.source}: its float {p.kind} output feeds more than one layer (again at {where}); "
                             f"{_QUANTIZE_AFTER} and share that")
        self.consumed.add(id(p))

    def unique(self, base: str, leaf: str, node: fx.Node) -> str:
        """`base` unless `base/leaf` is taken (a second slice or pad in one module), then `base.<node name>`."""
        taken = any(t.name == f"{base}/{leaf}" for t in self.g.tensors)
        return f"{base}.{node.name}" if taken else base


def _owner(node: fx.Node) -> str:
    """The path of the innermost module whose forward made `node` ('' at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _where(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    name = getattr(node.target, "__name__", str(node.target))
    return f"{_owner(node) or 'forward'}: {node.op.replace('call_', '')} {name}"
