"""MaxPool and the int-output QGemm of devices/_intexec_onnx.py, as ONNX Runtime's CPU EP runs them at ORT_ENABLE_ALL.

    nodes = propagate_dq(nodes, const)                # DQ -> MaxPool rewritten to MaxPool (on the integers) -> DQ
    y = max_pool(x, attrs)                            # ONNX MaxPool of (B, C, H, W) integers or floats
    q = run_gemm_q(graph, group, env, semantics=sem)  # DQ -> Gemm [-> Relu] -> Q fused into QGemm of integer output

Brevitas exports a max pool on a QuantTensor as DequantizeLinear -> MaxPool with no QuantizeLinear after it (the
layer after it reads the float). ORT's QDQPropagationTransformer (qdq_transformer/qdq_propagation.cc) moves the
DQ forward through MaxPool (inserting a Q -> DQ pair of the same scale and zero point after it, one DQ per
consumer edge that is not a Q), and the DropQDQ selectors then run MaxPool on the integers: `propagate_dq`
makes that rewrite (a DQ with exactly this one consumer, the MaxPool's output not a graph output), so the
conv after it fuses as ORT fuses it. Max pooling is exact on integers and on floats alike.
QGemm with y_scale (contrib_ops/cpu/quantization/quant_gemm.cc): int32 accumulator with the bias, output
scale (alpha * a_scale) * b_scale[n] / y_scale in float32, MLAS_QGEMM_REQUANT_OUTPUT_PROCESSOR
(MlasRequantizeOutput: float(acc) * scale, round half to even, + zero point, saturate), as QLinearConv.
A Relu between the Gemm and the Q is only dropped (ReluQuantFusion) where the Q zero point is its type's
minimum, where the saturation already clamps at it; anything else ORT does not fuse, and is refused here.
"""

from __future__ import annotations

import numpy as np

from devices._intexec_mlas import requant_f32

_INT_MIN = {np.dtype(np.int8): -128, np.dtype(np.uint8): 0}  # the zero point at which ReluQuantFusion drops a Relu


def _err(msg: str):
    from devices._runner import RunnerError

    return RunnerError(msg)


def propagate_dq(nodes: list, const: dict, graph_outputs: list[str]) -> list:
    """`nodes` with each activation DQ -> MaxPool (the DQ's only consumer) as MaxPool -> DQ (see the docstring)."""
    from onnx import helper

    users: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            users.setdefault(i, []).append(n)
    producer = {o: n for n in nodes for o in n.output}
    out = []
    for n in nodes:
        dq = producer.get(n.input[0]) if n.op_type == "MaxPool" and n.input else None
        after = users.get(n.output[0], [])
        if (dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in const or len(users[dq.output[0]]) != 1
                or len(n.output) != 1 or n.output[0] in graph_outputs or not after
                or any(u.op_type == "QuantizeLinear" for u in after)):
            out.append(n)
            continue
        ints = f"{n.output[0]}_q_to_dq"  # ORT's name for the integers between the inserted Q and DQ
        pool = helper.make_node("MaxPool", [dq.input[0]], [ints], name=n.name)
        pool.attribute.extend(n.attribute)
        out += [pool, helper.make_node("DequantizeLinear", [ints, *dq.input[1:]], [n.output[0]], name=f"{n.name}_dq")]
    return out


def max_pool(x: np.ndarray, at: dict) -> np.ndarray:
    """ONNX MaxPool (2-D, NOTSET padding, floor mode) of (B, C, H, W): padded taps never win."""
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or at.get("ceil_mode", 0) or \
            at.get("storage_order", 0) or len(at["kernel_shape"]) != 2:
        raise _err(f"MaxPool {at}: only 2-D NOTSET floor-mode pooling is supported by the integer executor")
    (kh, kw), (sh, sw) = at["kernel_shape"], at.get("strides", [1, 1])
    (dh, dw), (pt, pl, pb, pr) = at.get("dilations", [1, 1]), at.get("pads", [0, 0, 0, 0])
    low = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -np.inf
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=low)
    oh, ow = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    taps = [xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]
    return np.max(taps, axis=0)  # (B, C, OH, OW)


def run_gemm_q(graph, g, env: dict, *, semantics: str) -> np.ndarray:
    """QGemm with an integer output: (B, N) integers in the Q's dtype (see the module docstring)."""
    xs, xz = graph._qparams(g.x)
    ys, yz = graph._qparams(g.q)
    if g.relu and int(yz) != _INT_MIN.get(np.dtype(yz.dtype)):
        raise _err(f"{g.q.name}: Gemm -> Relu -> QuantizeLinear with zero point {int(yz)} keeps its Relu in ORT "
                   "(no QGemm fusion); make the quantizer after the Relu unsigned")
    a, za = graph._u8(env[g.x.input[0]], xz)  # (B, K)
    w2 = g.w.T if g.attrs.get("transB", 0) else g.w  # (K, N)
    acc = graph._acc(a, za, w2, semantics=semantics) + (0 if g.bias is None else g.bias)
    scale = (np.float32(g.attrs.get("alpha", 1.0)) * xs) * g.w_scale / ys  # quant_gemm.cc ComputeOutputScale
    return requant_f32(acc.astype(np.int32).astype(np.float64), scale.astype(np.float32), int(yz), dtype=yz.dtype,
                       relu=False)
