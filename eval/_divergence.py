"""The first layer where a deployed runtime's integer activations leave the fake-quant ones, per image.

Both sides rerun the (few) images with every quantized activation exposed:
- reference: the Brevitas deploy net, each activation quantizer's integers (`export.onnx.reference_run`
  for ONNX, `export.tflite.reference_ints` in the .tflite's int8 storage for LiteRT);
- ONNX Runtime: the artifact with every activation DequantizeLinear input added as a graph output
  (`export.onnx.activation_dq_inputs`, `with_outputs`), at the run's optimisation level (ORT_ENABLE_ALL);
- LiteRT: the artifact with every activation tensor added as a subgraph output (`export.tflite.with_outputs`:
  XNNPACK materialises only partition outputs), under the run's kernel set.
The instrumented artifact's logits are checked against the plain artifact's (`outputs_identical`):
extra outputs must not change what the kernels compute (they can: ORT fuses less around a tensor that is
also a graph output). So where a semantics of the integer executor reproduces the run (devices.intexec.attribute),
the deployed side is that executor's integers instead, checked against the run's own logits: the divergence
of a run made on another CPU or board is then shown as that CPU computed it. Layers are compared in network
(forward) order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RUNTIMES = ("onnxrt", "litert-xnnpack", "litert-builtin", "litert-ref")  # the runtimes whose intermediates we can read


@dataclass(frozen=True)
class ImageDivergence:
    sample: int  # replay row
    first_layer: str | None  # first layer (network order) with any differing integer; None = all agree
    differing: int  # elements of first_layer that differ
    elements: int  # elements of first_layer
    max_step: int  # largest |deployed - reference| in first_layer, in integer steps
    layers_differing: int  # compared layers with any difference (later ones inherit earlier differences)


@dataclass(frozen=True)
class Divergence:
    runtime: str
    method: str  # what was compared with what
    layers: tuple[str, ...]  # compared layers, network order
    images: tuple[ImageDivergence, ...]
    outputs_identical: bool | None  # instrumented artifact's logits == plain artifact's (None: not run)
    skipped: str = ""  # why nothing was compared (unsupported runtime, float model, ...)

    @property
    def summary(self) -> str:
        if self.skipped:
            return f"not computed: {self.skipped}"
        counts: dict[str, int] = {}
        for im in self.images:
            key = im.first_layer or "none (integers identical)"
            counts[key] = counts.get(key, 0) + 1
        text = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        warn = "" if self.outputs_identical in (True, None) else " (WARNING: instrumented logits differ)"
        return f"{len(self.images)} images: {text or 'none'}{warn}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["summary"] = self.summary
        return d


def layer_divergence(layers: list[str], ref: dict[str, np.ndarray], out: dict[str, np.ndarray],
                     *, samples: list[int]) -> tuple[ImageDivergence, ...]:
    """Per image i (row i of every (N, ...) array, replay row samples[i]): the first differing layer."""
    result = []
    for i, sample in enumerate(samples):
        first, differing, elements, worst, n_layers = None, 0, 0, 0, 0
        for name in layers:
            diff = np.abs(out[name][i].astype(np.int64) - ref[name][i].astype(np.int64))
            if diff.shape != ref[name][i].shape or out[name][i].shape != ref[name][i].shape:
                raise ValueError(f"{name}: deployed {out[name][i].shape} vs reference {ref[name][i].shape}")
            if not diff.any():
                continue
            n_layers += 1
            if first is None:
                first, differing, elements, worst = name, int(np.count_nonzero(diff)), int(diff.size), int(diff.max())
        result.append(ImageDivergence(int(sample), first, differing, elements, worst, n_layers))
    return tuple(result)


def _onnx_reference(net, artifact: Path, images: np.ndarray) -> tuple[list[str], dict, dict]:
    """(layers, Brevitas integers by layer, ONNX tensor name by layer) for an .onnx export."""
    import onnx

    from export.onnx import reference_run, activation_dq_inputs

    _, ref_ints, _ = reference_run(net, images, len(images))  # module.act_quant -> (N, C, H, W), forward order
    tensors = activation_dq_inputs(onnx.load(str(artifact)))  # ONNX tensor -> module.act_quant
    by_module = {m: t for t, m in tensors.items()}
    unpaired = sorted(set(ref_ints) ^ set(by_module))
    if unpaired:
        raise ValueError(f"{artifact.name}: activations not paired with Brevitas quantizers: {unpaired[:5]}")
    layers = [m.removesuffix(".act_quant") for m in ref_ints]
    ref = {m.removesuffix(".act_quant"): v for m, v in ref_ints.items()}
    return layers, ref, {m.removesuffix(".act_quant"): by_module[m] for m in ref_ints}


def _onnx(net, artifact: Path, images: np.ndarray, *, level: str) -> tuple[list[str], dict, dict, bool]:
    import onnx

    from export.onnx import OUTPUT, ort_run, with_outputs

    layers, ref, names = _onnx_reference(net, artifact, images)
    model = onnx.load(str(artifact))
    got = ort_run(with_outputs(model, list(names.values())), images, len(images), level=level)
    plain = ort_run(model.SerializeToString(), images, len(images), level=level)[OUTPUT]
    return layers, ref, {layer: got[names[layer]] for layer in layers}, bool(np.array_equal(got[OUTPUT], plain))


def _tflite_reference(net, artifact: Path, images: np.ndarray) -> tuple[list[str], dict]:
    """(layers, Brevitas integers in the .tflite's int8 storage by tensor name) for a .tflite export."""
    from devices.runtimes import export_record
    from export.tflite import build_tflite, reference_ints
    from qadtr.predict import to_tensor

    record = export_record(artifact)  # the headroom it was built with; without a record, the exporter's default
    built = build_tflite(net, *images.shape[1:3], headroom=True if record is None else record.extra["headroom"])
    _, ref = reference_ints(net, to_tensor(images), built.activations)  # name -> (N, H, W, C) int8 storage integers
    return list(built.activations), ref  # forward order: the order build_tflite emits them


def _tflite(net, artifact: Path, images: np.ndarray, *, kernels: str) -> tuple[list[str], dict, dict, bool]:
    from devices.litert import LiteRTRunner
    from export.tflite import with_outputs
    from qadtr._scratch import scratch
    from qadtr.predict import to_tensor

    layers, ref = _tflite_reference(net, artifact, images)
    feed = {"pixels": np.ascontiguousarray(to_tensor(images).permute(0, 2, 3, 1).numpy())}  # (N, H, W, 3)
    with scratch("divergence") as tmp:
        debug = Path(tmp) / "debug.tflite"
        debug.write_bytes(with_outputs(artifact.read_bytes(), layers))
        with LiteRTRunner(artifact, kernels=kernels, num_threads=1) as real, \
                LiteRTRunner(debug, kernels=kernels, num_threads=1) as dbg:
            plain = real.infer(feed)["logits"]
            got = dbg.infer(feed)
    return layers, ref, {n: got[n] for n in layers}, bool(np.array_equal(got["logits"], plain))


def _executor(net, artifact: Path, images: np.ndarray, *, semantics: str,
              deployed: np.ndarray | None) -> tuple[list[str], dict, dict, bool | None]:
    """The deployed side modelled by the integer executor under `semantics` (the one that reproduces the run):
    every integer it computes, on any host. `same`: its logits equal the run's stored ones (`deployed`)."""
    from devices.intexec import SEMANTICS, load_graph
    from qadtr.predict import to_tensor

    x = to_tensor(images).numpy()  # (N, 3, H, W)
    if artifact.suffix == ".onnx":
        layers, ref, names = _onnx_reference(net, artifact, images)
    else:
        layers, ref = _tflite_reference(net, artifact, images)
        names = {n: n for n in layers}
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (N, H, W, 3)
    graph = load_graph(artifact)
    outs, ints = graph.run(x, SEMANTICS[semantics].graph_name, keep_ints=True)
    same = None if deployed is None else bool(np.array_equal(outs[graph.output_names[0]], deployed))
    return layers, ref, {layer: ints[names[layer]] for layer in layers}, same


def first_divergence(net, runtime: str, artifact: str | Path, *, images: np.ndarray, samples: list[int],
                     onnx_level: str = "all", semantics: str | None = None,
                     deployed: np.ndarray | None = None) -> Divergence:
    """Integer activations of `net` (the fake-quant deploy net) vs `runtime` running `artifact`, per image.

    Args:
        net: the deploy net the artifact was exported from (`export._common.deploy_model`).
        runtime: a devices.runtimes name; those outside RUNTIMES are skipped with the reason.
        images: (N, H, W, 3) uint8, the replay rows `samples`.
        semantics: a devices.intexec semantics that reproduces the run (devices.intexec.attribute): the deployed side is
            then the executor's integers, so a run made on another CPU or board is explained on this host.
        deployed: (N, K) the run's logits of those rows; `outputs_identical` then checks the executor against them.

    Example:
        >>> d = first_divergence(net, "litert-builtin", "w2.tflite", replay.images[rows], rows)
        >>> d.images[0].first_layer
        'layers.0.0.relu1'
    """
    artifact = Path(artifact)
    if runtime not in RUNTIMES:
        return Divergence(runtime, "", (), (), None, f"no intermediate outputs for runtime {runtime!r} "
                          f"(supported: {', '.join(RUNTIMES)})")
    if not len(samples):
        return Divergence(runtime, "", (), (), None, "nothing to rerun: no disagreement and no logit off by more "
                          "than half an LSB")
    if semantics is not None:
        layers, ref, out, same = _executor(net, artifact, images, semantics=semantics, deployed=deployed)
        method = (f"Brevitas quantizer integers vs the integer executor under {semantics!r}, the semantics that "
                  "reproduces this run bit for bit (devices.intexec.attribute); every integer of the deployed computation")
    elif runtime == "onnxrt":
        layers, ref, out, same = _onnx(net, artifact, images, level=onnx_level)
        method = (f"Brevitas act_quant integers vs ONNX Runtime DequantizeLinear inputs at graph optimisation "
                  f"{onnx_level!r}, every activation added as a graph output")
    else:
        kernels = runtime.split("-", 1)[1]
        layers, ref, out, same = _tflite(net, artifact, images, kernels=kernels)
        method = (f"Brevitas quantizer integers (int8 storage) vs LiteRT {kernels} kernels, every activation tensor "
                  "added as a subgraph output of the artifact")
    return Divergence(runtime, method, tuple(layers), layer_divergence(layers, ref, out, samples=list(samples)), same)
