"""A numpy-only integer executor for the project's QDQ .onnx exports, replaying ONNX Runtime's CPU kernels.

    g = OnnxIntGraph("w8.onnx")
    outs, ints = g.run(x, "single", keep_ints=True)   # x: (B, 3, H, W) float32 in [0, 1]

The graph is parsed once (with `onnx`, imported lazily); QDQ groups are fused as ORT_ENABLE_ALL fuses them
(core/optimizer/qdq_transformer/selectors_actions: DQ->Conv[->Relu]->Q => QLinearConv, DQ+DQ->Add[->Relu]->Q
=> QLinearAdd, DQ->Gemm[->Q] => QGemm with float or integer output; DQ->MaxPool on the integers, see
devices/_intexec_onnx_ops.py); everything else runs as ORT runs it unfused, in float32 (DequantizeLinear ->
float op -> QuantizeLinear). Signed activations are handled in ORT's u8 domain
(qdq_s8_to_u8 transformer: int8 with zero point z becomes uint8 with z + 128; results are shifted back).

SEMANTICS
- "single": x86 with AVX512-VNNI / AVX-VNNI (VPDPBUSD, exact int32 dot products).
  QLinearConv: core/providers/cpu/quantization/qlinearconv.cc (output scale = x_scale * w_scale[m] / y_scale in
  float32, int32 bias added to the accumulator) -> core/mlas/lib/quantize.cpp MlasRequantizeOutput and the
  ConvSym kernels' post-processing (float(acc) * scale, round-half-even, + zero point, saturate).
  QGemm (float out): contrib_ops/cpu/quantization/quant_gemm.cc, float(acc + bias) * (alpha * a_scale * b_scale).
  QLinearAdd: core/mlas/lib/intrinsics/avx2/qladd_avx2.cpp (two float32 FMAs with ScaleA/ScaleC, ScaleB/ScaleC and
  a fixed part, round-half-even, saturate), in the u8 domain.
  GlobalAveragePool (float): core/mlas/lib/pooling.cpp MlasPoolGlobalKernel (4 float lanes, (l0+l2)+(l1+l3),
  tail, / size). QuantizeLinear: core/mlas/lib/quantize.cpp (x / scale, round-half-even, + zero point, saturate).
- "single-u8s8sat": the same on x86 AVX2 without VNNI: the MLAS u8s8 kernels (qgemm_kernel_avx2.cpp /
  QgemmU8S8KernelAvx2.S, ConvSymKernelAvx2) multiply u8 activations by s8 weights with VPMADDUBSW, which adds
  each adjacent pair of products (K indices 2j, 2j+1) into int16 WITH SATURATION, then VPMADDWD/VPADDD into int32.
  K order is the NHWC im2col order (kh, kw, c) of qlinearconv.cc (ReorderFilter / MlasConvSymPackW; ConvSym packs
  4 input channels per kernel position and needs C % 4 == 0, so both paths pair the same indices); padding
  positions hold the input zero point and take part in the pairs; K is padded with zero weights. The zero point
  is removed afterwards with exact int32 column sums (column_sums_ / MlasGemmU8S8 zero-point fixup).
- Grouped convs run one GEMM per group (qlinearconv.cc, MlasGemm per group_id; ConvSym takes only group 1 and
  depthwise), so the pairs above are per group. Depthwise convs (group = C) never pair products: both MLAS
  depthwise kernels widen each value to its own lane (OnnxIntGraph._depthwise cites them), so they are exact
  int32 sums under both semantics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devices._intexec_gemm import (exact_depthwise, exact_matmul, im2col, pad_nhwc, proven_bound, storage_span,
                                   sum_bound, with_bias)
from devices._intexec_lut import LUT_DTYPES, binary_lut
from devices._intexec_mlas import (  # noqa: F401 - pair_dot_sat re-exported
    _dequantize, _fma32, _gap, _quantize, _requant, pair_dot_sat, requant_f32, saturation_error)
from devices._intexec_onnx_ops import max_pool, propagate_dq, run_gemm_q

SEMANTICS = ("single", "single-u8s8sat", "float-mlas")  # float-mlas: ORT_DISABLE_ALL (devices/_intexec_f32.py)
U8_SHIFT = 128  # qdq_s8_to_u8: an int8 tensor with zero point z runs as uint8 with zero point z + 128


def _err(msg: str):
    from devices._runner import RunnerError

    return RunnerError(msg)


class _Group:
    """One fused integer node: QLinearConv / QLinearAdd / QGemm (float out)."""

    def __init__(self, kind: str, **kw):
        self.kind = kind
        self.__dict__.update(kw)


class OnnxIntGraph:
    """The exported QDQ graph, executed with numpy as ORT's CPU EP executes it at ORT_ENABLE_ALL."""

    FLOAT_OPS = {"Sub", "Div", "Add", "Mul", "Relu", "Clip", "Slice", "Pad", "Concat", "Reshape", "Transpose",
                 "Cast", "ConstantOfShape", "Flatten", "GlobalAveragePool", "Shape", "Gather", "Unsqueeze",
                 "Squeeze", "Identity", "Constant", "QuantizeLinear", "DequantizeLinear", "MaxPool"}

    def __init__(self, model: str | Path | bytes):
        import onnx
        from onnx import numpy_helper

        m = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
        g = m.graph
        self._attr = lambda n: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        self.const = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        inits = set(self.const)
        graph_in = next(i for i in g.input if i.name not in inits)
        self.input_name = graph_in.name
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None  # (None, 3, H, W): None = dynamic
                                 for d in graph_in.type.tensor_type.shape.dim)
        self.output_names = [o.name for o in g.output]
        self.nodes = list(g.node)
        for n in self.nodes:  # fold the constant subgraph (weights' Clip, shape arithmetic of the Pad)
            if n.op_type == "Constant" or (n.input and all(i in self.const or i == "" for i in n.input)):
                outs = self._float_op(n, [self.const.get(i) for i in n.input])
                self.const.update(zip(n.output, outs))
        self.nodes = propagate_dq(self.nodes, self.const, self.output_names)  # DQ -> MaxPool as ORT runs it
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.int_names = [n.input[0] for n in self.nodes
                          if n.op_type == "DequantizeLinear" and n.input[0] not in self.const]
        self._plan()

    # -- fusion ------------------------------------------------------------------------------------------
    def _act_dq(self, name: str):
        n = self.producer.get(name)
        return n if n is not None and n.op_type == "DequantizeLinear" and n.input[0] not in self.const else None

    def _const_dq(self, name: str):
        n = self.producer.get(name)
        return n if n is not None and n.op_type == "DequantizeLinear" and n.input[0] in self.const else None

    def _tail(self, out: str):
        """[Relu ->] QuantizeLinear after a fused op's float output: (relu?, Q node) or (False, None)."""
        cons = self.consumers.get(out, [])
        relu = len(cons) == 1 and cons[0].op_type == "Relu"
        if relu:
            cons = self.consumers.get(cons[0].output[0], [])
        if len(cons) == 1 and cons[0].op_type == "QuantizeLinear" and out not in self.output_names:
            return relu, cons[0]
        return False, None

    def _qparams(self, n):
        return (np.float32(self.const[n.input[1]]), self.const[n.input[2]])

    def _plan(self) -> None:
        self.groups, skip = {}, set()
        for n in self.nodes:
            if n.op_type in ("Conv", "Gemm"):
                self._plan_mm(n, skip)
            elif n.op_type == "Add" and all(self._act_dq(i) for i in n.input):
                relu, q = self._tail(n.output[0])
                if q is not None:
                    a, b = (self._act_dq(i) for i in n.input)
                    self.groups[q.output[0]] = _Group("add", a=a, b=b, q=q, relu=relu)
                    skip.update(id(x) for x in self._chain(n, q))
        self.skip = skip
        self.live = {False: self._live(self.output_names), True: self._live(self.output_names + self.int_names)}
        for n in self.nodes:
            if id(n) not in skip and n.op_type not in self.FLOAT_OPS and not n.output[0] in self.const:
                raise _err(f"{n.name}: op {n.op_type} is not supported by the integer executor; add it to "
                           "devices/_intexec_onnx.py (as ORT executes it) or re-export without it")

    def _live(self, roots: list[str]) -> set[int]:
        """ids of the nodes that run() must execute to produce `roots`: a fused group reads only its integer
        inputs, so the float DequantizeLinear of a fused op's input is dead unless something else reads it."""
        live, seen, todo = set(), set(), list(roots)
        while todo:
            t = todo.pop()
            n = self.producer.get(t)
            if t in seen or t in self.const or n is None:
                continue
            seen.add(t)
            grp = self.groups.get(t)
            if grp is not None:
                live.add(id(n))
                todo += [d.input[0] for d in (grp.x,) if d is not None] if grp.kind != "add" else [
                    grp.a.input[0], grp.b.input[0]]
            elif id(n) not in self.skip:
                live.add(id(n))
                todo += [i for i in n.input if i]
        return live

    def _chain(self, start, end) -> list:
        chain, n = [start], start
        while n is not end:
            n = self.consumers[n.output[0]][0]
            chain.append(n)
        return chain

    def _plan_mm(self, n, skip: set) -> None:
        x, w = self._act_dq(n.input[0]), self._const_dq(n.input[1])
        b = self._const_dq(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if x is None or w is None:
            raise _err(f"{n.name}: {n.op_type} without DequantizeLinear input and weight would run in float; "
                       "only QDQ exports (export.onnx.export_qcdq) are supported")
        wq = self.const[w.input[0]]
        if wq.dtype != np.int8 or np.any(self.const[w.input[2]] != 0):
            raise _err(f"{n.name}: weights must be int8 with zero point 0 (symmetric), as export.onnx makes them")
        bias = None if b is None else self.const[b.input[0]].astype(np.int64)
        common = dict(x=x, w=wq, w_scale=np.asarray(self.const[w.input[1]], np.float32).reshape(-1), bias=bias,
                      attrs=self._attr(n))
        if n.op_type == "Gemm" and n.output[0] in self.output_names:  # QGemm, float out
            self.groups[n.output[0]] = _Group("gemm", **common)
            skip.add(id(n))
            return
        relu, q = self._tail(n.output[0])
        if q is None:
            raise _err(f"{n.name}: {n.op_type} output is not quantized (no [Relu ->] QuantizeLinear); ORT would not "
                       "fuse it")
        self.groups[q.output[0]] = _Group("conv" if n.op_type == "Conv" else "gemm_q", q=q, relu=relu, **common)
        skip.update(id(x) for x in self._chain(n, q))

    # -- execution -----------------------------------------------------------------------------------------
    def run(self, x: np.ndarray, semantics: str = "single", *, keep_ints: bool = False
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """x: float32 (B, 3, H, W) in [0,1], the graph input. Returns ({output name: array},
        {integer activation tensor name: integer array} if keep_ints else {})."""
        if semantics not in SEMANTICS:
            raise _err(f"unknown semantics {semantics!r}; choose one of {SEMANTICS}")
        if semantics == "float-mlas":  # unfused, node by node: nothing of the fusion plan applies
            from devices._intexec_f32 import run_float_mlas
            return run_float_mlas(self, x, keep_ints)
        env = dict(self.const)
        env[self.input_name] = np.asarray(x, np.float32)
        live = self.live[keep_ints]
        for n in self.nodes:
            if id(n) not in live:  # constant, fused away, or feeding only fused ops (their float DequantizeLinear)
                continue
            grp = self.groups.get(n.output[0])
            if grp is not None:
                env[n.output[0]] = getattr(self, f"_run_{grp.kind}")(grp, env, semantics=semantics)
            elif id(n) not in self.skip:
                env.update(zip(n.output, self._float_op(n, [env.get(i) for i in n.input])))
        outs = {k: env[k] for k in self.output_names}
        return outs, ({k: env[k] for k in self.int_names} if keep_ints else {})

    @staticmethod
    def _u8(q: np.ndarray, zp) -> tuple[np.ndarray, int]:
        """ORT's u8 domain: int8 (q, z) -> (q + 128, z + 128); uint8 unchanged."""
        if q.dtype == np.int8:
            return q.astype(np.int32) + U8_SHIFT, int(zp) + U8_SHIFT
        return q.astype(np.int32), int(zp)

    def _acc(self, a: np.ndarray, zp_a: int, w2: np.ndarray, *, semantics: str) -> np.ndarray:
        """a (B, K) u8-domain ints, w2 (K, M) int8 -> int32-exact (B, M) accumulator minus zero-point term."""
        acc = np.matmul((a - zp_a).astype(np.float64), w2.astype(np.float64)).astype(np.int64)  # exact < 2^53
        err = saturation_error(a, w2, a.max(0)) if semantics == "single-u8s8sat" else None
        return acc if err is None else acc + err.astype(np.int64)

    def _run_conv(self, g: _Group, env: dict, *, semantics: str) -> np.ndarray:
        at = g.attrs
        xs, xz = self._qparams(g.x)
        ys, yz = self._qparams(g.q)
        x = env[g.x.input[0]]  # (B, C, H, W) int8/uint8; x - zp is the same in ORT's u8 domain
        m, cg, kh, kw = g.w.shape
        groups = int(at.get("group", 1))
        pt, pl, pb, pr = at.get("pads", [0, 0, 0, 0])
        xc = pad_nhwc(x.transpose(0, 2, 3, 1), int(xz), (pt, pl, pb, pr))  # (B, H', W', C) f32, pads = zero point
        stride, dilation = at.get("strides", [1, 1]), at.get("dilations", [1, 1])
        span = storage_span(x.dtype, int(xz))
        if groups > 1 and cg == 1 and m == groups:  # depthwise: exact on every x86 kernel (see _depthwise)
            acc, bound, (oh, ow) = self._depthwise(xc, g.w, stride, dilation=dilation, span=span)
        else:  # one GEMM per group (qlinearconv.cc: MlasGemm per group_id), each with its own pairs on AVX2
            parts, bound = [], 0
            for i in range(groups):
                mg = m // groups
                part, b, (oh, ow) = self._conv_gemm(xc[..., i * cg:(i + 1) * cg], g.w[i * mg:(i + 1) * mg], x.dtype,
                                                    xz=int(xz), stride=stride, dilation=dilation, span=span,
                                                    semantics=semantics)
                parts.append(part)
                bound = max(bound, b)
            acc = parts[0] if groups == 1 else np.concatenate(parts, axis=1)  # (N, M)
        acc, bound = with_bias(acc, g.bias, bound)
        scale = (xs * g.w_scale) / ys  # float32, qlinearconv.cc ComputeOutputScale
        if bound < 2 ** 31:  # int32 accumulator: no wrap, float32(acc) is one rounding
            q = requant_f32(acc, scale, int(yz), dtype=yz.dtype, relu=g.relu)
        else:  # beyond int32, ORT's accumulator wraps: the int64 path
            q = _requant(acc.astype(np.int64), scale, int(yz), dtype=yz.dtype, relu=g.relu)
        return q.reshape(x.shape[0], oh, ow, m).transpose(0, 3, 1, 2)  # (B, M, OH, OW) view of NHWC

    @staticmethod
    def _conv_gemm(xc: np.ndarray, w: np.ndarray, dtype, *, xz: int, stride, dilation, span: int, semantics: str
                   ) -> tuple[np.ndarray, int, tuple[int, int]]:
        """One group's conv as an exact GEMM: xc (B, H', W', C) zero-point-removed, w (M, C, KH, KW) int8 ->
        ((N, M) sums, their bound, (OH, OW)), with the AVX2 pair saturation under "single-u8s8sat"."""
        m, c, kh, kw = w.shape
        w2 = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, m)  # (K, M) in (kh, kw, c) order
        bound = proven_bound(xc, w2, span)
        cols, out_hw = im2col(xc, kh, kw, stride=stride, dilation=dilation)  # (N, K)
        acc, bound = exact_matmul(cols, w2, bound), sum_bound(w2, bound)  # (N, M) exact
        if semantics == "single-u8s8sat":  # the AVX2 pairs on u8 inputs: x - zp + za, pads hold za
            za = xz + (U8_SHIFT if dtype == np.int8 else 0)
            amax = np.broadcast_to(xc.max(axis=(0, 1, 2)) + za, (kh, kw, c)).reshape(-1)  # (K,) u8 bound
            err = saturation_error(cols, w2, amax, offset=za)
            if err is not None:
                acc = acc + err
                bound = int(np.abs(acc).max(initial=0))
        return acc, bound, out_hw

    @staticmethod
    def _depthwise(xc: np.ndarray, w: np.ndarray, stride, *, dilation, span: int
                   ) -> tuple[np.ndarray, int, tuple[int, int]]:
        """Depthwise QLinearConv (group = C, one input and output channel per group) as exact int32 sums, under
        both semantics: qlinearconv.cc runs it as MlasConvSymDepthwise when C % 16 == 0 (ConvSymKernelAvx2.S
        DepthwiseMultiplyAccumulateCellAvx2: each u8 input and s8 weight widened to its own int32 lane,
        vpmovzxbd / vpmovsxbd, then vpmaddwd, whose high int16 halves are 0, so every product is exact; the VNNI
        kernels use vpdpbusds on one byte per lane, likewise exact), otherwise as MlasConvDepthwise
        (intrinsics/avx2/qdwconv_avx2.cpp: inputs and weights widened to int16 minus their zero points, full
        32-bit products from mullo/mulhi, int32 sums). No int16 pair is ever formed, so nothing saturates."""
        m, _, kh, kw = w.shape
        wk = w[:, 0].transpose(1, 2, 0)  # (KH, KW, C)
        bound = proven_bound(xc, wk.reshape(kh * kw, m), span)
        acc, out_hw = exact_depthwise(xc, wk, stride, dilation=dilation, bound=bound)  # (N, C)
        return acc, sum_bound(wk.reshape(kh * kw, m), bound), out_hw

    def _run_gemm(self, g: _Group, env: dict, *, semantics: str) -> np.ndarray:
        xs, xz = self._qparams(g.x)
        a, za = self._u8(env[g.x.input[0]], xz)  # (B, K)
        w2 = g.w.T if g.attrs.get("transB", 0) else g.w  # (K, N)
        acc = self._acc(a, za, w2, semantics=semantics) + (0 if g.bias is None else g.bias)
        scale = (np.float32(g.attrs.get("alpha", 1.0)) * xs) * g.w_scale  # quant_gemm.cc ComputeOutputScale
        return acc.astype(np.int32).astype(np.float32) * scale

    _run_gemm_q = run_gemm_q  # QGemm with an integer output (devices/_intexec_onnx_ops.py)

    def _run_add(self, g: _Group, env: dict, *, semantics: str) -> np.ndarray:
        """8-bit + 8-bit is a function of 65536 value pairs: one table (devices._intexec_lut), filled by _add."""
        a, b = env[g.a.input[0]], env[g.b.input[0]]
        if a.dtype in LUT_DTYPES and b.dtype in LUT_DTYPES:
            return binary_lut(lambda va, vb: self._add(g, va, vb), a, b)
        return self._add(g, a, b)

    def _add(self, g: _Group, a_q: np.ndarray, b_q: np.ndarray) -> np.ndarray:
        (sa, za0), (sb, zb0), (sc, zc0) = self._qparams(g.a), self._qparams(g.b), self._qparams(g.q)
        a, za = self._u8(a_q, za0)
        b, zb = self._u8(b_q, zb0)
        signed_out = zc0.dtype == np.int8
        zc = int(zc0) + (U8_SHIFT if signed_out else 0)
        r_ac, r_bc = np.float32(sa / sc), np.float32(sb / sc)
        fixed = np.float32(np.float32(zc) - (np.float32(r_ac * np.float32(za)) + np.float32(r_bc * np.float32(zb))))
        v = _fma32(a, r_ac, _fma32(b, r_bc, fixed))  # qladd_avx2.cpp: fmadd(b, BC, fixed) then fmadd(a, AC, .)
        q = np.clip(np.rint(v).astype(np.int64), zc if g.relu else 0, 255)
        return (q - U8_SHIFT).astype(np.int8) if signed_out else q.astype(np.uint8)

    def _float_op(self, n, ins: list) -> list:
        """One unfused node as ORT's CPU EP runs it (float32 elementwise, integer Clip, data movement)."""
        op, at = n.op_type, self._attr(n)
        x = ins[0] if ins else None
        if op == "Constant":
            from onnx import numpy_helper
            return [numpy_helper.to_array(at["value"]) if "value" in at else np.asarray(next(iter(at.values())))]
        if op in ("Sub", "Div", "Add", "Mul"):
            f = {"Sub": np.subtract, "Div": np.divide, "Add": np.add, "Mul": np.multiply}[op]
            return [f(x, ins[1]).astype(np.result_type(x, ins[1]))]
        if op == "Relu":
            return [np.maximum(x, np.zeros((), x.dtype))]
        if op == "Clip":
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else None
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else None
            return [np.clip(x, lo, hi).astype(x.dtype)]
        if op == "QuantizeLinear":
            return [_quantize(x, ins[1], ins[2], dtype=ins[2].dtype)]
        if op == "DequantizeLinear":
            return [_dequantize(x, ins[1], ins[2], axis=at.get("axis", 1))]
        if op in ("GlobalAveragePool", "MaxPool"):
            return [_gap(x) if op == "GlobalAveragePool" else max_pool(x, at)]
        if op == "Flatten":
            ax = at.get("axis", 1)
            return [x.reshape(int(np.prod(x.shape[:ax])), -1)]
        if op == "Reshape":
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(ins[1].tolist())]
            return [x.reshape(shape)]
        if op == "Transpose":
            return [x.transpose(at.get("perm"))]
        if op == "Cast":
            from onnx import helper
            return [x.astype(helper.tensor_dtype_to_np_dtype(at["to"]))]
        if op == "ConstantOfShape":
            from onnx import numpy_helper
            v = numpy_helper.to_array(at["value"]) if "value" in at else np.zeros(1, np.float32)
            return [np.full(tuple(x.tolist()), v.ravel()[0], v.dtype)]
        if op == "Concat":
            return [np.concatenate(ins, at["axis"])]
        if op == "Shape":
            return [np.asarray(x.shape, np.int64)]
        if op == "Gather":
            return [np.take(x, ins[1], axis=at.get("axis", 0))]
        if op == "Unsqueeze":
            return [np.expand_dims(x, tuple(ins[1].tolist() if len(ins) > 1 else at["axes"]))]
        if op == "Squeeze":
            return [np.squeeze(x, tuple(ins[1].tolist() if len(ins) > 1 else at["axes"]))]
        if op == "Identity":
            return [x]
        if op == "Slice":
            return [self._slice(x, ins[1], ins[2], axes=ins[3] if len(ins) > 3 else None,
                                steps=ins[4] if len(ins) > 4 else None)]
        if op == "Pad":
            p = ins[1].tolist()
            r = x.ndim
            val = ins[2] if len(ins) > 2 and ins[2] is not None else 0
            if at.get("mode", b"constant") not in (b"constant", "constant"):
                raise _err(f"{n.name}: Pad mode {at['mode']} is not supported")
            return [np.pad(x, [(p[i], p[i + r]) for i in range(r)], constant_values=val)]
        raise _err(f"{n.name}: op {op} is not supported by the integer executor")

    @staticmethod
    def _slice(x, starts, ends, *, axes=None, steps=None):
        axes = range(len(starts)) if axes is None else axes.tolist()
        steps = [1] * len(starts) if steps is None else steps.tolist()
        idx = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes, steps):
            dim = x.shape[a]
            s = max(-1 if st < 0 else 0, min(dim - (st < 0), s + dim if s < 0 else s))
            e = max(-1, min(dim, e + dim if e < 0 else e))
            idx[a] = slice(s, None if e < 0 else e, st)
        return x[tuple(idx)]
