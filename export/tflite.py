"""Full-integer TFLite export of a quantized CNN, written with LiteRT's flatbuffer schema (no TensorFlow).

Any deploy-form Brevitas CNN of the mapped layers is lowered from its torch.fx graph (export/_tflite_lower.py:
one handler per layer kind, depthwise convs as DEPTHWISE_CONV_2D; anything else refused in one line).
Graph (NHWC, batch dynamic), for a ResNet checkpoint's deployable network at one bit width:

    pixels float32 (B, H, W, 3) in [0, 1]
      -> SUB mean, DIV std (float, the torch `normalize` ops) -> QUANTIZE int8 (`quant_input` scale)
      -> CONV_2D int8, fused RELU (+ MINIMUM const for a < 8); stride-2 convs: PAD + VALID (torch pads
         both sides, TFLite SAME would pad only the far side)
      -> residual blocks: CONV_2D, CONV_2D (-> q_main); shortcut: [STRIDED_SLICE, PAD channels (option
         A)] -> 1x1 DEPTHWISE_CONV_2D requant (-> q_short), or resnet8's 1x1 CONV_2D (-> q_short);
         ADD (requant, fused RELU)
      -> MEAN over H, W (requant to `pool_quant`) -> QUANTIZE int16 (same scale: exact)
      -> FULLY_CONNECTED 16x8 (int64 bias) -> DEQUANTIZE
    logits float32 (B, classes)

Everything between the input QUANTIZE and the final DEQUANTIZE is integer: weights are Brevitas'
integers (`quant_weight().int()`, per-channel scales, quantized_dimension 0), each channel scaled by a
power of two into the int8 range (same real weights, see `_affine`), biases Brevitas' Int32Bias
integers, every activation keeps its learned scale. Unsigned `a`-bit activations sit in int8 with
zero point -128 and are clamped by MINIMUM(const) below 8 bits; signed ones have zero point 0.
The input stays float so that callers feed pixels and the normalisation is the torch one, bit for bit.
The classifier runs 16x8 (int16 activations, int8 weights): an int8 last layer would round the
logits to 1/256 of their range (one step is 2x the max |logit| / 256); int16 output steps are 1/32767 of the worst-case |logit|
bound, so the float logits are within half a step of the fake-quant ones and can never saturate.

Before returning, the artifact is run under LiteRT with the default XNNPACK kernels and with the
builtin kernels (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`); logits are compared with the fake-quant
deploy net in output LSBs, and every integer activation through a debug copy of the graph whose
activations are all subgraph outputs (XNNPACK only materialises partition outputs).

Example:
    python -m export.tflite zoo/resnet20_w8a8/model.pt --bits 8 --out /tmp/r20.tflite --data-dir ../shared/data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from export._common import ExportResult, Source, checkpoint_source, default_out, deploy_model, publish, record_fields
from export._tflite_graph import EXPORTER_VERSION, Built, _Q, with_outputs  # noqa: F401  (with_outputs: re-exported)
from export._tflite_lower import build_tflite, check_exportable  # noqa: F401  (check_exportable: re-exported)
from export._tflite_proof import (  # noqa: F401  (reference_ints: re-exported, the reference run eval uses)
    KERNEL_SETS, MAX_ACT_MISMATCH, MAX_LOCAL_MISMATCH, MIN_ARGMAX, prove, reference_ints)
from qadtr._errors import QadtrError
from qadtr._scratch import scratch
from qadtr.progress import stage
from qadtr.bits import bits_name

_ARCH_INPUT = {"test_qnet": 8}  # input side when no images are given; every dataset here is 32x32


INPUT = "pixels: float32 (B, H, W, 3) NHWC in [0, 1]; normalisation and QUANTIZE inside"
OUTPUT = "logits: float32 (B, classes), DEQUANTIZE of a 16x8 FULLY_CONNECTED"


def describe(result: ExportResult) -> str:
    """The CLI's summary of an export: size and bits, then each kernel set's figures."""
    r = result.record
    lines = [f"{result.path} ({r.artifact_bytes / 1024:.1f} KiB) {bits_name(r.bits)}"]
    for k, p in r.parity.items():
        lines.append(f"  {k:8s}: {p['act_mismatch']}/{p['act_elements']} integer activations off "
                     f"(max {p['act_max_step']} step), per layer {p.get('act_mismatch_local', 'n/a')}, argmax agree {100 * p['logits']['argmax_agree']:.2f}% "
                     f"({p['logits']['ties']} ties), max |dlogit| {p['logits']['max_abs_lsb']:.2f} LSB, "
                     f"n={p['logits']['n']}")
    return "\n".join(lines)


def table_row(record) -> dict:
    """export.table's columns for a TFLite export (ExportRecord): the proof's figures per LiteRT kernel set."""
    figures = {}
    for kernels, p in record.parity.items():
        lg = p["logits"]
        figures[f"litert-{kernels}"] = {
            "int_elements": p["act_elements"], "int_off_end_to_end": p["act_mismatch"],
            "int_off_per_layer": p.get("act_mismatch_local"),  # None: a record from before the per-layer figure
            "int_max_step": p["act_max_step"], "argmax_agree": lg["argmax_agree"], "ties": lg["ties"],
            "n": lg["n"], "max_dlogit_lsb": lg["max_abs_lsb"], "passed": p["passed"], "exact": p["act_mismatch"] == 0}
    return {"runtime": "LiteRT (XNNPACK and builtin kernels)", "figures": figures}


def _proof_images(arch: str, dataset: str, images: np.ndarray | None, *, data_dir, n: int) -> tuple[np.ndarray, str]:
    if images is not None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(images) == 0:
            raise QadtrError(f"images must be uint8 (N, H, W, 3) with N > 0, got {images.dtype} {images.shape}")
        return images, f"{len(images)} given images"
    if data_dir is not None:
        from qadtr.data import load_split, subset

        split = subset(load_split(dataset, "test", data_dir), n)
        return split.images, f"{len(split.images)} {dataset} test images (subset seed 0)"
    side = _ARCH_INPUT.get(arch, 32)
    rand = np.random.default_rng(0).integers(0, 256, (min(n, 64), side, side, 3), dtype=np.uint8)
    return rand, f"{len(rand)} random {side}x{side} images (pass --data-dir for real ones)"


def export_tflite(checkpoint: str | Path, out: str | Path, *, bits: int, images: np.ndarray | None = None,
                  data_dir: str | Path | None = None, limit: int = 500, act_bits: int | None = None,
                  kernels: tuple[str, ...] = KERNEL_SETS, headroom: bool = True) -> ExportResult:
    """Export a checkpoint at (bits, act_bits) to a full-integer .tflite, prove it, then put it at `out`.

    Args:
        checkpoint: a qadtr model.pt (model.json beside it), quantized.
        out: the .tflite to write; `<out>.json` records provenance and parity.
        bits: weight bits of the hidden convs (and activation bits unless `act_bits`).
        images: uint8 (N, H, W, 3) for the parity check; else `limit` test images from `data_dir`;
            else random images.
        kernels: the LiteRT kernel sets the artifact must pass under.
        headroom: scale each channel's integer weights by a power of two into the int8 range (same real
            weights; fewer double-rounding flips on the builtin kernels; see `_affine`).

    Returns:
        ExportResult (export._common), its record as saved.

    Raises:
        QadtrError: float checkpoint, bits it lacks or > 8, a layer TFLite can't express (all before
            anything is written); ProofFailed: a failed parity check (export._common.publish: the artifact
            is `<out>.rejected` with its record, nothing under `out`).

    Example:
        >>> export_tflite("zoo/resnet20_w4a4/model.pt", "/tmp/r20_w4a4.tflite", bits=4, data_dir="../shared/data")
    """
    act_bits = bits if act_bits is None else act_bits
    out = _check_request(bits, act_bits, kernels, out=Path(out))
    net, ck = deploy_model(checkpoint, bits, act_bits)
    src = checkpoint_source(checkpoint, ck)
    imgs, described = _proof_images(ck.model.arch, src.dataset, images, data_dir=data_dir, n=limit)
    return export_tflite_net(net, out, source=src, bits=(bits, act_bits), images=imgs, image_source=described,
                             kernels=kernels, headroom=headroom)


def export_tflite_net(net, out: Path, *, source: Source, bits: tuple[int, int], images: np.ndarray,
                      image_source: str, kernels: tuple[str, ...] = KERNEL_SETS, headroom: bool = True
                      ) -> ExportResult:
    """The one TFLite lowering and proof of a deploy-form `net` (export_tflite and export.module call it)."""
    h, w = images.shape[1:3]
    stage(f"export.tflite: lowering the {bits_name(bits)} net to a full-integer flatbuffer")
    built = build_tflite(net, h, w, headroom=headroom)  # refuses a layer with no mapping, before anything is written
    debug = build_tflite(net, h, w, debug=True, headroom=headroom)
    stage(f"export.tflite: proving on {len(images)} images under LiteRT's {' and '.join(kernels)} kernels")
    parity = json.loads(json.dumps(prove(net, built, debug, images=images, kernels=kernels)))  # as saved: lists
    for k, p in parity.items():
        p["images"] = image_source
    failed = [k for k, p in parity.items() if not p["passed"]]
    detail, summary = _parity_lines(parity, failed)
    with scratch("tflite") as tmp:
        staged = Path(tmp) / out.name
        staged.write_bytes(built.data)
        return publish(staged, out, failure=f"TFLite parity check failed ({detail}; thresholds: activations "
                                            f"{MAX_ACT_MISMATCH} end to end or {MAX_LOCAL_MISMATCH} per layer, argmax {MIN_ARGMAX})", **record_fields(
            "tflite", source, bits, passed=not failed, proof=", ".join(f"LiteRT {k}" for k in parity),
            reference="Brevitas fake-quant deploy net", summary=summary, images=len(images),
            image_source=image_source, parity=parity, ops=built.op_counts, versions=_versions(),
            extra={"headroom": headroom, "input": INPUT, "output": OUTPUT}))


def _check_request(bits: int, act_bits: int, kernels: tuple[str, ...], *, out: Path) -> Path:
    """The bit widths, kernel sets and output name, refused before a checkpoint is loaded."""
    if bits > 8 or act_bits > 8:
        raise QadtrError(f"{bits_name((bits, act_bits))}: the TFLite exporter carries at most 8-bit integers (int8 "
                         "kernels); use export.onnx for wider types")
    bad = [k for k in kernels if k not in KERNEL_SETS]
    if bad or not kernels:
        raise QadtrError(f"kernel sets {list(kernels)}: choose from {list(KERNEL_SETS)}")
    if out.suffix != ".tflite":
        raise QadtrError(f"{out}: the artifact must end in .tflite (its record is written as .json beside it)")
    return out


def _parity_lines(parity: dict, failed: list[str]) -> tuple[str, str]:
    """(why the failed kernel sets failed, one summary of every kernel set) for the record and the refusal."""
    def first_off(k: str) -> str:
        off = [(n, v) for n, v in parity[k]["per_tensor"].items() if v[0]]
        return f", first at {off[0][0]} ({off[0][1][0]} of {off[0][1][1]})" if off else ""

    detail = "; ".join(f"{k}: {parity[k]['act_mismatch_frac']:.2%} activations off{first_off(k)} (per layer "
                       f"{parity[k]['act_mismatch_local']}, max {parity[k]['act_max_step_local']} step), argmax agree "
                       f"{parity[k]['logits']['argmax_agree']:.2%}" for k in failed)
    summary = "; ".join(f"{k}: {p['act_mismatch']} of {p['act_elements']} integer activations off, argmax agree "
                        f"{100 * p['logits']['argmax_agree']:.2f}%" for k, p in parity.items())
    return detail, summary


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import brevitas

    from qadtr import __version__

    return {"exporter": str(EXPORTER_VERSION), "qadtr": __version__, "ai-edge-litert": version("ai-edge-litert"),
            "brevitas": brevitas.__version__, "torch": torch.__version__, "numpy": np.__version__}


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m export.tflite", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="model.pt (model.json beside it) or its folder")
    p.add_argument("--bits", type=int, required=True, help="weight bits (and activation bits unless --act-bits)")
    p.add_argument("--act-bits", type=int, default=None)
    p.add_argument("--out", default=None, help="the .tflite to write (default: ./<arch>_w<W>a<A>.tflite)")
    p.add_argument("--data-dir", default=None, help="check parity on real test images from this folder (else random)")
    p.add_argument("--limit", "--n-check", dest="limit", type=int, default=500,
                   help="images in the parity check (--n-check: its old name)")
    p.add_argument("--no-headroom", action="store_true", help="write Brevitas' integer weights unscaled")
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr._cli import check_count, check_writable

        check_count(args.limit, "--limit")  # parity images: 0 or fewer would prove nothing
        out = check_writable(args.out or default_out(args.checkpoint, args.bits, suffix=".tflite",
                                                     act_bits=args.act_bits), "file")
        result = export_tflite(args.checkpoint, out, bits=args.bits, act_bits=args.act_bits,
                               data_dir=args.data_dir, limit=args.limit, headroom=not args.no_headroom)
        print(describe(result))
        print(f"wrote {result.path} and its record {result.record_path}")

    return run_cli("export.tflite", body, argv)


if __name__ == "__main__":
    sys.exit(main())
