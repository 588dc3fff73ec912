"""LiteRT (TFLite) runner: one .tflite under XNNPACK or LiteRT's builtin kernels.

The runner feeds exactly the model's input dtype and returns the model's outputs as they are:
an int8-input model such as MLPerf Tiny's (int8 NHWC = pixel - 128) gets int8 arrays prepared by
the caller, a float-input model float32. Quantizing at the boundary is the caller's decision (see
`eval.accuracy`), so the bytes a runtime sees are always the bytes the caller chose.

A dimension the model declares dynamic (shape signature -1, e.g. the batch of `export.tflite`
artifacts) is `None` in `input_spec()`; the runner resizes the interpreter when it changes.

Example:
    with LiteRTRunner("m.tflite", kernels="builtin") as r:
        logits = r.infer({"pixels": x})["logits"]  # x: float32 (B, 32, 32, 3)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devices._runner import Runner, RunnerError, TensorSpec

# kernel set -> interpreter op resolver: AUTO applies the default XNNPACK delegate; BUILTIN_WITHOUT_DEFAULT_DELEGATES
# keeps LiteRT's own optimized (gemmlowp-style) integer kernels; BUILTIN_REF its reference kernels
# (tensorflow/lite/kernels/internal/reference), the same arithmetic on every CPU
KERNELS = {"xnnpack": "AUTO", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "ref": "BUILTIN_REF"}


class LiteRTRunner(Runner):
    def __init__(self, path: str | Path, *, kernels: str = "xnnpack", num_threads: int | None = None,
                 preserve_all_tensors: bool = False):
        """Args:
            path: the .tflite file.
            kernels: "xnnpack" (LiteRT's default delegate) or "builtin" (no default delegates).
            num_threads: interpreter threads (None: LiteRT's default).
            preserve_all_tensors: keep intermediate tensors readable with `tensor()` (builtin kernels;
                tensors inside an XNNPACK partition are never materialised).
        """
        super().__init__()
        if kernels not in KERNELS:
            raise RunnerError(f"unknown kernel set {kernels!r}; choose one of {sorted(KERNELS)}")
        if num_threads is not None and num_threads < 1:
            raise RunnerError(f"num_threads={num_threads}; pass a positive count or None")
        self.path, self.kernels, self.num_threads = Path(path), kernels, num_threads
        self.kernel_set = kernels  # self.kernels becomes the checked line of devices._host.litert_kernels on activation
        self.preserve_all_tensors = preserve_all_tensors
        self.name = f"litert-{kernels}"
        self._interp = None

    def _activate(self) -> None:
        if not self.path.is_file():
            raise RunnerError(f"{self.name}: {self.path} not found")
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError as e:
            raise RunnerError("the LiteRT runner requires ai-edge-litert; pip install ai-edge-litert") from e
        try:
            self._interp = Interpreter(
                model_path=str(self.path), num_threads=self.num_threads,
                experimental_op_resolver_type=getattr(OpResolverType, KERNELS[self.kernel_set]),
                experimental_preserve_all_tensors=self.preserve_all_tensors)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise RunnerError(f"{self.name}: LiteRT cannot load {self.path}: {str(e).strip()[:300]}") from None
        from importlib.metadata import version

        from devices._host import litert_kernels

        line, delegated = litert_kernels(self._interp, self.kernel_set, version("ai-edge-litert"))
        if self.kernel_set != "xnnpack" and delegated:
            raise RunnerError(f"{self.name}: {delegated} nodes ran in a delegate where LiteRT's {self.kernel_set} "
                              "kernels were asked for; this ai-edge-litert build ignores the op resolver")
        self.kernels = line
        self.versions = {"ai-edge-litert": version("ai-edge-litert")}
        self._inputs = self._interp.get_input_details()
        self._outputs = self._interp.get_output_details()
        self._shapes = {d["index"]: tuple(d["shape"]) for d in self._inputs}

    def _input_spec(self) -> list[TensorSpec]:
        return [TensorSpec(d["name"], np.dtype(d["dtype"]),
                           tuple(None if s < 0 else int(s) for s in d["shape_signature"])) for d in self._inputs]

    def input_quantization(self) -> dict[str, tuple[float, int]]:
        """(scale, zero point) of each input; (0.0, 0) for a float input."""
        self._require_active("input_quantization")
        return {d["name"]: (float(d["quantization"][0]), int(d["quantization"][1])) for d in self._inputs}

    def output_quantization(self) -> dict[str, tuple[float, int]]:
        """(scale, zero point) of each output; (0.0, 0) for a float output."""
        self._require_active("output_quantization")
        return {d["name"]: (float(d["quantization"][0]), int(d["quantization"][1])) for d in self._outputs}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        interp = self._interp
        resized = False
        for d in self._inputs:
            shape = feed[d["name"]].shape
            if shape != self._shapes[d["index"]]:
                interp.resize_tensor_input(d["index"], list(shape), strict=True)
                self._shapes[d["index"]], resized = shape, True
        if resized:
            interp.allocate_tensors()
        for d in self._inputs:
            interp.set_tensor(d["index"], np.ascontiguousarray(feed[d["name"]]))
        interp.invoke()
        return {d["name"]: interp.get_tensor(d["index"]).copy() for d in self._outputs}

    def tensor(self, name: str) -> np.ndarray:
        """Any tensor by name after `infer` (needs `preserve_all_tensors=True` for intermediates)."""
        self._require_active("tensor")
        for d in self._interp.get_tensor_details():
            if d["name"] == name:
                try:
                    return self._interp.get_tensor(d["index"]).copy()
                except ValueError:  # LiteRT: "Tensor data is null"
                    raise RunnerError(f"{self.name}: tensor {name!r} is not materialised (inside a delegate "
                                      "partition); use kernels='builtin' with preserve_all_tensors=True") from None
        raise RunnerError(f"{self.name}: no tensor named {name!r} in {self.path.name}")

    def _deactivate(self) -> None:
        self._interp = None
        self.kernels = self.kernel_set
