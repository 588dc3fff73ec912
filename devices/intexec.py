"""The integer executor as a runner: an exported .onnx or .tflite run in numpy with named requantization semantics.

    with IntExecRunner("w4.onnx", semantics="single-u8s8sat") as r:
        logits = r.infer({"input": x})["logits"]      # x: (B, 3, 32, 32) float32 in [0, 1]
    expected_semantics("onnxrt", fingerprint())       # what this host's ONNX Runtime computes: "single" with VNNI

Numpy only (no runtime, no torch), so the same file runs on a board. Each semantics models one kernel set
bit for bit; `SEMANTICS` says which and where it comes from (the runtimes' own sources, read and cited in
devices/_intexec_onnx.py and devices/_intexec_tflite.py). `attribute` runs every candidate on a deployed run's
images and says which one reproduces it, image by image (`eval.compare` and `export.onnx` report it):

    att = attribute(Path("w4.onnx"), images, deployed_logits, runtime="onnxrt", host=fingerprint())
    att["summary"]   # 'onnxrt = single-u8s8sat (ONNX Runtime ... AVX2 and no VNNI): 2600 of 2600 images bit-exact'

A semantics reproduces an image when every logit it computes equals the deployed run's bit for bit: the
executor models integer kernels exactly, so a single differing integer anywhere upstream shows in the logits.
Each candidate first runs on an evenly spread probe of the images; one that is exact on all of it runs on the
rest too, so the explaining semantics is counted on every image and the others on the probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devices._runner import Runner, RunnerError, TensorSpec


@dataclass(frozen=True)
class Semantics:
    name: str  # what --runtimes and compare.json call it: intexec-<name>
    artifact: str  # ".onnx" | ".tflite"
    graph_name: str  # the name the graph executor takes
    models: str  # the kernel set it is bit-exact with
    rounding: str  # how it requantizes, in words
    deployed: bool = True  # a kernel set a deployed run uses, so a candidate in `attribute`


SEMANTICS = {s.name: s for s in (
    Semantics("single", ".onnx", "single", "ONNX Runtime CPU, ORT_ENABLE_ALL, x86 with AVX-512 VNNI / AVX-VNNI "
              "(QLinearConv, QLinearAdd, QGemm)", "exact int32 sums, one rounding in float32 (round half to even)"),
    Semantics("single-u8s8sat", ".onnx", "single-u8s8sat", "ONNX Runtime CPU, ORT_ENABLE_ALL, x86 with AVX2 and no "
              "VNNI (MLAS VPMADDUBSW kernels)", "u8 x s8 products summed in pairs into int16 with saturation, "
              "then one rounding in float32"),
    Semantics("float-mlas", ".onnx", "float-mlas", "ONNX Runtime CPU, ORT_DISABLE_ALL (node by node: DequantizeLinear"
              " -> MLAS float32 Conv / Gemm -> QuantizeLinear), one intra-op thread, x86-64 FMA3 or AVX-512F SGEMM",
              "float32 FMA chains in MLAS's K-block order (devices/_intexec_f32.py), then QuantizeLinear: x / scale "
              "in float32, round half to even", deployed=False),  # the unfused proof run, not a deployed kernel set
    Semantics("xnnpack", ".tflite", "single", "LiteRT with its default XNNPACK delegate",
              "exact int32 sums, one rounding in float32 (round half to even), as Brevitas"),
    Semantics("double", ".tflite", "double", "LiteRT reference kernels (BUILTIN_REF), on every CPU",
              "int32 multiplier + shift: SaturatingRoundingDoublingHighMul then RoundingDivideByPOT (two roundings)"),
    Semantics("double-ruy", ".tflite", "double-ruy", "LiteRT builtin optimized kernels on x86 "
              "(BUILTIN_WITHOUT_DEFAULT_DELEGATES; CONV_2D through ruy)", "as double, but ruy's final shift rounds "
              "halves toward +inf and int8 ADD folds its input shift into the pre-shift (one rounding per input)"),
)}


def candidates(artifact: str | Path, *, deployed_only: bool = False) -> list[str]:
    """The semantics that can run `artifact`, by its suffix (with `deployed_only`, those of deployed kernel sets)."""
    suffix = Path(artifact).suffix
    return [s.name for s in SEMANTICS.values() if s.artifact == suffix and (s.deployed or not deployed_only)]


def expected_semantics(runtime: str, host: dict) -> str | None:
    """The semantics a runtime computes on a host (devices._host.fingerprint()), where one is known."""
    x86 = host.get("machine") in ("x86_64", "AMD64")
    if runtime == "onnxrt" and host.get("machine") in ("aarch64", "arm64"):  # MLAS on ARM sums u8 x s8 exactly
        return "single"  # (UDOT/SDOT or widening UMULL + UADALP into int32; tests/emu checks it on both boards)
    if runtime == "onnxrt" and x86:  # ORT's own answer to the probe first, the cpuinfo flags where it was not asked
        kind = host.get("ort_u8s8") if host.get("ort_u8s8") in ("exact", "pairs-int16-saturating") else host.get(
            "int8_dot")
        return "single-u8s8sat" if kind == "pairs-int16-saturating" else "single"
    return {"litert-xnnpack": "xnnpack", "litert-ref": "double"}.get(runtime) or (
        "double-ruy" if runtime == "litert-builtin" and x86 else None)


def load_graph(artifact: str | Path | bytes, suffix: str | None = None):
    """The graph executor of an .onnx (OnnxIntGraph) or .tflite (TfliteIntGraph)."""
    suffix = suffix or Path(artifact).suffix
    if suffix == ".onnx":
        from devices._intexec_onnx import OnnxIntGraph

        return OnnxIntGraph(artifact)
    if suffix == ".tflite":
        from devices._intexec_tflite import TfliteIntGraph

        return TfliteIntGraph(artifact)
    raise RunnerError(f"the integer executor runs .onnx and .tflite exports, not {suffix!r}")


class IntExecRunner(Runner):
    """One exported graph under one semantics (a key of SEMANTICS)."""

    def __init__(self, path: str | Path, *, semantics: str):
        super().__init__()
        if semantics not in SEMANTICS:
            raise RunnerError(f"unknown semantics {semantics!r}; choose one of {', '.join(SEMANTICS)}")
        self.path, self.semantics = Path(path), SEMANTICS[semantics]
        if self.path.suffix != self.semantics.artifact:
            raise RunnerError(f"semantics {semantics!r} runs {self.semantics.artifact} files, not {self.path.name}; "
                              f"for it use one of {', '.join(candidates(self.path)) or 'none'}")
        self.name = f"intexec-{semantics}"
        self.kernels = f"numpy integer executor, {semantics}: models {self.semantics.models}"
        self._graph = None

    def _activate(self) -> None:
        if not self.path.is_file():
            raise RunnerError(f"{self.name}: {self.path} not found")
        self._graph = load_graph(self.path)

    def _input_spec(self) -> list[TensorSpec]:
        shape = self._graph.input_shape  # e.g. (None, 3, 32, 32) or (None, 32, 32, 3)
        return [TensorSpec(self._graph.input_name, np.dtype(np.float32), shape)]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs, _ = self._graph.run(feed[self._graph.input_name], self.semantics.graph_name)
        return outs

    def integers(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(outputs, every integer activation by tensor name) for one input batch."""
        self._require_active("integers")
        return self._graph.run(x, self.semantics.graph_name, keep_ints=True)

    def _deactivate(self) -> None:
        self._graph = None


# -- attribution ---------------------------------------------------------------------------------------
PROBE_IMAGES = 200  # replay rows every candidate runs on: enough to refute a wrong one (they miss most images)
BATCH = 100  # images per executor call: bounds the im2col buffers (~120 MB at 32x32, 16 channels)
METHOD = ("the numpy integer executor (devices.intexec) runs the same artifact on the same replay bytes under each "
          "candidate semantics; an image is reproduced when all its logits are bit-identical to the deployed run's. "
          f"Candidates run on {PROBE_IMAGES} evenly spread rows; one exact on all of them runs on every row")


def _run(runner: IntExecRunner, images: np.ndarray, rows: np.ndarray, *, keep_ints: bool
         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(len(rows), K) logits of replay `images` (M, H, W, 3) uint8 at `rows`, fed as every runtime is fed
    (devices.runtimes.feed_format), and, with `keep_ints`, every integer activation of those rows."""
    from devices.runtimes import feed_format, read_logits

    fmt = feed_format(runner)
    logits, ints = [], {}
    for i in range(0, len(rows), BATCH):
        feed = fmt.feed(images[rows[i:i + BATCH]])
        outs, batch_ints = runner.integers(feed[fmt.name]) if keep_ints else (runner.infer(feed), {})
        logits.append(read_logits(runner, outs))
        for k, v in batch_ints.items():
            ints.setdefault(k, []).append(v)
    return np.concatenate(logits), {k: np.concatenate(v) for k, v in ints.items()}


def attribute(artifact: Path, images: np.ndarray, deployed: np.ndarray, *, runtime: str, host: dict | None,
              probe: int = PROBE_IMAGES, keep_ints: bool = False) -> dict:
    """Each candidate semantics' count of bit-identical images against `deployed` (M, K) logits.

    Returns {"method", "expected", "candidates": [{semantics, models, rounding, images, exact, argmax_agree}],
    "explained_by": the semantics exact on every image (or None), "summary"}; with `keep_ints` also
    "integers": {tensor: (M, ...) array} of the explaining semantics (taken from its full run, not run again).
    """
    expected = expected_semantics(runtime, host or {})
    names = sorted(candidates(artifact, deployed_only=True), key=lambda s: s != expected)  # the expected one first
    m = len(deployed)
    spread = np.unique(np.linspace(0, m - 1, min(probe, m)).astype(np.int64))  # (P,) evenly spread rows
    rows, integers = [], {}
    for name in names:
        sem = SEMANTICS[name]
        with IntExecRunner(artifact, semantics=name) as runner:
            whole = len(spread) == m  # the probe is every row
            got, ints = _run(runner, images, spread, keep_ints=keep_ints and whole)
            exact = np.all(got == deployed[spread], axis=1)  # (P,)
            used = spread
            if exact.all() and not whole:  # exact on the probe: count every image
                used = np.arange(m)
                got, ints = _run(runner, images, used, keep_ints=keep_ints)
                exact = np.all(got == deployed, axis=1)
        if keep_ints and exact.all() and len(used) == m and not integers:
            integers = ints
        rows.append({"semantics": name, "models": sem.models, "rounding": sem.rounding, "images": int(len(used)),
                     "exact": int(exact.sum()), "argmax_agree": float(np.mean(got.argmax(1) == deployed[used].argmax(1))),
                     "first_unexplained": [int(i) for i in used[~exact][:10]]})
    full = [r for r in rows if r["images"] == m and r["exact"] == m]
    best = max(rows, key=lambda r: r["exact"] / max(r["images"], 1)) if rows else None
    if full:
        r = full[0]
        summary = f"{runtime} = {r['semantics']} ({r['models']}): {r['exact']} of {m} images bit-exact"
    elif best is not None:
        summary = (f"{runtime}: no modelled semantics reproduces every image; closest {best['semantics']} "
                   f"({best['exact']} of {best['images']} bit-exact)")
    else:
        summary = f"{runtime}: no executor semantics for {artifact.suffix} files"
    out = {"method": METHOD, "expected": expected, "candidates": rows,
           "explained_by": full[0]["semantics"] if full else None, "summary": summary}
    return {**out, "integers": integers} if keep_ints else out
