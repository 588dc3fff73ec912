"""TensorRT on an NVIDIA GPU (a Jetson or a discrete card): an INT8 engine behind the Runner contract.

The artifact is a TensorRT-bound ONNX (`python -m export.trt`), built into an engine on activation,
or an .engine built earlier on this very device: engines are tied to the TensorRT version and GPU
that built them. Explicit Q/DQ nodes fix every scale, so the build needs no calibration.

Device memory goes through the CUDA runtime library via ctypes (as Polygraphy does), so nothing
beyond TensorRT itself is needed (no pycuda, no torch). Timing covers host-to-device copy,
execution and the copy back, like the other runners' host-visible `infer`.

Example:
    >>> with TensorRTRunner("trt_w4/model.onnx", save_engine="trt_w4/model.engine") as r:
    ...     logits = r.infer({"input": x})["logits"]  # x: float32 (B, 3, 32, 32), B <= batch[2]
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from devices._runner import Runner, RunnerError, TensorSpec

INSTALL = "use JetPack's TensorRT on a Jetson, or `pip install tensorrt` with a CUDA driver on an NVIDIA GPU"


def build_engine(trt, onnx_path: str | Path, batch: tuple[int, int, int], *, logger, describe=None,
                 tool: str = "TensorRT") -> bytes:
    """Parse and build a TensorRT-bound ONNX into a serialized engine (min/opt/max batch profile).

    `trt` is the tensorrt module (8.5+: JetPack 5 needs the explicit-batch flag, 10+ has only explicit batch) or
    tensorrt_rtx (strongly typed: no INT8 flag to set). `describe(network)` is called once the model is parsed
    (e.g. to log its layer count before the build); `tool` names it in errors. The one engine builder: the runner, the board agent and
    `python -m export.trt`'s offline check all call it.
    """
    builder = trt.Builder(logger)
    # TensorRT 8.x (JetPack 5) builds implicit-batch networks unless told; 10+ and TensorRT-RTX know no other kind
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "EXPLICIT_BATCH", None)
    legacy = flag is not None and int(str(trt.__version__).split(".")[0]) < 10
    network = builder.create_network(1 << int(flag) if legacy else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RunnerError(f"the {tool} parser rejected {Path(onnx_path).name}: {errors[:300]}; "
                          "export it with `python -m export.trt`")
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ nodes decide every int8 layer
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        rest = tuple(inp.shape)[1:]  # (C, H, W): fixed in every export; only the batch is dynamic
        profile.set_shape(inp.name, *((b, *rest) for b in batch))
    config.add_optimization_profile(profile)
    if describe is not None:
        describe(network)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RunnerError(f"{tool} returned no engine for {Path(onnx_path).name}; see its log above")
    return bytes(engine)


class _Cudart:
    """The few CUDA runtime calls the runner needs, through ctypes."""

    H2D, D2H = 1, 2  # cudaMemcpyKind

    def __init__(self):
        for lib in filter(None, (ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12",
                                 "libcudart.so.11.0")):
            try:
                self.lib = ctypes.CDLL(lib)
                return
            except OSError:
                continue
        raise RunnerError(f"the TensorRT runner needs the CUDA runtime library (libcudart.so); {INSTALL}")

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RunnerError(f"CUDA {what} failed with cudaError {code}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def copy(self, dst: int, src: int, nbytes: int, *, kind: int) -> None:
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind),
                    "cudaMemcpy")

    def gpu_name(self) -> str:
        buf = ctypes.create_string_buffer(8192)  # cudaDeviceProp starts with char name[256]
        fn = "cudaGetDeviceProperties_v2" if hasattr(self.lib, "cudaGetDeviceProperties_v2") else \
            "cudaGetDeviceProperties"
        self._check(getattr(self.lib, fn)(buf, 0), fn)
        return buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace")

    def sync(self) -> None:
        self._check(self.lib.cudaDeviceSynchronize(), "cudaDeviceSynchronize")


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, path: str | Path, *, batch: tuple[int, int, int] = (1, 32, 128),
                 save_engine: str | Path | None = None, engine_cache: str | Path | None = None,
                 onnx_sha256: str | None = None):
        """Args:
            path: a TensorRT-bound .onnx (built here on activation) or an .engine built on this device.
            batch: (min, opt, max) batch sizes of the optimization profile when building from .onnx.
            save_engine: also write the engine built from the .onnx there (to reuse it as `path` later).
            engine_cache: a folder of engines built here before, keyed by the ONNX's sha256, the TensorRT
                version, the GPU and the profile: a hit skips the build (a board's replays reuse one engine).
            onnx_sha256: the .onnx's sha256 when the caller has just verified it (the agent has), so the cache
                key is not computed by hashing the file a second time.
        """
        super().__init__()
        self.path = Path(path)
        if self.path.suffix not in (".onnx", ".engine"):
            raise RunnerError(f"{self.path.name}: TensorRT takes a TensorRT-bound .onnx or an .engine")
        if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
            raise RunnerError(f"batch={batch}; pass (min, opt, max) with 1 <= min <= opt <= max")
        self.batch, self.save_engine = tuple(int(b) for b in batch), save_engine
        self.engine_cache = None if engine_cache is None else Path(engine_cache)
        self.onnx_sha256 = onnx_sha256
        self.kernels = "TensorRT INT8 (not activated yet)"
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor -> (device pointer, bytes)

    def _activate(self) -> None:
        try:
            import tensorrt as trt
        except ImportError as e:
            raise RunnerError(f"the TensorRT runner requires tensorrt; {INSTALL}") from e
        if not self.path.is_file():
            raise RunnerError(f"{self.path} not found")
        self._cuda = _Cudart()
        gpu, logger = self._cuda.gpu_name(), trt.Logger(trt.Logger.WARNING)
        version = str(getattr(trt, "__version__", "?"))
        data, how = self._engine_bytes(trt, gpu, version, logger=logger)
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        if self._engine is None and how.startswith("cached"):  # a corrupt or foreign cache entry: rebuild it
            data, how = self._engine_bytes(trt, gpu, version, logger=logger, use_cache=False)
            self._engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        if self._engine is None:
            raise RunnerError(f"TensorRT {version} cannot load {self.path.name}: engines only run on the "
                              "TensorRT version and GPU that built them; rebuild it here from the TensorRT-bound ONNX")
        self.kernels = f"TensorRT {version} INT8 engine on {gpu} ({how})"
        self.versions = {"tensorrt": version, "gpu": gpu}
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}

    def _engine_bytes(self, trt, gpu: str, version: str, *, logger, use_cache: bool = True) -> tuple[bytes, str]:
        """The serialized engine and how it was obtained: read (.engine), from the cache, or built here."""
        if self.path.suffix == ".engine":
            return self.path.read_bytes(), self.path.name
        cached = None
        if self.engine_cache is not None:
            sha = self.onnx_sha256 or hashlib.sha256(self.path.read_bytes()).hexdigest()
            key = hashlib.sha256(json.dumps([sha, version, gpu, list(self.batch)]).encode()).hexdigest()[:24]
            cached = self.engine_cache / f"{key}.engine"
            if use_cache and cached.is_file():
                return cached.read_bytes(), f"cached engine {key[:12]}"
        data = build_engine(trt, self.path, self.batch, logger=logger)
        if self.save_engine is not None:
            Path(self.save_engine).write_bytes(data)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        return data, "built here"

    def _input_spec(self) -> list[TensorSpec]:
        shapes = {n: tuple(self._engine.get_tensor_shape(n)) for n in self._inputs}  # -1 = dynamic
        return [TensorSpec(n, self._dtypes[n], tuple(None if d < 0 else int(d) for d in shapes[n]))
                for n in self._inputs]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:  # grow only: a smaller batch reuses the buffer
            if ptr:
                self._cuda.free(ptr)
            ptr, size = self._cuda.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctx = self._context
        for n in self._inputs:
            x = np.ascontiguousarray(feed[n])
            top = self._engine.get_tensor_profile_shape(n, 0)[2][0]
            if len(x) > top:
                raise RunnerError(f"{self.name}: batch {len(x)} exceeds the engine's profile maximum {top}; "
                                  "use a smaller batch or rebuild with a larger batch=(min, opt, max)")
            ctx.set_input_shape(n, x.shape)
            ptr = self._buffer(n, x.nbytes)
            self._cuda.copy(ptr, x.ctypes.data, x.nbytes, kind=_Cudart.H2D)
            ctx.set_tensor_address(n, ptr)
        outs = {}
        for n in self._outputs:
            outs[n] = np.empty(tuple(ctx.get_tensor_shape(n)), self._dtypes[n])
            ctx.set_tensor_address(n, self._buffer(n, outs[n].nbytes))
        if not ctx.execute_async_v3(0):  # the legacy default stream
            raise RunnerError(f"{self.name}: TensorRT execution failed; see its log above")
        self._cuda.sync()
        for n, arr in outs.items():
            self._cuda.copy(arr.ctypes.data, self._buffers[n][0], arr.nbytes, kind=_Cudart.D2H)
        return outs

    def _deactivate(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cuda.free(ptr)
        self._buffers = {}
        self._context = self._engine = None
