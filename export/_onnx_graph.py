"""Graph checks and instrumented runs behind export.onnx: what the proof and eval's divergence analysis run.

    check_graph(model, net, quantized=True)   # op counts; every Conv/Gemm weight through DequantizeLinear
    fusion_report("m.onnx")                   # which convs ORT fuses into QLinearConv at ORT_ENABLE_ALL
    reference_run(net, images, 100)           # fake-quant logits, integer activations, logit LSB
    ort_run(with_outputs(model, names), images, 100, level="disable")  # those activations under ORT
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError
from qadtr._scratch import scratch

INPUT, OUTPUT = "input", "logits"  # the exported graph's input and output names


def _constant_tensors(graph) -> set[str]:
    """Names computed from initializers alone (weights, their Clip, scales): everything but activations."""
    const = {i.name for i in graph.initializer}
    for node in graph.node:  # topological order
        if node.op_type == "Constant" or (node.input and all(i in const or i == "" for i in node.input)):
            const.update(node.output)
    return const


def activation_dq_inputs(model) -> dict[str, str]:
    """Integer activation tensor name -> Brevitas module whose `.act_quant` produced it.

    These are the inputs of every DequantizeLinear fed by an activation (Q, or Q -> Clip below 8 bits).
    Node names carry the TorchScript scope: "/layers.0/layers.0.0/relu1/act_quant/export_handler/..."
    is module "layers.0.0.relu1.act_quant".
    """
    const = _constant_tensors(model.graph)
    out = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in const:
            continue
        module = ""
        for part in node.name.strip("/").split("/export_handler")[0].split("/"):
            module = part if (not module or part.startswith(module + ".")) else f"{module}.{part}"
        out[node.input[0]] = module
    return out


def check_graph(model, net, *, quantized: bool) -> dict[str, int]:
    """Structural proof of the export; returns op counts.

    Raises:
        QadtrError: a float Conv/Gemm weight, a BatchNormalization left, or op counts that do not match
            the network's quant layers (each means the deployed model would differ from the trained one).
    """
    import brevitas.nn as qnn
    import torch.nn as nn

    ops = Counter(n.op_type for n in model.graph.node)
    if ops["BatchNormalization"]:
        raise QadtrError("the export has BatchNormalization nodes: BN was not folded (export the deploy net)")
    if not quantized:
        if ops["QuantizeLinear"] or ops["DequantizeLinear"]:
            raise QadtrError("an fp32 export contains QuantizeLinear/DequantizeLinear: the model is not float")
        return dict(sorted(ops.items()))
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            for role, name in (("input", node.input[0]), ("weight", node.input[1])):
                src = producer.get(name)
                while role == "input" and src is not None and src.op_type == "MaxPool":  # ORT moves a DQ past it
                    src = producer.get(src.input[0])  # (qdq_propagation.cc): the layer still reads integers
                if src is None or src.op_type != "DequantizeLinear":
                    raise QadtrError(f"{node.name}: {role} {name!r} is float (not from DequantizeLinear); "
                                     "the layer would run unquantized")
    convs = sum(isinstance(m, qnn.QuantConv2d) for m in net.modules())
    linears = sum(isinstance(m, qnn.QuantLinear) for m in net.modules())
    floats = [n for n, m in net.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    acts = sum(isinstance(m, (qnn.QuantReLU, qnn.QuantIdentity)) for m in net.modules())
    expected = {"Conv": convs, "Gemm": linears, "QuantizeLinear": acts,
                "DequantizeLinear": acts + 2 * (convs + linears)}  # activations, weights, int32 biases
    wrong = {k: (ops[k], v) for k, v in expected.items() if ops[k] != v}
    if floats or wrong:
        raise QadtrError(f"export graph does not match the network: float layers {floats}, "
                         f"op counts (found, expected) {wrong}; a quant layer had no export handler")
    return dict(sorted(ops.items()))


def fusion_report(model_path: str | Path) -> dict:
    """Which nodes ORT_ENABLE_ALL runs on integer kernels (QLinearConv, QLinearAdd, ...) and which in float."""
    from devices.onnxrt import OnnxrtRunner

    with scratch("onnx") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        with OnnxrtRunner(model_path, graph_optimization="all", intra_op_threads=1,
                          optimized_model_path=optimized) as runner:
            kernels = runner.kernels
        import onnx

        nodes = onnx.load(str(optimized)).graph.node
    ops = Counter(n.op_type for n in nodes)
    integer = [n.name for n in nodes if n.op_type.startswith(("QLinear", "QGemm", "ConvInteger", "MatMulInteger"))]
    float_conv = [n.name for n in nodes if n.op_type in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm")]
    return {"kernels": kernels, "ops": dict(sorted(ops.items())), "integer_nodes": integer,
            "float_compute_nodes": float_conv,
            "qlinearconv": ops["QLinearConv"], "float_conv": ops["Conv"] + ops["FusedConv"]}


# -- parity ------------------------------------------------------------------------------------------------
def reference_run(net, images: np.ndarray, batch_size: int, *, feed: dict[str, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Fake-quant logits (N, K), integer activations per act_quant module, and the logit LSB (K,).

    With `feed` (module -> (N, ...) integers, e.g. ORT's), each quantizer's output is replaced by the fed
    integers after it is recorded, so every layer sees the fed upstream values: the recorded integers
    then measure each layer on its own, without differences propagated from earlier layers.
    """
    import brevitas.nn as qnn
    import torch

    from qadtr.predict import to_tensor

    ints: dict[str, list[np.ndarray]] = {}
    hooks, lsb, at = [], {}, [0]

    def record(name, o):
        ints.setdefault(name, []).append(o.int().numpy())
        if feed is None:
            return None
        fed = torch.from_numpy(feed[name][at[0]:at[0] + o.value.shape[0]].astype(np.float32))
        return o._replace(value=((fed - o.zero_point) * o.scale).to(o.value.dtype))  # same grid, fed integers

    for name, mod in net.named_modules():
        if name.endswith(".act_quant"):
            hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: record(name, o)))
    last = [m for m in net.modules() if isinstance(m, qnn.QuantLinear)][-1]
    hooks.append(last.register_forward_pre_hook(lambda m, i: lsb.__setitem__("in", i[0].scale)))
    logits = []
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                at[0] = i
                logits.append(net(to_tensor(images[i:i + batch_size])).numpy())  # (B, K)
            w_scale = last.quant_weight().scale.flatten()  # (K,) per output channel
    finally:
        for h in hooks:
            h.remove()
    step = (lsb["in"].flatten() * w_scale).numpy().astype(np.float64)  # accumulator grid of each logit
    return np.concatenate(logits), {k: np.concatenate(v) for k, v in ints.items()}, step


def ort_run(model_bytes: bytes, images: np.ndarray, batch_size: int, *, level: str) -> dict[str, np.ndarray]:
    """Every graph output of `model_bytes` on uint8 (N, H, W, 3) images under ORT CPU at graph optimization `level`
    ("disable": node by node, the proof; "all": the deployed fused kernels), batched; name -> (N, ...)."""
    from devices.onnxrt import OnnxrtRunner
    from qadtr.predict import to_tensor

    outs: dict[str, list[np.ndarray]] = {}
    with OnnxrtRunner(model_bytes, graph_optimization=level, intra_op_threads=1) as runner:
        for i in range(0, len(images), batch_size):
            for k, v in runner.infer({INPUT: to_tensor(images[i:i + batch_size]).numpy()}).items():
                outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


def with_outputs(model, names: list[str]) -> bytes:
    """The model with extra graph outputs (typed by shape inference), serialized."""
    import onnx

    m = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in m.graph.value_info}
    for name in names:
        if name not in known:
            raise QadtrError(f"shape inference gave no type for {name}; cannot read it back from ORT")
        m.graph.output.append(known[name])
    return m.SerializeToString()
