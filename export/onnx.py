"""Checkpoint -> QDQ ONNX for ONNX Runtime, proven bit-exact against the Brevitas fake-quant net.

    python -m export.onnx zoo/resnet20_w4a4/model.pt --bits 4 --data-dir ../shared/data --out w4.onnx
    python -m export.onnx zoo/resnet20_float/model.pt --float --out fp32.onnx

The quantized path exports the deployable net (`export._common.deploy_model`: BN folded, int32 bias) with
Brevitas' QCDQ exporter through TorchScript (the dynamo exporter refuses quantized bias). Before returning it
proves the file: onnx.checker; graph structure (every Conv/Gemm weight through DequantizeLinear, no
BatchNormalization, expected op counts); which convs ORT fuses into QLinearConv at ORT_ENABLE_ALL; parity on
real images: every quantized activation's integers (ORT node by node vs Brevitas `.int()`), logits in LSBs,
argmax agreement. `<out>.json` beside the artifact records all of it with the versions and sha256s.

The proof and the deployment are kept apart. The proof runs the file node by node (ORT_DISABLE_ALL:
QuantizeLinear, DequantizeLinear and float Conv/Gemm, no fused integer kernel), which computes the same on
every CPU; an artifact is refused only when that differs from Brevitas. ORT_ENABLE_ALL's fused int8
kernels are then measured too and recorded as `parity.deployed` with the host fingerprint: on x86 without
VNNI they sum u8 x s8 pairs into int16 with saturation, a fact about this CPU's deployment, not a
broken export, and `eval.on_device` / `eval.compare` report it as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from devices._host import fingerprint
from export._common import ExportResult, Source, checkpoint_source, default_out, publish, record_fields
from export._onnx_graph import (INPUT, OUTPUT, activation_dq_inputs, check_graph, fusion_report,  # noqa: F401
                                ort_run, reference_run, with_outputs)  # part of this module's API, re-exported
from qadtr._cli import check_count, check_writable
from export.registry import get_exporter
from qadtr._errors import QadtrError
from qadtr._scratch import scratch
from qadtr.progress import stage
from qadtr.bits import bits_name

EXPORTER_VERSION = get_exporter("onnx").version  # the registry row's (its history is told there)
PROOF_LEVEL = "disable"  # node by node in float: no CPU-specific integer kernel decides the proof
DEPLOY_LEVEL = "all"  # what a deployment runs: QDQ fused into QLinearConv / QGemm / QLinearAdd
PARITY_IMAGES = 1000  # CIFAR-10 test images for the parity check: ~1 min of Brevitas ResNet-20 at low priority
# Pass criteria: ORT computes every layer as Brevitas does on the same upstream integers, except rare one-step
# flips (Brevitas requantizes an fp32 conv sum, ORT an exact int32 sum times an fp32 multiplier: a value within
# fp32 noise of a .5 boundary rounds either way); end to end a flip can grow. No mismatch at all is `exact`.
MAX_INT_MISMATCH = 1e-4  # per-layer fraction of integer activation elements allowed to differ
MAX_INT_STEP = 1  # per layer, no integer activation may differ by more than this
MIN_ARGMAX_AGREE = 0.99  # over non-tie samples (TIE_RULE), end to end on the deployed kernels
FLOAT_TOL = 1e-4  # fp32 export: logits compared in units of 1e-4 (ORT and torch sum in different orders)


@dataclass(frozen=True)
class Parity:
    """ORT vs the Brevitas fake-quant net on the same images; truthy when the proof (ORT_DISABLE_ALL) meets
    the targets. `deployed` holds the same figures for ORT_ENABLE_ALL on this host: measured, never a verdict."""

    passed: bool
    images: int  # how many
    image_source: str  # e.g. "cifar10/test subset 1000 (seed 0)"
    int_tensors: int  # quantized activation tensors compared (0 for fp32)
    int_elements: int  # their total elements over all images
    int_mismatches: int  # end to end: elements differing, ORT node by node (ORT_DISABLE_ALL) vs Brevitas
    int_mismatches_fused: int | None  # end to end, this host's ORT_ENABLE_ALL as the executor semantics that
    #   reproduces it bit for bit computes it (None: no semantics reproduces it; see deployed["attribution"])
    int_mismatches_local: int | None  # per layer: Brevitas fed ORT's node-by-node upstream integers, vs ORT
    int_max_step: int  # largest end-to-end |ORT - Brevitas| node by node, in steps
    int_max_step_local: int  # largest per-layer difference, in steps
    exact: bool  # no integer activation differs end to end node by node
    per_tensor: dict  # module -> mismatches (only tensors that differ)
    logits: dict  # CompareResult.to_dict() at ORT_DISABLE_ALL (the proof)
    summary: str
    deployed: dict = field(default_factory=dict)  # ORT_ENABLE_ALL on this host: int8_dot, logits, attribution

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- export ------------------------------------------------------------------------------------------------
def export_qcdq(net, path: str | Path, example, *, opset: int = 13) -> None:
    """Brevitas QCDQ export through TorchScript with ORT-friendly settings."""
    with warnings.catch_warnings():  # brevitas.export warns that an optional CUDA kernel package is absent
        warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
        from brevitas.export import export_onnx_qcdq

    export_onnx_qcdq(net, args=example, export_path=str(path), dynamo=False, opset_version=opset,
                     keep_initializers_as_inputs=False,  # initializers as inputs stop ORT constant folding
                     input_names=[INPUT], output_names=[OUTPUT],
                     dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})


def export_float(net, path: str | Path, example, *, opset: int = 13) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and shape-inference chatter
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})


def check_parity(net, model_path: str | Path, images: np.ndarray, *, bits: int | None,
                 image_source: str = "given images", batch_size: int = 250,
                 tensors: dict[str, str] | None = None) -> Parity:
    """Compare ORT with the Brevitas/torch network on `images` (N, H, W, 3) uint8.

    Quantized (`bits` set): integer activations node by node (ORT_DISABLE_ALL and ORT_ENABLE_ALL with
    every activation added as an output) and logits at ORT_ENABLE_ALL in LSBs of the accumulator grid.
    fp32 (`bits=None`): logits only, in units of FLOAT_TOL. `tensors` (integer tensor -> act_quant module)
    defaults to `activation_dq_inputs(model)`; a rewritten graph passes the original's.
    """
    import onnx

    from export._compare import compare

    model = onnx.load(str(model_path))
    if bits is None:
        return _float_parity(net, model, images, batch_size=batch_size, image_source=image_source)
    stage(f"export.onnx: proving on {len(images)} images (ORT node by node vs the Brevitas net)")
    ref_logits, ref_ints, step = reference_run(net, images, batch_size)
    tensors = activation_dq_inputs(model) if tensors is None else tensors
    missing = sorted(set(tensors.values()) - set(ref_ints))
    if missing or len(tensors) != len(ref_ints):
        raise QadtrError(f"cannot pair ONNX activations with Brevitas quantizers (unpaired: {missing}); "
                         "the export's node names do not follow the module names")
    mismatches: dict[str, dict[str, int]] = {}
    max_step = {}
    got = ort_run(with_outputs(model, list(tensors)), images, batch_size, level=PROOF_LEVEL)  # node by node, every CPU
    proof_ints = {module: got[name] for name, module in tensors.items()}
    mismatches[PROOF_LEVEL], max_step[PROOF_LEVEL] = _int_diff(ref_ints, proof_ints)
    _, local_ints, _ = reference_run(net, images, batch_size, feed=proof_ints)
    mismatches["local"], max_step["local"] = _int_diff(local_ints, proof_ints)
    elements = sum(v.size for v in local_ints.values())
    res = compare(ref_logits, got[OUTPUT], lsb=step, atol_lsb=0.5, max_mismatch_frac=1.0,
                  min_argmax_agree=MIN_ARGMAX_AGREE, name=f"w{bits} logits ({PROOF_LEVEL})")
    del got, proof_ints, local_ints
    stage("export.onnx: the deployed kernels (ORT_ENABLE_ALL) on this host, attributed by the integer executor")
    # the deployment on this host: the plain file (extra outputs make ORT fuse less), attributed by the executor
    deployed_logits = ort_run(model.SerializeToString(), images, batch_size, level=DEPLOY_LEVEL)[OUTPUT]
    deployed, deployed_ints = _deployed(model_path, images, deployed_logits, ref_logits=ref_logits, step=step)
    if deployed_ints is not None:
        mismatches[DEPLOY_LEVEL], max_step[DEPLOY_LEVEL] = _int_diff(
            ref_ints, {module: deployed_ints[name] for name, module in tensors.items()})
    n_bad = {k: sum(v.values()) for k, v in mismatches.items()}
    passed = bool(res) and n_bad["local"] <= MAX_INT_MISMATCH * elements and max_step["local"] <= MAX_INT_STEP
    exact = n_bad[PROOF_LEVEL] == 0
    summary = (f"{'PASSED' if passed else 'FAILED'} parity on {len(images)} images ({image_source}), proof: "
               + _proof_summary(n_tensors=len(tensors), elements=elements, n_bad=n_bad, max_step=max_step, res=res))
    per_tensor = {m: {k: mismatches[k][m] for k in mismatches}
                  for m in ref_ints if any(mismatches[k][m] for k in mismatches)}
    return Parity(passed, len(images), image_source, len(tensors), int(elements), n_bad[PROOF_LEVEL],
                  n_bad.get(DEPLOY_LEVEL), n_bad["local"], max_step[PROOF_LEVEL], max_step["local"], exact, per_tensor,
                  res.to_dict(), summary, deployed)


def _proof_summary(*, n_tensors: int, elements: int, n_bad: dict, max_step: dict, res) -> str:
    """The proof's sentence (deployed["summary"] is the deployment's)."""
    return (f"ORT node by node (ORT_DISABLE_ALL) vs Brevitas, {n_tensors} integer tensors, {elements} elements: per "
            f"layer {n_bad['local']} differ (max {max_step['local']} step), end to end {n_bad[PROOF_LEVEL]}; logits "
            f"max |d| {res.max_abs_lsb:.3g} LSB ({res.max_abs:.2g}), argmax agree {100 * res.argmax_agree:.2f}% "
            f"({res.ties} ties)" + ("; bit-exact" if n_bad[PROOF_LEVEL] == 0 else ""))


def _float_parity(net, model, images: np.ndarray, *, batch_size: int, image_source: str) -> Parity:
    """A float export: logits only, in units of FLOAT_TOL, at the deployed optimization level (no integer kernels)."""
    import torch

    from export._compare import compare
    from qadtr.predict import to_tensor

    with torch.no_grad():
        ref = np.concatenate([net(to_tensor(images[i:i + batch_size])).numpy()
                              for i in range(0, len(images), batch_size)])
    out = ort_run(model.SerializeToString(), images, batch_size, level=DEPLOY_LEVEL)[OUTPUT]
    res = compare(ref, out, lsb=FLOAT_TOL, atol_lsb=1.0, min_argmax_agree=1.0, name="fp32 logits")
    return Parity(bool(res), len(images), image_source, 0, 0, 0, None, None, 0, 0, res.mismatch_frac == 0, {},
                  res.to_dict(), str(res))


def _deployed(model_path, images: np.ndarray, logits: np.ndarray, *, ref_logits: np.ndarray, step
              ) -> tuple[dict, dict | None]:
    """ORT_ENABLE_ALL on this host: its logits against Brevitas, and the executor semantics that reproduces them
    image by image (devices.intexec.attribute) with that semantics' integers (None when none reproduces all)."""
    from devices._runner import RunnerError
    from devices.intexec import attribute
    from export._compare import compare

    host = fingerprint()
    vs_ref = compare(ref_logits, logits, lsb=step, atol_lsb=0.5, max_mismatch_frac=1.0, min_argmax_agree=0.0,
                     name="deployed logits")  # measured, never a verdict: no threshold
    try:
        att = attribute(Path(model_path), images, logits, runtime="onnxrt", host=host, keep_ints=True)
    except RunnerError as e:  # a graph the executor does not model (e.g. export.trt's TensorRT-bound rewrite)
        att = {"explained_by": None, "skipped": str(e), "summary": f"not attributed: {e}", "integers": {}}
    ints = att.pop("integers") or None  # the explaining semantics' integers, from its own run
    summary = (f"ORT_ENABLE_ALL on {host['cpu']} ({host['int8_dot']}): argmax agree with Brevitas "
               f"{100 * vs_ref.argmax_agree:.2f}%, max |d| {vs_ref.max_abs_lsb:.3g} LSB; {att['summary']}")
    return ({"level": DEPLOY_LEVEL, "logits": vs_ref.to_dict(), "int8_dot": host["int8_dot"], "cpu": host["cpu"],
             "isa": host["isa"], "explained_by": att["explained_by"], "attribution": att, "summary": summary}, ints)


def _int_diff(ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> tuple[dict[str, int], int]:
    """Per tensor: elements that differ; and the largest difference in steps."""
    counts, worst = {}, 0
    for module, r in ref.items():
        diff = np.abs(out[module].astype(np.int32) - r.astype(np.int32))
        counts[module] = int(np.count_nonzero(diff))
        worst = max(worst, int(diff.max()) if diff.size else 0)
    return counts, worst


def parity_images(*, images: np.ndarray | None, data_dir: str | Path | None, dataset: str,
                  limit: int = PARITY_IMAGES) -> tuple[np.ndarray, str]:
    """Real test images when a data directory is given, else `images`, else fixed random pixels."""
    if data_dir is not None:
        from qadtr.data import load_split, subset

        split = subset(load_split(dataset, "test", data_dir), limit)
        return split.images, f"{dataset}/test subset of {len(split.images)} (seed 0)"
    if images is not None:
        return np.asarray(images, np.uint8), f"{len(images)} given images"
    return np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), np.uint8), "64 random images (no --data-dir)"


# -- library entry point -----------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import brevitas
    import onnx
    import onnxruntime
    import torch

    from qadtr import __version__

    return {"qadtr": __version__, "torch": torch.__version__, "brevitas": brevitas.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def load_for_export(checkpoint: str | Path, bits: int | None, float_model: bool):
    """(network, Checkpoint) to export; refuses unsupported requests before anything is written."""
    from export._common import deploy_model
    from qadtr.checkpoint import load_checkpoint, read_checkpoint_info

    info = read_checkpoint_info(checkpoint)
    have = ", ".join(str(w) if w == a else bits_name((w, a)) for w, a in info.model.bits)
    if float_model:
        if info.model.is_quant:
            raise QadtrError(f"{checkpoint} is quantized ({have}); drop --float and pass --bits with one of those")
        return load_checkpoint(checkpoint)
    if not info.model.is_quant:
        raise QadtrError(f"{checkpoint} is a float model; pass --float for an fp32 ONNX baseline, or export a "
                         "quantized checkpoint (train one with `python -m qadtr.train --bits 8`)")
    if bits is None:
        raise QadtrError(f"pass --bits (the checkpoint has {have}) or --float for a float checkpoint")
    return deploy_model(checkpoint, bits)


def export_onnx(checkpoint: str | Path, out: str | Path, *, bits: int | None, images: np.ndarray | None = None,
                data_dir: str | Path | None = None, limit: int = PARITY_IMAGES, opset: int = 13,
                float_model: bool = False) -> ExportResult:
    """Export `checkpoint` at `bits` (w = a) to QDQ ONNX, prove it, then put it at `out` with `<out>.json`.

    Args:
        checkpoint: model.pt (with model.json) or its folder.
        out: the .onnx to write.
        bits: weight = activation bits of the hidden layers; must be one the checkpoint was trained at.
        images: (N, H, W, 3) uint8 parity images when no `data_dir` is given.
        data_dir: dataset folder; the parity check then runs on `limit` test images.
        opset: ONNX opset (13: per-channel QDQ, the TensorRT and ORT baseline).
        float_model: export a float checkpoint as an fp32 ONNX (the fp32 baseline); `bits` is ignored.

    Returns:
        ExportResult (export._common), its record as saved.

    Raises:
        QadtrError: a float checkpoint without `float_model`, bits the checkpoint lacks, or a graph that fails
            the structural checks (nothing written); ProofFailed: failed parity (export._common.publish: the
            artifact is `<out>.rejected` with its record, nothing under `out`).

    Example:
        >>> r = export_onnx("zoo/resnet20_w4a4/model.pt", "/tmp/w4.onnx", bits=4, data_dir="../shared/data")
        >>> print(r.record.summary)
    """
    net, ck = load_for_export(checkpoint, bits, float_model)
    src = checkpoint_source(checkpoint, ck)
    imgs, described = parity_images(images=images, data_dir=data_dir, dataset=src.dataset, limit=limit)
    return export_onnx_net(net, out, source=src, bits=None if float_model else (bits, bits), images=imgs,
                           image_source=described, opset=opset)


def export_onnx_net(net, out: str | Path, *, source: Source, bits: tuple[int, int] | None, images: np.ndarray,
                    image_source: str, opset: int = 13) -> ExportResult:
    """The one ONNX export and proof of a deploy-form `net` (export_onnx and export.module call it); `bits` None:
    an fp32 export. Raises as export_onnx does."""
    import onnx

    from qadtr.predict import to_tensor

    with scratch("onnx") as tmp:
        staged = Path(tmp) / Path(out).name
        example = to_tensor(images[:1])  # (1, 3, H, W)
        stage(f"export.onnx: tracing the {bits_name(bits) if bits else 'fp32'} net to ONNX (opset {opset})")
        (export_qcdq if bits else export_float)(net, staged, example, opset=opset)
        model = onnx.load(str(staged))
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as e:
            raise QadtrError(f"onnx.checker rejected the export: {str(e).splitlines()[0]}") from None
        graph = check_graph(model, net, quantized=bits is not None)
        fusion = fusion_report(staged)
        parity = check_parity(net, staged, images, bits=bits[0] if bits else None, image_source=image_source)
        return publish(staged, Path(out), failure=parity.summary, **record_fields(
            "onnx", source, bits, ops=graph, fusion=fusion, extra={"opset": opset}, versions=versions(),
            **proof_fields(parity)))


def proof_fields(parity: Parity) -> dict:
    """The ExportRecord fields of an ORT proof (export.onnx and export.trt); `reusable` reads `passed` back."""
    on = ("ORT_DISABLE_ALL (node by node: QuantizeLinear, DequantizeLinear, float Conv/Gemm; no fused int8 kernel)"
          if parity.int_tensors else "ORT_ENABLE_ALL fp32 (no integer kernel)")
    return {"passed": parity.passed, "proof": on, "reference": "Brevitas fake-quant deploy net",
            "images": parity.images, "image_source": parity.image_source, "summary": parity.summary,
            "parity": parity.to_dict()}


def table_row(record) -> dict:
    """export.table's columns for an ONNX export (ExportRecord): ORT's fusion and the proof's figures."""
    p, logits = record.parity, record.parity["logits"]
    figures = {"int_elements": p["int_elements"], "int_off_end_to_end": p["int_mismatches_fused"],
               "int_off_per_layer": p["int_mismatches_local"], "int_max_step": p["int_max_step"],
               "argmax_agree": logits["argmax_agree"], "ties": logits["ties"], "n": logits["n"],
               "max_dlogit_lsb": logits["max_abs_lsb"], "passed": p["passed"], "exact": p["exact"]}
    return {"runtime": "onnxruntime CPU, ORT_ENABLE_ALL", "integer_ops": record.fusion.get("qlinearconv", 0),
            "float_convs": record.fusion.get("float_conv", 0), "figures": {"onnxrt": figures}}


def describe(result: ExportResult) -> str:
    f, record = result.record.fusion, result.record
    conv = f"{f['qlinearconv']} QLinearConv, {f['float_conv']} float Conv at ORT_ENABLE_ALL"
    return (f"wrote {result.path} ({record.artifact_bytes / 1024:.1f} KiB; {conv})\n"
            f"{record.summary}\n{deployed_line(record)}info: {result.record_path}")


def deployed_line(record) -> str:
    """'deployed here: ...' plus a newline, or '' (fp32 exports record no deployment apart from the proof)."""
    deployed = record.parity["deployed"]  # {} for fp32
    return f"deployed here: {deployed['summary']}\n" if deployed else ""


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="model.pt (with model.json beside it) or its folder")
    p.add_argument("--bits", type=int, default=None, help="weight = activation bits to export (one the model has)")
    p.add_argument("--out", default=None, help="output .onnx (default: ./<arch>_w<bits>a<bits>.onnx)")
    p.add_argument("--data-dir", default=None, help="dataset folder: parity on real test images (else random)")
    p.add_argument("--limit", type=int, default=PARITY_IMAGES, help="parity images from the test split")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13)")


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m export.onnx", description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--float", dest="float_model", action="store_true", help="export a float checkpoint as fp32")
    args = p.parse_args(argv)

    def body() -> None:
        check_count(args.limit, "--limit")  # parity images: 0 or fewer would prove nothing
        out = check_writable(args.out or default_out(args.checkpoint, args.bits, args.float_model), "file")
        result = export_onnx(args.checkpoint, out, bits=args.bits, opset=args.opset, data_dir=args.data_dir,
                             limit=args.limit, float_model=args.float_model)
        print(describe(result))

    return run_cli("export.onnx", body, argv)


if __name__ == "__main__":
    sys.exit(main())
