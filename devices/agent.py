"""The board-side agent: runs one replay job on a board and prints one JSON line per batch.

devices/ssh.py copies this file to the board, with the power meter files (devices/power/*.py, stdlib
only) beside it. It needs the standard library, numpy and the runtime (onnxruntime, ai_edge_litert or
tensorrt): no torch, no qadtr. It does what devices/local.py does with devices/onnxrt.py,
devices/litert.py, devices/tensorrt.py and devices/runtimes.py (same sessions, same feed bytes, same
warm-up, same timed call), re-implemented here in one file; tests/unit/test_agent.py checks the logits
are byte-identical to the local runners'. It runs on Python >= 3.8 (JetPack 5) and TensorRT >= 8.5.

    python3 agent.py info                  -> {"type": "info", machine, cpu, os, python, numpy, runtimes, meters}
    python3 agent.py run JOB.json START [--watch-stdin]

The job file, written by the host (paths relative to it):
    {"version": 1, "runtime": "onnxrt", "options": {}, "batch_size": 100, "warmup": 3,
     "artifact": {"path": "../blobs/<sha256>.onnx", "sha256": "..."},
     "images": {"path": "../blobs/<sha256>.npy", "sha256": "..."},       # uint8 (N, H, W, 3)
     "power": null | {"meter": "tegrastats", "idle_s": 0}, "engines": "../engines"}
`run` prints, one JSON object per line:
    {"type": "need", "files": [...], "corrupt": [...]}   exit 3: files missing or failing their sha256
                                                          (corrupt ones are deleted) before anything ran
    {"type": "hello", "runner", "kernels", "feed", "versions", "power"}   after loading and warm-up
    {"type": "batch", "first", "n", "k", "logits": base64 of n*k float32 little-endian, "seconds", "energy_j"}
    {"type": "done", "batches": m}                        exit 0
    {"type": "error", "message": "..."}                   exit 2
With --watch-stdin the agent exits (code 4) as soon as its stdin closes: the host went away (a dropped
SSH connection or a timeout), so no orphaned agent keeps a board busy.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import sys
import threading
import time
from importlib import metadata

VERSION = 1  # of the job file and the line protocol; the host refuses an agent speaking another
HERE = os.path.dirname(os.path.abspath(__file__))


def _load_beside(name: str):
    """A stdlib-only module shipped beside this file (devices/ in the checkout), loaded by path: putting this
    folder on sys.path would let devices/tensorrt.py shadow the real `tensorrt` in the host process."""
    spec = importlib.util.spec_from_file_location(f"_qadtr_agent_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_host = _load_beside("_host")  # the fingerprint every result carries: CPU, ISA flags, versions
ARM_PARTS, cpu_model, fingerprint = _host.ARM_PARTS, _host.cpu_model, _host.fingerprint
# runtime -> (module, distribution, install hint on a board)
RUNTIMES = {
    "onnxrt": ("onnxruntime", "onnxruntime", "python3 -m pip install onnxruntime numpy"),
    "litert-xnnpack": ("ai_edge_litert", "ai-edge-litert", "python3 -m pip install ai-edge-litert numpy"),
    "litert-builtin": ("ai_edge_litert", "ai-edge-litert", "python3 -m pip install ai-edge-litert numpy"),
    "litert-ref": ("ai_edge_litert", "ai-edge-litert", "python3 -m pip install ai-edge-litert numpy"),
    "tensorrt": ("tensorrt", "tensorrt", "install JetPack (it ships TensorRT: `sudo apt install python3-libnvinfer`)"),
    "null": (None, None, ""),
}
OPTIONS = {"onnxrt": {"graph_optimization", "intra_op_threads"}, "litert-xnnpack": {"num_threads"},
           "litert-builtin": {"num_threads"}, "litert-ref": {"num_threads"}, "tensorrt": {"batch"}, "null": {"num_classes"}}
ENCODINGS = {"float01": "float32 = pixel / 255", "int8-minus-128": "int8 = pixel - 128"}
GPU_NODES = ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl")

class AgentError(Exception):
    """A job the agent refuses or cannot run; printed as {"type": "error"} and exit 2."""


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- the board ----------------------------------------------------------------------------------------------
def _version(dist: str | None) -> str | None:
    try:
        return metadata.version(dist) if dist else None
    except metadata.PackageNotFoundError:
        return None


def runtime_status(name: str) -> dict:
    module, dist, install = RUNTIMES[name]
    if module is None:
        return {"available": True, "version": None}
    if importlib.util.find_spec(module) is None:
        return {"available": False, "reason": f"{module} not installed on the board; {install}"}
    version = _version(dist)
    if name == "tensorrt":
        if not any(os.path.exists(n) for n in GPU_NODES):
            return {"available": False, "reason": "no NVIDIA GPU on the board (no /dev/nvidia0, no Jetson GPU node)"}
        version = version or getattr(importlib.import_module("tensorrt"), "__version__", None)  # apt installs
    return {"available": True, "version": version}


def _meters():
    """The meter registry module (power/_meter.py beside the agent, as in the checkout: devices/power/)."""
    power = os.path.join(HERE, "power")
    if power not in sys.path:
        sys.path.insert(0, power)
    return importlib.import_module("_meter")


def open_meter(name: str):
    module, cls = _meters().METERS[name].split(":")
    return getattr(importlib.import_module(module.rsplit(".", 1)[-1]), cls)()


def meter_status(name: str) -> dict:
    try:
        meter = open_meter(name)
    except Exception as e:  # noqa: BLE001 - MeterUnavailable, or anything else that stops it opening
        return {"available": False, "reason": str(e)}
    meter.close()
    return {"available": True, "scope": meter.scope}


def info() -> dict:
    try:
        with open("/proc/device-tree/model") as f:  # e.g. "NVIDIA Jetson Orin Nano Developer Kit"
            model = f.read().strip("\x00\n ")
    except OSError:
        model = ""
    return {"type": "info", "agent": VERSION, "machine": platform.machine(), "cpu": cpu_model(), "board": model,
            "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "numpy": _version("numpy"), "runtimes": {r: runtime_status(r) for r in RUNTIMES},
            "meters": {m: meter_status(m) for m in _meters().METERS}, "host": fingerprint()}


# -- the job ------------------------------------------------------------------------------------------------
def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_files(job: dict, where: str) -> tuple[list[str], list[str]]:
    """(missing, corrupt) among the job's files; a corrupt file is deleted so that it is pushed again."""
    missing, corrupt = [], []
    for key in ("artifact", "images"):
        path = os.path.join(where, job[key]["path"])
        if not os.path.isfile(path):
            missing.append(key)
        elif sha256_file(path) != job[key]["sha256"]:
            corrupt.append(key)
            os.remove(path)
    return missing, corrupt


class Feed:
    """uint8 (B, H, W, 3) images -> the model's input bytes, exactly as devices/runtimes.FeedFormat."""

    def __init__(self, name: str, dtype, shape: tuple, quant: tuple[float, int]):
        import numpy as np

        if len(shape) != 4 or (shape[1] == 3) == (shape[3] == 3):
            raise AgentError(f"cannot tell NCHW from NHWC in input {name!r} {shape}; the model must take "
                             "(B, 3, H, W) or (B, H, W, 3) images")
        self.name, self.shape, self.layout = name, shape, "NCHW" if shape[1] == 3 else "NHWC"
        if dtype == np.float32:
            self.encoding = "float01"
        elif dtype == np.int8 and quant == (1.0, -128):
            self.encoding = "int8-minus-128"
        else:
            raise AgentError(f"input {name!r} is {dtype} quantized as {quant}; replay feeds float32 pixel / 255 "
                             "or int8 pixel - 128")

    def __str__(self) -> str:
        return f"{self.name}: {self.layout} {ENCODINGS[self.encoding]}"

    def __call__(self, images):
        import numpy as np

        hw = self.shape[2:4] if self.layout == "NCHW" else self.shape[1:3]
        if any(d is not None and d != s for d, s in zip(hw, images.shape[1:3])):
            raise AgentError(f"the model takes {hw[0]}x{hw[1]} images, the replay holds "
                             f"{images.shape[1]}x{images.shape[2]}")
        if self.layout == "NCHW":
            images = images.transpose(0, 3, 1, 2)  # (B, 3, H, W)
        if self.encoding == "float01":
            x = images.astype(np.float32) / np.float32(255.0)
        else:
            x = (images.astype(np.int16) - 128).astype(np.int8)
        return {self.name: np.ascontiguousarray(x)}


def logits_of(outputs: list, quant: tuple[float, int]):
    """The first output as (B, K) float32, dequantized when it is integer (devices/runtimes.read_logits)."""
    import numpy as np

    out = outputs[0].reshape(len(outputs[0]), -1)  # (B, K)
    if np.issubdtype(out.dtype, np.integer) and quant[0] > 0:
        return ((out.astype(np.float32) - np.float32(quant[1])) * np.float32(quant[0])).astype(np.float32)
    return out.astype(np.float32, copy=False)


# -- runtimes: the same sessions as devices/onnxrt.py, litert.py, tensorrt.py, null.py ----------------------
class OrtRunner:
    runner = "onnxrt-cpu"
    LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
              "disable": "ORT_DISABLE_ALL"}
    DTYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}

    def __init__(self, path: str, *, graph_optimization: str = "all", intra_op_threads: int | None = None):
        import onnxruntime as ort

        if graph_optimization not in self.LEVELS:
            raise AgentError(f"graph_optimization={graph_optimization!r}; choose one of {sorted(self.LEVELS)}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.LEVELS[graph_optimization])
        opts.log_severity_level = 3
        if intra_op_threads is not None:
            opts.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own types for bad models
            raise AgentError(f"ONNX Runtime cannot load the model ({str(e).splitlines()[0][:200]})") from None
        provider = self.session.get_providers()[0].replace("ExecutionProvider", "")  # Python 3.8 on JetPack 5
        self.kernels = _host.ort_kernels(ort.__version__, provider, self.LEVELS[graph_optimization])  # as devices.onnxrt
        self.versions = {"onnxruntime": ort.__version__}
        self.names = [o.name for o in self.session.get_outputs()]
        self.out_quant = (0.0, 0)

    def inputs(self) -> list[tuple]:
        import numpy as np

        return [(i.name, np.dtype(self.DTYPES.get(i.type, "float32")),
                 tuple(d if isinstance(d, int) else None for d in i.shape), (0.0, 0)) for i in self.session.get_inputs()]

    def infer(self, feed: dict) -> tuple[list, float]:
        start = time.perf_counter()
        out = self.session.run(self.names, feed)
        return out, time.perf_counter() - start


class LiteRunner:
    RESOLVERS = {"xnnpack": "AUTO", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "ref": "BUILTIN_REF"}

    def __init__(self, path: str, *, kernels: str, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        try:
            self.interp = Interpreter(model_path=path, num_threads=num_threads,
                                      experimental_op_resolver_type=getattr(OpResolverType, self.RESOLVERS[kernels]),
                                      experimental_preserve_all_tensors=False)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise AgentError(f"LiteRT cannot load the model: {str(e).strip()[:300]}") from None
        version = _version("ai-edge-litert")
        self.kernels, delegated = _host.litert_kernels(self.interp, kernels, version)  # as devices.litert writes it
        if kernels != "xnnpack" and delegated:
            raise AgentError(f"{delegated} nodes ran in a delegate where LiteRT's {kernels} kernels were asked for")
        self.runner = f"litert-{kernels}"
        self.versions = {"ai-edge-litert": version}
        self.ins, self.outs = self.interp.get_input_details(), self.interp.get_output_details()
        self.shapes = {d["index"]: tuple(d["shape"]) for d in self.ins}
        self.out_quant = (float(self.outs[0]["quantization"][0]), int(self.outs[0]["quantization"][1]))

    def inputs(self) -> list[tuple]:
        import numpy as np

        return [(d["name"], np.dtype(d["dtype"]), tuple(None if s < 0 else int(s) for s in d["shape_signature"]),
                 (float(d["quantization"][0]), int(d["quantization"][1]))) for d in self.ins]

    def infer(self, feed: dict) -> tuple[list, float]:
        import numpy as np

        start = time.perf_counter()
        resized = False
        for d in self.ins:
            shape = feed[d["name"]].shape
            if shape != self.shapes[d["index"]]:
                self.interp.resize_tensor_input(d["index"], list(shape), strict=True)
                self.shapes[d["index"]], resized = shape, True
        if resized:
            self.interp.allocate_tensors()
        for d in self.ins:
            self.interp.set_tensor(d["index"], np.ascontiguousarray(feed[d["name"]]))
        self.interp.invoke()
        out = [self.interp.get_tensor(d["index"]).copy() for d in self.outs]
        return out, time.perf_counter() - start


class NullRunner:
    runner, kernels, versions, out_quant = "null", "none (null runner: zeros, plumbing tests)", {}, (0.0, 0)

    def __init__(self, path: str, *, num_classes: int = 10):
        self.num_classes = num_classes

    def inputs(self) -> list[tuple]:
        import numpy as np

        return [("pixels", np.dtype(np.float32), (None, None, None, 3), (0.0, 0))]

    def infer(self, feed: dict) -> tuple[list, float]:
        import numpy as np

        start = time.perf_counter()
        out = np.zeros((len(feed["pixels"]), self.num_classes), np.float32)
        return [out], time.perf_counter() - start


def make_runner(job: dict, where: str):
    runtime, options = job["runtime"], dict(job.get("options") or {})
    if runtime not in RUNTIMES:
        raise AgentError(f"this agent runs {', '.join(RUNTIMES)}, not {runtime!r}")
    unknown = sorted(set(options) - OPTIONS[runtime])
    if unknown:
        raise AgentError(f"runtime {runtime!r} on a board takes no option {', '.join(unknown)}")
    status = runtime_status(runtime)
    if not status["available"]:
        raise AgentError(f"runtime {runtime!r} is not available on this board: {status['reason']}")
    path = os.path.join(where, job["artifact"]["path"])
    if runtime == "onnxrt":
        return OrtRunner(path, **options)
    if runtime.startswith("litert-"):
        return LiteRunner(path, kernels=runtime.split("-", 1)[1], **options)
    if runtime == "tensorrt":
        from_here = os.path.join(where, job.get("engines", "engines"))
        return TrtRunner(path, job["artifact"]["sha256"], from_here, **options)
    return NullRunner(path, **options)


class _Cudart:
    """The few CUDA runtime calls TensorRT needs, through ctypes (as devices/tensorrt.py)."""

    def __init__(self):
        import ctypes
        import ctypes.util

        self.c = ctypes
        for lib in filter(None, (ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12",
                                 "libcudart.so.11.0")):
            try:
                self.lib = ctypes.CDLL(lib)
                return
            except OSError:
                continue
        raise AgentError("TensorRT needs the CUDA runtime (libcudart.so) on the board; install JetPack")

    def call(self, what: str, *args) -> None:
        code = getattr(self.lib, what)(*args)
        if code != 0:
            raise AgentError(f"CUDA {what} failed with cudaError {code}")

    def gpu_name(self) -> str:
        buf = self.c.create_string_buffer(8192)  # cudaDeviceProp starts with char name[256]
        fn = "cudaGetDeviceProperties_v2" if hasattr(self.lib, "cudaGetDeviceProperties_v2") else \
            "cudaGetDeviceProperties"
        self.call(fn, buf, 0)
        return buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace")

    def malloc(self, nbytes: int) -> int:
        ptr = self.c.c_void_p()
        self.call("cudaMalloc", self.c.byref(ptr), self.c.c_size_t(nbytes))
        return ptr.value

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:  # kind: 1 host->device, 2 device->host
        self.call("cudaMemcpy", self.c.c_void_p(dst), self.c.c_void_p(src), self.c.c_size_t(nbytes), kind)


class TrtRunner:
    """TensorRT INT8 engine from a TensorRT-bound ONNX (python -m export.trt), built on the board once and
    reused: engines are cached under `engines/` keyed by the ONNX sha256, TensorRT version, GPU and profile."""

    runner, out_quant = "tensorrt", (0.0, 0)

    def __init__(self, path: str, onnx_sha256: str, engines: str, *, batch: tuple = (1, 32, 128)):
        import numpy as np
        import tensorrt as trt

        self.np, self.trt, self.cuda = np, trt, _Cudart()
        gpu, logger = self.cuda.gpu_name(), trt.Logger(trt.Logger.WARNING)
        key = hashlib.sha256(json.dumps([onnx_sha256, trt.__version__, gpu, list(batch)]).encode()).hexdigest()[:24]
        cached = os.path.join(engines, f"{key}.engine")
        runtime, engine, built = trt.Runtime(logger), None, False
        if os.path.isfile(cached):
            with open(cached, "rb") as f:
                engine = runtime.deserialize_cuda_engine(f.read())  # None: corrupt or foreign, rebuilt below
        if engine is None:
            data, built = self._build(path, tuple(batch), logger), True
            os.makedirs(engines, exist_ok=True)
            with open(cached + ".tmp", "wb") as f:
                f.write(data)
            os.replace(cached + ".tmp", cached)
            engine = runtime.deserialize_cuda_engine(data)
        self.engine, self.context = engine, engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outs = [n for n in names if n not in self.ins]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.buffers: dict[str, tuple[int, int]] = {}
        how = "built on the board" if built else f"cached engine {key[:12]}"
        self.kernels = f"TensorRT {trt.__version__} INT8 engine on {gpu} ({how})"
        self.versions = {"tensorrt": trt.__version__, "gpu": gpu}

    def _build(self, path: str, batch: tuple, logger) -> bytes:
        trt = self.trt
        builder = trt.Builder(logger)
        explicit = 0 if int(trt.__version__.split(".")[0]) >= 10 else \
            1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # TensorRT 8.5/8.6 (JetPack 5) needs the flag
        network = builder.create_network(explicit)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(path):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise AgentError(f"the TensorRT parser rejected the model: {errors[:300]}; export it with "
                             "`python -m export.trt`")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ decides every int8 layer: no calibration
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            inp = network.get_input(i)
            profile.set_shape(inp.name, *((b, *tuple(inp.shape)[1:]) for b in batch))
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise AgentError("TensorRT built no engine; see its log on the agent's stderr")
        return bytes(engine)

    def inputs(self) -> list[tuple]:
        return [(n, self.dtypes[n], tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(n)), (0.0, 0))
                for n in self.ins]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.call("cudaFree", self.cuda.c.c_void_p(ptr))
            ptr = self.cuda.malloc(nbytes)
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def infer(self, feed: dict) -> tuple[list, float]:
        start, ctx = time.perf_counter(), self.context
        for n in self.ins:
            x = self.np.ascontiguousarray(feed[n])
            ctx.set_input_shape(n, x.shape)
            ptr = self._buffer(n, x.nbytes)
            self.cuda.copy(ptr, x.ctypes.data, x.nbytes, 1)
            ctx.set_tensor_address(n, ptr)
        outs = []
        for n in self.outs:
            outs.append(self.np.empty(tuple(ctx.get_tensor_shape(n)), self.dtypes[n]))
            ctx.set_tensor_address(n, self._buffer(n, outs[-1].nbytes))
        if not ctx.execute_async_v3(0):
            raise AgentError("TensorRT execution failed; see its log on the agent's stderr")
        self.cuda.call("cudaDeviceSynchronize")
        for n, arr in zip(self.outs, outs):
            self.cuda.copy(arr.ctypes.data, self.buffers[n][0], arr.nbytes, 2)
        return outs, time.perf_counter() - start


# -- the run ------------------------------------------------------------------------------------------------
def run(job_path: str, start: int) -> int:
    import numpy as np

    where = os.path.dirname(os.path.abspath(job_path))
    with open(job_path) as f:
        job = json.load(f)
    if job.get("version") != VERSION:
        raise AgentError(f"job version {job.get('version')}, this agent speaks {VERSION}; the host pushes its own "
                         "agent with each job: re-run")
    missing, corrupt = check_files(job, where)  # before anything is loaded or run
    if missing or corrupt:
        emit({"type": "need", "files": missing + corrupt, "corrupt": corrupt})
        return 3
    images = np.load(os.path.join(where, job["images"]["path"]), allow_pickle=False)  # (N, H, W, 3) uint8
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise AgentError(f"the images file holds {images.dtype} {images.shape}, not uint8 (N, H, W, 3)")
    if not 0 <= start < len(images):
        raise AgentError(f"start {start} is outside the {len(images)} images")
    runner = make_runner(job, where)
    specs = runner.inputs()
    if len(specs) != 1:
        raise AgentError(f"the model has {len(specs)} inputs; replay needs a one-input classifier")
    name, dtype, shape, quant = specs[0]
    feed = Feed(name, dtype, shape, quant)
    step = shape[0] or int(job["batch_size"])  # a fixed-batch model runs at its batch

    def batch(first: int) -> tuple[dict, int]:
        chunk = images[first:first + step]  # (B, H, W, 3)
        real = len(chunk)
        if real < step and shape[0] is not None:  # pad a fixed-batch model's last batch, keep the real rows
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - real, axis=0)])
        return feed(chunk), real

    meter, power = None, None
    if job.get("power"):
        try:
            meter = open_meter(job["power"]["meter"])
            idle = float(job["power"].get("idle_s") or 0)
            if idle > 0:
                meter.measure_idle(idle)
            power = {"meter": job["power"]["meter"], "scope": meter.scope, "idle_w": meter.idle_w}
        except Exception as e:  # noqa: BLE001 - a meter that fails leaves energy null, with the reason
            meter, power = None, {"meter": job["power"]["meter"], "unavailable": str(e)}
    x, _ = batch(start)
    for _ in range(int(job["warmup"])):  # caches, lazy allocations, XNNPACK packing: run, never reported
        runner.infer(x)
    emit({"type": "hello", "agent": VERSION, "runner": runner.runner, "kernels": runner.kernels, "feed": str(feed),
          "versions": {**runner.versions, "numpy": np.__version__, "python": platform.python_version()},
          "power": power, "samples": len(images)})
    count = 0
    for first in range(start, len(images), step):
        x, real = batch(first)
        if meter is not None:
            meter.start()
        out, seconds = runner.infer(x)
        energy = meter.stop()[0] if meter is not None else None
        logits = logits_of(out, runner.out_quant)[:real]  # (real, K)
        emit({"type": "batch", "first": first, "n": real, "k": int(logits.shape[1]), "seconds": seconds,
              "energy_j": energy, "logits": base64.b64encode(np.ascontiguousarray(logits, "<f4").tobytes()).decode()})
        count += 1
    if meter is not None:
        meter.close()
    emit({"type": "done", "batches": count})
    return 0


def _watch_stdin() -> None:
    """Exit as soon as stdin closes: the host (its ssh client) went away."""
    def watch() -> None:
        try:  # the raw fd, not sys.stdin: a daemon thread holding stdin's buffer lock aborts interpreter shutdown
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(4)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


USAGE = "usage: agent.py info | agent.py run JOB.json START [--watch-stdin]"


def main(argv: list[str] | None = None) -> int:
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == HERE:
        del sys.path[0]  # `import tensorrt` must find TensorRT, never a file that happens to sit beside the agent
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv == ["info"]:
            emit(info())
            return 0
        if len(argv) in (3, 4) and argv[0] == "run" and argv[2].isdigit() and argv[3:] in ([], ["--watch-stdin"]):
            if argv[3:]:
                _watch_stdin()
            return run(argv[1], int(argv[2]))
        raise AgentError(USAGE)
    except AgentError as e:
        emit({"type": "error", "message": str(e)})
    except Exception as e:  # noqa: BLE001 - the host gets one line; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        emit({"type": "error", "message": f"{type(e).__name__}: {str(e)[:500]}"})
    return 2


if __name__ == "__main__":
    sys.exit(main())
