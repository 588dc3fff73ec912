"""Checkpoint -> TensorRT-bound QDQ ONNX + the exact recipe for building the INT8 engine on the device.

    python -m export.trt zoo/resnet20_w4a4/model.pt --bits 4 --data-dir ../shared/data --out trt_w4/

Writes into OUT/: `model.onnx` (TensorRT-bound), `model.onnx.json` (ExportRecord: parity, fusion, versions),
`trt_build.json` (optimization profile, trtexec flags, a Python builder snippet) and `build_engine.sh`.
Engines are not portable across TensorRT versions or GPUs, so the device (e.g. a Jetson with JetPack's
TensorRT) builds its own engine from these files. Here the file is checked without a GPU: by
TensorRT-RTX's parser and ahead-of-time builder when `tensorrt_rtx` imports, and by real TensorRT (with
an engine written) where `tensorrt` and a GPU exist.

What `--bits 4` (or 2) means on TensorRT: TensorRT has no INT4 (or INT2) convolution kernels; INT4 is
weight-only and only for GEMM/MatMul. The 4-bit network runs on int8 kernels carrying 4-bit values:
weights are int8 initializers holding values in [-7, 7], activations int8/uint8 clamped to [0, 15]
by a Clip after each QuantizeLinear. That is numerically exact (the same integers), just not faster
than 8 bit. Weight-only INT4 for the final GEMM is possible and not done here.

Changes from the ORT QDQ export (the TensorRT parser rejects both originals):
- DequantizeLinear of an INT32 bias -> a float initializer holding the dequantised int32 values;
- int8 weight -> Clip -> DequantizeLinear -> the clip folded into the int8 initializer.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from devices.tensorrt import build_engine
from export import onnx as onnx_export
from export._common import ExportResult, Source, checkpoint_source, publish, record_fields
from export._trt_spec import BUILD_SH, INT4_NOTE, build_spec  # noqa: F401  (part of this module's API)
from qadtr._config import write_json
from qadtr._errors import QadtrError
from qadtr._scratch import scratch
from qadtr.progress import stage

UINT8_NOTE = ("TensorRT has no uint8 activations (its parser imports uint8 Q/DQ as int8, saturating 128..255 at "
              "127). Unsigned tensors of up to 7 bits are written as int8 (same integers, exact); 8-bit unsigned "
              "ones (the pooled features; every ReLU output at a=8), and uint8 tensors with a zero point (MobileNetV2's "
              "bottleneck streams), as float Div/Round[/Add z]/Clip[/Sub z]/Mul, exact but their consumers run in "
              "float on TensorRT. For int8 kernels there, quantize those tensors to 7-bit "
              "unsigned or signed 8-bit in the model.")


# -- graph transformations ---------------------------------------------------------------------------------
def _constant(graph, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant node output, else None."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def make_trt_bound(model):
    """Return a copy of a Brevitas QCDQ ONNX model rewritten for the TensorRT ONNX parser.

    int32-bias DequantizeLinear -> float bias initializer; int8 weight -> Clip -> DQ -> clamped int8 weight;
    8-bit unsigned activations -> float (see `_emulate_wide_unsigned_`); other uint8 Q/DQ -> int8.

    Returns:
        (the new model, names of the unsigned 8-bit tensors now computed in float).

    Raises:
        QadtrError: a weight Clip or int32 DequantizeLinear whose other operands are not constants, or
            unsigned quantization TensorRT cannot express (see `_uint8_to_int8_`).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    drop, new_inits, rename = [], [], {}
    for node in graph.node:
        operands = [_constant(graph, name) if name else None for name in node.input]
        if node.op_type == "DequantizeLinear" and operands[0] is not None and operands[0].dtype == np.int32:
            if any(v is None for v in operands[1:]):
                raise QadtrError(f"{node.name}: int32 DequantizeLinear with a non-constant scale or zero point; "
                                 "cannot fold the bias")
            x, scale, zero = operands[0], operands[1], operands[2] if len(operands) > 2 else 0
            value = ((x.astype(np.int64) - np.asarray(zero, np.int64)) * scale.astype(np.float64)).astype(np.float32)
            rename[node.output[0]] = node.output[0] + "_float_bias"  # (Cout,) fp32 = int32 bias * s_in * s_w
        elif node.op_type == "Clip" and operands[0] is not None and operands[0].dtype in (np.int8, np.uint8):
            if len(operands) != 3 or operands[1] is None or operands[2] is None:
                raise QadtrError(f"{node.name}: weight Clip without constant min and max; cannot fold it")
            value = np.clip(operands[0], operands[1], operands[2]).astype(operands[0].dtype)  # clamped int8 weight
            rename[node.output[0]] = node.output[0] + "_folded"
        else:
            continue  # activation Clips (Q -> Clip -> DQ below 8 bits) are fine for TensorRT
        new_inits.append(numpy_helper.from_array(value, rename[node.output[0]]))
        drop.append(node)
    for node in drop:
        graph.node.remove(node)
    emulated = _emulate_wide_unsigned_(graph)
    _uint8_to_int8_(graph)
    graph.initializer.extend(new_inits)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)
    onnx.checker.check_model(model, full_check=True)
    return model, emulated


def _emulate_wide_unsigned_(graph) -> list[str]:
    """Rewrite unsigned 8-bit Q [-> Clip] -> DQ as float Div -> Round [-> Add z] -> Clip(0, 255) [-> Sub z] -> Mul,
    in place; also a uint8 tensor of any width with a nonzero zero point z (MobileNetV2's bottleneck streams).

    TensorRT has no uint8 activations (its parser imports them as int8: 128..255 would saturate at 127),
    and an 8-bit unsigned tensor has no exact int8 form with zero point 0; TensorRT's quantization is
    symmetric, so a zero point has none either. The float form computes the same values (Round is
    half-to-even like QuantizeLinear, the integers and z are exact in float32); the consumers then run in
    float on TensorRT. Returns the integer tensors rewritten (their names are kept, holding integers as float).
    """
    from onnx import helper, numpy_helper

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replace: dict[int, list] = {}  # id(old node) -> new nodes ([] = delete)
    new_inits, rewritten = [], []
    for q in graph.node:
        zero = _constant(graph, q.input[2]) if q.op_type == "QuantizeLinear" and len(q.input) > 2 else None
        if zero is None or zero.dtype != np.uint8:
            continue
        after = consumers.get(q.output[0], [])
        clip = after[0] if len(after) == 1 and after[0].op_type == "Clip" else None
        hi = float(_constant(graph, clip.input[2])) if clip is not None else 255.0
        if hi <= 127 and not zero.any():
            continue  # 1..7-bit unsigned with zero point 0: the same integers fit int8 exactly
        int_name = clip.output[0] if clip is not None else q.output[0]
        dqs = consumers.get(int_name, [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            raise QadtrError(f"{q.name}: unsigned 8-bit tensor feeds {[d.op_type for d in dqs]}, not only DequantizeLinear")
        lo_name, hi_name = f"{int_name}_lo", f"{int_name}_hi"
        new_inits += [numpy_helper.from_array(np.array(0.0, np.float32), lo_name),
                      numpy_helper.from_array(np.array(hi, np.float32), hi_name)]
        rounded, shifted, zp = f"{int_name}_round", f"{int_name}_shift", f"{int_name}_zp"
        nodes = [helper.make_node("Div", [q.input[0], q.input[1]], [f"{int_name}_div"], name=f"{q.name}_div"),
                 helper.make_node("Round", [f"{int_name}_div"], [rounded], name=f"{q.name}_round")]
        if zero.any():  # q = round(x / s) + z, read back as (q - z) * s
            new_inits.append(numpy_helper.from_array(zero.astype(np.float32), zp))
            nodes.append(helper.make_node("Add", [rounded, zp], [shifted], name=f"{q.name}_add_zp"))
        replace[id(q)] = nodes + [helper.make_node("Clip", [shifted if zero.any() else rounded, lo_name, hi_name],
                                                   [int_name], name=f"{q.name}_clip")]
        if clip is not None:
            replace[id(clip)] = []
        for d in dqs:
            centred = [helper.make_node("Sub", [int_name, zp], [f"{d.output[0]}_centred"], name=f"{d.name}_sub_zp")]
            read = f"{d.output[0]}_centred" if zero.any() else int_name
            replace[id(d)] = (centred if zero.any() else []) + [
                helper.make_node("Mul", [read, d.input[1]], [d.output[0]], name=f"{d.name}_mul")]
        rewritten.append(int_name)
    nodes = [n for old in graph.node for n in replace.get(id(old), [old])]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    return rewritten


def _uint8_to_int8_(graph) -> None:
    """Write the remaining uint8 Q/DQ constants (zero points, clamp bounds of <= 7-bit tensors) as int8, in place.

    TensorRT supports uint8 Q/DQ only on DLA and imports them as int8 with zero point 0; saying so in the
    file keeps the ORT check of the TensorRT-bound ONNX faithful to what TensorRT computes.

    Raises:
        QadtrError: a nonzero uint8 zero point (TensorRT quantization is symmetric) or a uint8 value above
            127 (it would saturate; `_emulate_wide_unsigned_` must have rewritten its tensor first).
    """
    from onnx import numpy_helper

    used = {name for n in graph.node for name in n.input}  # a zero point `_emulate_wide_unsigned_` replaced is not
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype != np.uint8 or init.name not in used:
            continue
        if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] == init.name
               for n in graph.node) and value.any():
            raise QadtrError(f"{init.name}: uint8 zero point {value.max()} != 0; TensorRT needs symmetric "
                             "quantization (zero point 0)")
        if value.max() > 127:
            raise QadtrError(f"{init.name}: uint8 value {value.max()} > 127 would saturate in TensorRT's int8")
        init.CopyFrom(numpy_helper.from_array(value.astype(np.int8), init.name))


def check_trt_bound(model) -> None:
    """Raises QadtrError if a construct the TensorRT parser rejects is left."""
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            x = _constant(model.graph, node.input[0])
            if x is not None and x.dtype == np.int32:
                raise QadtrError(f"{node.name}: DequantizeLinear of an INT32 bias is left (TensorRT rejects it)")
        if node.op_type == "Clip" and _constant(model.graph, node.input[0]) is not None:
            raise QadtrError(f"{node.name}: Clip on a constant weight is left (TensorRT rejects it)")


def _build(trt, onnx_path: Path, spec: dict, *, log: list[str], rtx: bool) -> bytes:
    """Parse and build with a TensorRT(-RTX) module; logs the configuration first; raises on failure."""
    def describe(network) -> None:
        log.append(f"building with TensorRT{'-RTX' if rtx else ''} {trt.__version__}: {network.num_layers} layers, "
                   f"profile {spec['profile']}, flags {'strongly typed (RTX)' if rtx else 'INT8'}")
        print(log[-1])

    batch = tuple(int(spec["profile"][k][0]) for k in ("min", "opt", "max"))
    return build_engine(trt, onnx_path, batch, logger=trt.Logger(trt.Logger.WARNING), describe=describe,
                        tool=f"TensorRT{'-RTX' if rtx else ''}")


def offline_check(onnx_path: Path, spec: dict, out_dir: Path) -> dict:
    """Build with real TensorRT (GPU) if present, else ahead-of-time with TensorRT-RTX, else say so."""
    log: list[str] = []
    try:
        import tensorrt as trt  # noqa: F401  (real TensorRT: needs a GPU to build)
    except ImportError:
        trt = None
    if trt is not None:
        try:
            engine = _build(trt, onnx_path, spec, log=log, rtx=False)
            (out_dir / "model.engine").write_bytes(engine)
            return {"tool": f"tensorrt {trt.__version__}", "built": True, "engine_bytes": len(engine), "log": log}
        except (RuntimeError, TypeError) as e:  # no GPU / no CUDA driver: fall back to the offline check
            log.append(f"tensorrt {trt.__version__} could not build here ({str(e)[:120]})")
    try:
        import tensorrt_rtx as rtx
    except ImportError as e:
        log.append(f"tensorrt_rtx not importable ({e}); `pip install tensorrt-rtx-cu12` for an offline check")
        return {"tool": None, "built": False, "engine_bytes": 0, "log": log}
    engine = _build(rtx, onnx_path, spec, log=log, rtx=True)
    return {"tool": f"tensorrt_rtx {rtx.__version__}", "built": True, "engine_bytes": len(engine), "log": log,
            "note": "ahead-of-time TensorRT-RTX build on a machine without a GPU: proves the file parses and "
                    "builds; the device must still build its own engine"}


def export_trt(checkpoint: str | Path, out: str | Path, *, bits: int, images: np.ndarray | None = None,
               data_dir: str | Path | None = None, limit: int = 1000, batch: tuple[int, int, int] = (1, 32, 128),
               opset: int = 13) -> ExportResult:
    """Write the TensorRT-bound ONNX, its ExportRecord, trt_build.json and build_engine.sh into the folder `out`.

    The file is proven under ORT and built offline (`offline_check`) in a temporary folder; only then do the
    four files go into `out` (export._common.publish; the record's `extra["offline_check"]` says what built it).

    Raises:
        QadtrError: unsupported request (float checkpoint, missing bits, bad batch range) or a TensorRT(-RTX)
            parser/builder failure (nothing written); ProofFailed: failed parity (`out/model.onnx.rejected`).
    """
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise QadtrError(f"batch range min/opt/max {batch} must satisfy 1 <= min <= opt <= max")
    net, ck = onnx_export.load_for_export(checkpoint, bits, float_model=False)
    src = checkpoint_source(checkpoint, ck)
    imgs, described = onnx_export.parity_images(images=images, data_dir=data_dir, dataset=src.dataset, limit=limit)
    return export_trt_net(net, out, source=src, bits=(bits, bits), images=imgs, image_source=described,
                          batch=batch, opset=opset)


def export_trt_net(net, out: str | Path, *, source: Source, bits: tuple[int, int], images: np.ndarray,
                   image_source: str, batch: tuple[int, int, int] = (1, 32, 128), opset: int = 13) -> ExportResult:
    """The one TensorRT-bound export, proof and offline build of a deploy-form `net` (export_trt, export.module)."""
    import onnx

    from qadtr.predict import to_tensor

    out = Path(out)
    with scratch("trt") as tmp:
        qdq, staged = Path(tmp) / "qdq.onnx", Path(tmp) / "model.onnx"
        onnx_export.export_qcdq(net, qdq, to_tensor(images[:1]), opset=opset)
        original = onnx.load(str(qdq))
        tensors = onnx_export.activation_dq_inputs(original)  # names are kept by make_trt_bound
        model, emulated = make_trt_bound(original)
        check_trt_bound(model)
        onnx.save(model, str(staged))
        ops = dict(sorted(Counter(n.op_type for n in model.graph.node).items()))
        fusion = onnx_export.fusion_report(staged)
        parity = onnx_export.check_parity(net, staged, images, bits=bits[0], image_source=image_source,
                                          tensors=tensors)
        spec = build_spec(staged.name, (3, *images.shape[1:3]), batch)  # images are (N, H, W, 3)
        if parity:
            stage("export.trt: the offline TensorRT-RTX parse and build check")
        trt = offline_check(staged, spec, Path(tmp)) if parity else {}  # a rejected file is not built
        fields = record_fields("trt", source, bits, ops=ops, fusion=fusion, versions=onnx_export.versions(),
                               extra={"opset": opset, "trt_build": "trt_build.json", "offline_check": trt,
                                      "bits_note": INT4_NOTE, "uint8_as_float": emulated, "uint8_note": UINT8_NOTE},
                               **onnx_export.proof_fields(parity))
        if parity:  # the build recipe (and an engine built here) beside the artifact, before it is published
            _write_build_files(out, spec, trt, tmp=Path(tmp))
        return publish(staged, out / staged.name, failure=f"TensorRT-bound ONNX under ORT: {parity.summary}",
                       **fields)


def _write_build_files(out: Path, spec: dict, trt: dict, *, tmp: Path) -> None:
    """trt_build.json, build_engine.sh and an engine built here (if any) into `out`."""
    write_json(out / "trt_build.json", {**spec, "offline_check": trt})
    sh = out / "build_engine.sh"
    sh.write_text(BUILD_SH.format(trtexec=spec["trtexec"]))
    sh.chmod(0o755)
    if (tmp / "model.engine").is_file():
        shutil.move(str(tmp / "model.engine"), out / "model.engine")


def table_row(record) -> dict:
    """export.table's columns for a TensorRT-bound export: ORT's columns plus what built it offline."""
    check = record.extra["offline_check"]
    return {**onnx_export.table_row(record), "runtime": "TensorRT-bound ONNX, parity under onnxruntime CPU",
            "offline_check": check.get("tool") if check.get("built") else None,
            "uint8_as_float": len(record.extra["uint8_as_float"])}


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m export.trt", description=__doc__.split("\n")[0],
                       epilog=INT4_NOTE)
    p.add_argument("checkpoint", help="model.pt (with model.json beside it) or its folder")
    p.add_argument("--bits", type=int, required=True, help="weight = activation bits (one the model has)")
    p.add_argument("--out", default=None, help="output folder (default: ./<arch>_w<bits>a<bits>_trt)")
    p.add_argument("--data-dir", default=None, help="dataset folder: parity on real test images (else random)")
    p.add_argument("--limit", type=int, default=1000, help="parity images from the test split")
    p.add_argument("--min-batch", type=int, default=1, help="optimization profile: smallest batch")
    p.add_argument("--opt-batch", type=int, default=32, help="optimization profile: batch to tune for")
    p.add_argument("--max-batch", type=int, default=128, help="optimization profile: largest batch")
    args = p.parse_args(argv)

    def body() -> None:
        from export._common import default_out
        from export.onnx import deployed_line

        from qadtr._cli import check_count, check_writable

        check_count(args.limit, "--limit")  # parity images: 0 or fewer would prove nothing
        out = str(check_writable(args.out or default_out(args.checkpoint, args.bits, False, suffix="_trt"), "folder"))
        if args.bits < 8:
            print(f"note: --bits {args.bits}: {INT4_NOTE}")
        result = export_trt(args.checkpoint, out, bits=args.bits, data_dir=args.data_dir, limit=args.limit,
                            batch=(args.min_batch, args.opt_batch, args.max_batch))
        record = result.record
        f, trt = record.fusion, record.extra["offline_check"]
        print(f"wrote {result.path} ({record.artifact_bytes / 1024:.1f} KiB), {Path(out) / 'trt_build.json'}, "
              f"{Path(out) / 'build_engine.sh'}")
        print(f"ORT check of the TensorRT-bound file: {f['qlinearconv']} QLinearConv, {f['float_conv']} float Conv")
        print(record.summary)
        print(deployed_line(record), end="")
        emulated = record.extra["uint8_as_float"]
        if emulated:
            print(f"note: {len(emulated)} unsigned 8-bit tensor(s) written as float for TensorRT: {UINT8_NOTE}")
        built = f"built with {trt['tool']} ({trt['engine_bytes'] / 1024:.1f} KiB engine)" if trt["built"] \
            else "NOT checked: " + trt["log"][-1]
        print(f"TensorRT offline check: {built}")
        print(f"on the device: sh {Path(out) / 'build_engine.sh'}   # {json.dumps(trt['tool'])} here")

    return run_cli("export.trt", body, argv)


if __name__ == "__main__":
    sys.exit(main())
