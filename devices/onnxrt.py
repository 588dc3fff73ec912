"""ONNX Runtime on this machine's CPU: the reference integer runtime for QDQ ONNX exports.

Example:
    >>> with OnnxrtRunner("resnet20_w4a4.onnx") as r:
    ...     logits = r.infer({"input": x})["logits"]  # x: (B, 3, 32, 32) float32 in [0, 1]
    >>> r.kernels
    'ORT 1.31.1 CPU, ORT_ENABLE_ALL, u8s8 sums exact (QLinearConv int8: 21 of 21 convs)'
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from devices._runner import Runner, RunnerError, TensorSpec

LEVELS = ("all", "extended", "basic", "disable")  # graph_optimization -> ORT GraphOptimizationLevel
_LEVEL_NAMES = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                "disable": "ORT_DISABLE_ALL"}
# ONNX tensor type strings as ORT reports them -> numpy
_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
           "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


class OnnxrtRunner(Runner):
    """Runs an .onnx file (or its bytes) with ONNX Runtime.

    Args:
        model: path of an .onnx file, or the serialized model as bytes.
        providers: ORT execution providers, in priority order.
        graph_optimization: "all" (deployment: QDQ fused into QLinearConv etc.), "extended", "basic",
            or "disable" (QDQ run node by node in float: the faithful reference of P10).
        intra_op_threads: ORT intra-op threads; None = ORT's default (all cores).
        optimized_model_path: when set, ORT writes the graph it actually runs there (fusion check).
    """

    name = "onnxrt-cpu"

    def __init__(self, model: str | Path | bytes, *, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 graph_optimization: str = "all", intra_op_threads: int | None = None,
                 optimized_model_path: str | Path | None = None):
        super().__init__()
        if graph_optimization not in LEVELS:
            raise RunnerError(f"graph_optimization={graph_optimization!r}; choose one of {LEVELS}")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise RunnerError(f"intra_op_threads={intra_op_threads}; use a positive count or None (ORT default)")
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise RunnerError(f"{model} not found; export one with `python -m export.onnx model.pt --bits 8`")
        self.model = model if isinstance(model, bytes) else str(model)
        self.providers = tuple(providers)
        self.graph_optimization = graph_optimization
        self.intra_op_threads = intra_op_threads
        self.optimized_model_path = None if optimized_model_path is None else str(optimized_model_path)
        self.kernels = f"ORT CPU, {_LEVEL_NAMES[graph_optimization]} (not activated yet)"
        self._session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVEL_NAMES[self.graph_optimization])
        opts.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
        if self.intra_op_threads is not None:
            opts.intra_op_num_threads = self.intra_op_threads
        if self.optimized_model_path is not None:
            opts.optimized_model_filepath = self.optimized_model_path
        try:
            self._session = ort.InferenceSession(self.model, sess_options=opts, providers=list(self.providers))
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for bad models/providers
            raise RunnerError(f"{self.name}: ONNX Runtime cannot load the model ({str(e).splitlines()[0][:200]}); "
                              "re-export it with `python -m export.onnx`") from None
        provider = self._session.get_providers()[0].replace("ExecutionProvider", "")  # no str.removesuffix: boards run Python 3.8
        from devices._host import ort_kernels

        self.kernels = ort_kernels(ort.__version__, provider, _LEVEL_NAMES[self.graph_optimization])
        self.versions = {"onnxruntime": ort.__version__}
        if self.optimized_model_path is not None:
            import onnx

            ops = Counter(n.op_type for n in onnx.load(self.optimized_model_path).graph.node)
            quant = ops["QLinearConv"] + ops["ConvInteger"]
            self.kernels += f" (QLinearConv int8: {quant} of {quant + ops['Conv'] + ops['FusedConv']} convs)"

    def _input_spec(self) -> list[TensorSpec]:
        specs = []
        for i in self._session.get_inputs():
            shape = tuple(d if isinstance(d, int) else None for d in i.shape)  # symbolic dims -> None
            specs.append(TensorSpec(i.name, np.dtype(_DTYPES.get(i.type, np.float32)), shape))
        return specs

    def output_names(self) -> list[str]:
        self._require_active("output_names")
        return [o.name for o in self._session.get_outputs()]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, feed)))

    def _deactivate(self) -> None:
        self._session = None
