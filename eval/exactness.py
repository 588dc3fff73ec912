"""Is the integer executor bit-exact with each kernel set it claims to model? Every integer, every logit, on the zoo.

    python -m eval.exactness --checkpoint zoo/resnet20_w2a2 zoo/resnet20_w4a4 zoo/resnet20_w8a8 --images 200 \\
        --data-dir ../shared/data --avx2-images 20 --out eval/results/exactness

For each checkpoint (at its bit width) the ONNX and TFLite exports are made (or reused, `export._common.reusable`)
and run on the same CIFAR-10 test images by every real kernel set of this host, with every integer activation
exposed (ORT: DequantizeLinear inputs as graph outputs, node by node; LiteRT: every quantized tensor as a
subgraph output), and by the executor under each semantics (devices.intexec). Each row counts the integer
elements and logits that differ. ORT's fused kernels are compared on logits only: exposing a tensor as a graph
output changes what ORT fuses. With --avx2-images, ORT also runs under qemu-x86_64 -cpu Haswell (a CPU without
VNNI, so MLAS dispatches its AVX2 kernels) on that many images. Writes OUT/exactness.json and prints the table.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError
from qadtr._scratch import scratch
from qadtr.bits import bits_name

# kernel set (what really ran) -> the executor semantics that claims to model it, and the alternatives shown
PAIRS = (("onnxrt ORT_DISABLE_ALL", "float-mlas"), ("onnxrt ORT_DISABLE_ALL", "single"),
         ("onnxrt ORT_ENABLE_ALL", "single"),
         ("onnxrt ORT_ENABLE_ALL", "single-u8s8sat"), ("litert xnnpack", "xnnpack"), ("litert xnnpack", "double"),
         ("litert ref", "double"), ("litert ref", "xnnpack"), ("litert builtin", "double-ruy"),
         ("litert builtin", "double"), ("onnxrt ORT_ENABLE_ALL, emulated Haswell (AVX2, no VNNI)", "single-u8s8sat"),
         ("onnxrt ORT_ENABLE_ALL, emulated Haswell (AVX2, no VNNI)", "single"))
ORT_BATCH = 100  # images per ORT session call, and per executor call where the result depends on it (float-mlas)
HASWELL = ("qemu-x86_64-static", "-cpu", "Haswell")  # user-mode emulation: CPUID says AVX2, no AVX-512, no VNNI
_ORT_SCRIPT = ("import sys, numpy as np, onnxruntime as ort\n"
               "o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.log_severity_level = 3\n"
               "s = ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n"
               "np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: np.load(sys.argv[2])})[0])\n")


def _ints_differ(real: dict, model: dict, names: list[str]) -> tuple[int, int]:
    """(elements differing, elements) over the named integer tensors."""
    off = sum(int(np.count_nonzero(real[n].astype(np.int64) != model[n].astype(np.int64))) for n in names)
    return off, sum(int(real[n].size) for n in names)


def _row(model: str, kernels: str, semantics: str, *, real_logits, model_logits, ints=None) -> dict:
    same = np.all(real_logits == model_logits, axis=1)  # (N,) every logit identical
    row = {"model": model, "kernels": kernels, "semantics": semantics, "images": int(len(same)),
           "images_identical_logits": int(same.sum()), "logits_differing": int((real_logits != model_logits).sum()),
           "argmax_differing": int((real_logits.argmax(1) != model_logits.argmax(1)).sum()),
           "max_abs_logit_diff": float(np.abs(real_logits.astype(np.float64) - model_logits).max(initial=0))}
    if ints is not None:
        row["int_tensors"], (row["int_differing"], row["int_elements"]) = ints[0], ints[1]
    # integer-exact: every integer activation equal (ORT_DISABLE_ALL's float Gemm rounds its logits its own way)
    row["integers_exact"] = row.get("int_differing", 0) == 0 if ints is not None else None
    row["bit_exact"] = row["images_identical_logits"] == row["images"] and row.get("int_differing", 0) == 0
    return row


def _haswell_logits(path: Path, x: np.ndarray) -> np.ndarray | str:
    """ORT_ENABLE_ALL logits under an emulated AVX2-only CPU, or why not."""
    if shutil.which(HASWELL[0]) is None:
        return f"{HASWELL[0]} not installed (apt-get install qemu-user-static)"
    with scratch("exactness") as tmp:
        np.save(f"{tmp}/x.npy", x)
        done = subprocess.run([*HASWELL, str(Path(sys.executable).resolve()), "-c", _ORT_SCRIPT, str(path),
                               f"{tmp}/x.npy", f"{tmp}/y.npy"], capture_output=True, text=True, timeout=3600)
        if done.returncode:
            return f"emulated ORT failed: {done.stderr.strip().splitlines()[-1:]}"
        return np.load(f"{tmp}/y.npy")


def _artifacts(checkpoint: Path, images: np.ndarray, out: Path) -> tuple[str, Path, Path]:
    """(row name, ONNX path, TFLite path) for one checkpoint at its first bit width, each export made unless
    the one already in OUT/artifacts is reusable."""
    from export import onnx as onnx_export, tflite as tflite_export
    from export._common import reusable
    from qadtr._config import sha256_file
    from qadtr.checkpoint import read_checkpoint_info, resolve

    pt = resolve(checkpoint)[0]
    bits = read_checkpoint_info(pt).model.bits[0][0]
    name = f"{checkpoint.name} {bits_name((bits, bits))}"
    stem = out / "artifacts" / f"{checkpoint.name}_{bits_name((bits, bits))}"
    onnx_path, tfl_path = Path(f"{stem}_qdq.onnx"), Path(f"{stem}_int8.tflite")
    src = sha256_file(pt)
    if reusable(onnx_path, src, onnx_export.EXPORTER_VERSION):
        onnx_export.export_onnx(pt, onnx_path, bits=bits, images=images[:100])
    if reusable(tfl_path, src, tflite_export.EXPORTER_VERSION):
        tflite_export.export_tflite(pt, tfl_path, bits=bits, images=images[:100])
    return name, onnx_path, tfl_path


def _onnx_rows(name: str, onnx_path: Path, images: np.ndarray, *, nchw: np.ndarray,
               avx2_images: int) -> list[dict]:
    """The ONNX Runtime rows: node by node with every activation exposed; fused (deployed) on logits only."""
    import onnx

    from devices.intexec import SEMANTICS, load_graph
    from export import onnx as onnx_export
    from qadtr.progress import stage

    rows = []
    stage(f"eval.exactness: {name}: ONNX Runtime node by node and fused on {len(images)} images")
    # ONNX: node by node with every activation exposed; fused (deployed) on logits only
    model = onnx.load(str(onnx_path))
    tensors = list(onnx_export.activation_dq_inputs(model))
    real = {"onnxrt ORT_DISABLE_ALL": onnx_export.ort_run(onnx_export.with_outputs(model, tensors), images,
                                                           ORT_BATCH, level="disable"),
            "onnxrt ORT_ENABLE_ALL": onnx_export.ort_run(model.SerializeToString(), images, ORT_BATCH, level="all")}
    if avx2_images:
        got = _haswell_logits(onnx_path, nchw[:avx2_images])
        if isinstance(got, str):
            print(f"{name}: no emulated AVX2 run: {got}")
        else:
            real["onnxrt ORT_ENABLE_ALL, emulated Haswell (AVX2, no VNNI)"] = {onnx_export.OUTPUT: got}
    stage(f"eval.exactness: {name}: the integer executor on the ONNX file (single, single-u8s8sat, float-mlas)")
    graph = load_graph(onnx_path)
    ours = {s: _run_batched(graph, SEMANTICS[s].graph_name, nchw) for s in ("single", "single-u8s8sat", "float-mlas")}
    for kernels, sem in PAIRS:
        if kernels in real and SEMANTICS[sem].artifact == ".onnx":
            got, (outs, ints) = real[kernels], ours[sem]
            n = len(got[onnx_export.OUTPUT])
            compared = tensors if "DISABLE" in kernels else []
            rows.append(_row(name, kernels, sem, real_logits=got[onnx_export.OUTPUT],
                             model_logits=outs[graph.output_names[0]][:n],
                             ints=(len(compared), _ints_differ(got, ints, compared)) if compared else None))
    return rows


def _run_batched(graph, semantics: str, x: np.ndarray, *, batch: int = ORT_BATCH) -> tuple[dict, dict]:
    """graph.run(x, semantics, keep_ints=True) in the batches ORT ran (float-mlas's Gemm depends on the batch size:
    one image takes MLAS's M = 1 kernel), concatenated."""
    runs = [graph.run(x[i:i + batch], semantics, keep_ints=True) for i in range(0, len(x), batch)]
    return tuple({k: np.concatenate([r[j][k] for r in runs]) for k in runs[0][j]} for j in (0, 1))


def _tflite_rows(name: str, tfl_path: Path, nhwc: np.ndarray) -> list[dict]:
    """The LiteRT rows: every quantized tensor exposed, under each kernel set, against the executor."""
    from devices.intexec import SEMANTICS, load_graph
    from devices.litert import LiteRTRunner
    from export.tflite import with_outputs
    from qadtr.progress import stage

    rows = []
    stage(f"eval.exactness: {name}: LiteRT xnnpack, ref and builtin against the executor")
    # TFLite: every quantized tensor exposed, under each kernel set
    tgraph = load_graph(tfl_path)
    ours = {s: tgraph.run(nhwc, SEMANTICS[s].graph_name, keep_ints=True) for s in ("xnnpack", "double", "double-ruy")}
    names = sorted(n for n in ours["double"][1] if n != tgraph.input_name)
    with scratch("exactness") as tmp:
        exposed = Path(tmp) / "exposed.tflite"
        exposed.write_bytes(with_outputs(tfl_path.read_bytes(), names))
        for kset in ("xnnpack", "ref", "builtin"):
            with LiteRTRunner(exposed, kernels=kset, num_threads=1) as r:
                got = {k: np.concatenate([r.infer({"pixels": nhwc[i:i + 100]})[k] for i in range(0, len(nhwc), 100)])
                       for k in [*tgraph.output_names, *names]}
            for kernels, sem in PAIRS:
                if kernels == f"litert {kset}":
                    outs, ints = ours[sem]
                    rows.append(_row(name, kernels, sem, real_logits=got[tgraph.output_names[0]],
                                     model_logits=outs[tgraph.output_names[0]],
                                     ints=(len(names), _ints_differ(got, ints, names))))
    return rows


def measure(checkpoint: Path, images: np.ndarray, out: Path, *, avx2_images: int = 0) -> list[dict]:
    """Every PAIRS row for one checkpoint (its first bit width) on `images` (N, H, W, 3) uint8."""
    from devices.runtimes import FeedFormat

    name, onnx_path, tfl_path = _artifacts(checkpoint, images, out)
    nchw, nhwc = (FeedFormat("x", layout, "float01", (None,) * 4).feed(images)["x"]  # the bytes every replay feeds
                  for layout in ("NCHW", "NHWC"))
    rows = _onnx_rows(name, onnx_path, images, nchw=nchw, avx2_images=avx2_images)
    return rows + _tflite_rows(name, tfl_path, nhwc)


def table(rows: list[dict]) -> str:
    lines = [f"{'model':22s} {'kernel set':58s} {'semantics':15s} {'integers differing':>24s} {'identical logits':>18s}"]
    for r in rows:
        ints = f"{r['int_differing']} of {r['int_elements']}" if "int_elements" in r else "(logits only)"
        verdict = "  bit-exact" if r["bit_exact"] else "  integers exact" if r["integers_exact"] else ""
        lines.append(f"{r['model']:22s} {r['kernels']:58s} {r['semantics']:15s} {ints:>24s} "
                     f"{r['images_identical_logits']:>7d} of {r['images']:<7d}{verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.exactness", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True, help="quantized checkpoints (each at its first bit width)")
    p.add_argument("--images", type=int, default=200, help="CIFAR-10 test images (subset seed 0)")
    p.add_argument("--avx2-images", type=int, default=0, help="also run ORT on an emulated AVX2-only CPU on this many")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--out", required=True, help="output folder (e.g. eval/results/exactness; no default: the "
                                                 "committed results are in the source tree)")
    args = p.parse_args(argv)

    def body() -> None:
        from devices._host import fingerprint
        from qadtr._config import write_json
        from qadtr.data import load_split, subset

        if args.images < 1 or args.avx2_images < 0:
            raise QadtrError(f"--images {args.images} / --avx2-images {args.avx2_images}: use 1 or more / 0 or more")
        check_writable(args.out, "folder")  # before the exports and runs, not at exactness.json after them
        images = subset(load_split("cifar10", "test", args.data_dir), args.images).images  # (N, 32, 32, 3) uint8
        out = Path(args.out)
        rows = []
        for ck in args.checkpoint:
            rows += measure(Path(ck), images, out, avx2_images=min(args.avx2_images, args.images))
            print(table(rows[-len(PAIRS):]), flush=True)
        write_json(out / "exactness.json", {"argv": sys.argv, "created": datetime.now(timezone.utc).isoformat(
            timespec="seconds"), "host": fingerprint(), "images": f"cifar10 test subset of {args.images} (seed 0)",
            "rows": rows})
        print(table(rows))
        print(f"wrote {out / 'exactness.json'}")

    return run_cli("eval.exactness", body, argv)


if __name__ == "__main__":
    sys.exit(main())
