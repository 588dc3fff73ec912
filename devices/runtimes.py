"""Runtimes by name (P7): a registry that works without their dependencies installed.

    probe("litert-builtin")                    # None = it runs here; else the reason it doesn't
    with make_runner("onnxrt", "w4.onnx") as r:
        out = r.infer(prepare_feed(r, images))  # images: uint8 (B, H, W, 3), the replay's bytes
        logits = read_logits(r, out)            # (B, K) float32: the first output

Every runner the registry makes takes the same uint8 images: `feed_format` reads the runner's input
spec and turns them into the bytes that model expects (NCHW or NHWC float32 = pixel / 255, the same
bytes as `qadtr.predict.to_tensor`; int8 = pixel - 128 for MLPerf Tiny-style int8 inputs).
Nothing here imports a runtime: `probe` uses `importlib.util.find_spec`, `make_runner` imports the
runner's module, and the runner imports its runtime in `activate()`.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError
from qadtr._registry import Registry, resolve

CHECKPOINT_DIR = "/"  # in RuntimeInfo.artifacts: a checkpoint directory (model.pt + model.json inside)


@dataclass(frozen=True)
class RuntimeInfo:
    name: str  # what users type: --runtimes onnxrt,litert-builtin
    runner: str  # "module:Class", imported on first use
    artifacts: tuple[str, ...]  # accepted suffixes (CHECKPOINT_DIR = a checkpoint folder); () = any file
    requires: tuple[str, ...] = ()  # top-level modules that must be importable
    install: str = ""  # how to get `requires`, quoted in every "not available" message
    kwargs: dict = field(default_factory=dict, hash=False)  # fixed constructor arguments of the runner
    gpu: bool = False  # needs an NVIDIA GPU (and its driver) to run
    in_defaults: bool = True  # chosen when the user names no runtimes (False: plumbing only)
    doc: str = ""
    board: tuple[str, ...] | None = None  # runs on a board through devices/agent.py: the options a job may set
    dist: str | None = None  # the distribution whose version a board reports (None: the runtime has none)
    board_install: str = ""  # how to get `requires` on a board (quoted by the agent)

    def __post_init__(self) -> None:
        if ":" not in self.runner:
            raise ValueError(f"RuntimeInfo {self.name!r}: runner={self.runner!r}; write 'module:Class'")


RUNTIMES: Registry[RuntimeInfo] = Registry("runtime")
register_runtime = RUNTIMES.register  # a second row of one name: ValueError


_LITERT = {"runner": "devices.litert:LiteRTRunner", "artifacts": (".tflite",), "requires": ("ai_edge_litert",),
           "install": "pip install 'qadtr-edge[litert]'", "board": ("num_threads",), "dist": "ai-edge-litert",
           "board_install": "python3 -m pip install ai-edge-litert numpy"}
register_runtime(RuntimeInfo(
    "fakequant", "devices.fakequant:FakeQuantRunner", (".pt", CHECKPOINT_DIR, ".onnx", ".tflite"),
    requires=("torch", "brevitas"), install="pip install torch==2.13.0 brevitas==0.13.4",
    doc="the reference: Brevitas fake-quant deploy_net of a checkpoint (or of an export's source checkpoint)"))
register_runtime(RuntimeInfo(
    "onnxrt", "devices.onnxrt:OnnxrtRunner", (".onnx",), requires=("onnxruntime",),
    install="pip install 'qadtr-edge[onnx]'", doc="ONNX Runtime CPU, ORT_ENABLE_ALL (QDQ fused to QLinearConv)",
    board=("graph_optimization", "intra_op_threads"), dist="onnxruntime",
    board_install="python3 -m pip install onnxruntime numpy"))
register_runtime(RuntimeInfo("litert-xnnpack", **_LITERT, kwargs={"kernels": "xnnpack"},
                             doc="LiteRT with its default XNNPACK delegate"))
register_runtime(RuntimeInfo("litert-builtin", **_LITERT, kwargs={"kernels": "builtin"},
                             doc="LiteRT's own optimized integer kernels (BUILTIN_WITHOUT_DEFAULT_DELEGATES)"))
register_runtime(RuntimeInfo("litert-ref", **_LITERT, kwargs={"kernels": "ref"}, in_defaults=False,
                             doc="LiteRT's reference kernels (BUILTIN_REF): TFLite's arithmetic, the same on every CPU"))
register_runtime(RuntimeInfo(
    "tensorrt", "devices.tensorrt:TensorRTRunner", (".onnx", ".engine"), requires=("tensorrt",),
    install="use JetPack's TensorRT on a Jetson, or `pip install tensorrt` on a machine with an NVIDIA GPU",
    gpu=True, doc="TensorRT INT8 engine built on this GPU from a TensorRT-bound ONNX (python -m export.trt)",
    board=("batch",), dist="tensorrt",
    board_install="install JetPack (it ships TensorRT: `sudo apt install python3-libnvinfer`)"))
_INTEXEC = {"runner": "devices.intexec:IntExecRunner", "requires": ("numpy",), "in_defaults": False,
            "install": "pip install numpy (and onnx for .onnx graphs; ai-edge-litert's schema for .tflite)"}
for _name, _art, _doc in (("single", ".onnx", "ORT fused kernels with VNNI"),
                          ("single-u8s8sat", ".onnx", "ORT fused kernels on AVX2 without VNNI (int16 pair saturation)"),
                          ("xnnpack", ".tflite", "LiteRT XNNPACK (one rounding in float)"),
                          ("double", ".tflite", "LiteRT reference kernels (double rounding)"),
                          ("double-ruy", ".tflite", "LiteRT builtin optimized kernels on x86")):
    register_runtime(RuntimeInfo(f"intexec-{_name}", artifacts=(_art,), kwargs={"semantics": _name},
                                 doc=f"numpy integer executor modelling {_doc}", **_INTEXEC))
register_runtime(RuntimeInfo("null", "devices.null:NullRunner", (), in_defaults=False,
                             doc="zeros of the right shape, for plumbing tests", board=("num_classes",)))


def list_runtimes() -> list[str]:
    return RUNTIMES.names()


def board_runtimes() -> dict[str, RuntimeInfo]:
    """The rows a board runs through devices/agent.py, in table order."""
    return {n: r for n, r in RUNTIMES.items() if r.board is not None}


def get_runtime(name: str) -> RuntimeInfo:
    """The row of runtime `name`; QadtrError listing the known runtimes for any other name."""
    return RUNTIMES.get(name)


def nvidia_gpu() -> str | None:
    """The device node of an NVIDIA GPU (discrete or Jetson), or None."""
    for node in ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl"):
        if Path(node).exists():
            return node
    return None


def missing_modules(modules) -> list[str]:
    """Those of `modules` (top-level names) that cannot be imported here, found without importing them."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken install raises instead of returning None
            found = False
        if not found:
            missing.append(module)
    return missing


def probe(name: str, *, board: bool = False) -> str | None:
    """None when runtime `name` can run here, else the reason it can't (nothing is imported). `board`: the
    agent asks on a board, so the reason says so and quotes the row's board install line."""
    info = get_runtime(name)
    missing = missing_modules(info.requires)
    where = "on the board" if board else "here"
    if missing:
        return f"{', '.join(missing)} not installed{' on the board' if board else ''}; " \
               f"{info.board_install if board else info.install}"
    if info.gpu and nvidia_gpu() is None:
        return f"no NVIDIA GPU {where} (no /dev/nvidia0, no Jetson /dev/nvhost-ctrl-gpu)" + \
            ("" if board else "; run it on the device")
    return None


def record_path(artifact: str | Path) -> Path:
    """Where an artifact's export record lives: `<artifact>.json` (m.onnx -> m.onnx.json), so that an .onnx and a
    .tflite of one stem in one folder keep separate records."""
    return Path(f"{artifact}.json")


def export_record(artifact: str | Path):
    """The ExportRecord (devices.export_record) beside an .onnx/.tflite, or None when it has none or it is unreadable.

    Its reader is imported here, not at the top: this file runs on boards, which get no qadtr._config and no
    records (a board's blobs travel without them, so the import below never runs there).
    """
    path = record_path(artifact)
    if not path.is_file():
        return None
    from devices.export_record import read_record

    try:
        return read_record(path)
    except QadtrError:
        return None


def accepts(name: str, artifact: str | Path) -> str | None:
    """None when runtime `name` can run `artifact`, else why not (for skipping it with the reason)."""
    info, path = get_runtime(name), Path(artifact)
    if not path.exists():
        return f"{path} not found"
    if not info.artifacts:
        return None
    kind = CHECKPOINT_DIR if path.is_dir() else path.suffix
    if kind not in info.artifacts:
        takes = ", ".join("checkpoint folders" if a == CHECKPOINT_DIR else a for a in info.artifacts)
        return f"runtime {name!r} takes {takes}, not {path.name}"
    record = export_record(path) if kind in (".onnx", ".tflite") else None
    if name == "fakequant" and kind in (".onnx", ".tflite") and (record is None or not record.source):
        return (f"{path.name} has no export record ({record_path(path).name} naming its source checkpoint); "
                "give fakequant the checkpoint itself")
    if name == "tensorrt" and record is not None and record.exporter not in ("trt", ""):
        return (f"{path.name} was made by export.{record.exporter}, not TensorRT-bound; "
                "export with `python -m export.trt`")
    return None


def make_runner(name: str, artifact: str | Path, **options):
    """A new (inactive) runner of runtime `name` for `artifact`; `options` go to the runner's constructor.

    Raises:
        QadtrError: unknown runtime, runtime not available here, an artifact it can't run, or an option
            the runner doesn't take.

    Example:
        >>> with make_runner("litert-builtin", "w4.tflite", num_threads=1) as r: ...
    """
    info = get_runtime(name)
    reason = probe(name)
    if reason is not None:
        raise QadtrError(f"runtime {name!r} is not available here: {reason}")
    problem = accepts(name, artifact)
    if problem is not None:
        raise QadtrError(problem)
    try:
        cls = resolve(info.runner)
    except ImportError as e:
        raise QadtrError(f"runtime {name!r} cannot be loaded ({e}); {info.install}") from e
    fixed = sorted(set(options) & set(info.kwargs))
    if fixed:
        raise QadtrError(f"runtime {name!r} fixes {', '.join(f'{k}={info.kwargs[k]!r}' for k in fixed)}; "
                         "pick the runtime with the setting you want instead")
    params = [p for p in inspect.signature(cls).parameters if p not in info.kwargs][1:]  # [0] is the artifact
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise QadtrError(f"runtime {name!r} has no option {', '.join(unknown)}; it takes {', '.join(params) or 'none'}")
    return cls(artifact, **info.kwargs, **options)


# -- the uniform feed -----------------------------------------------------------------------------------
ENCODINGS = {"float01": "float32 = pixel / 255", "int8-minus-128": "int8 = pixel - 128"}


@dataclass(frozen=True)
class FeedFormat:
    """How uint8 (B, H, W, 3) images become one model input (see `feed_format`)."""

    name: str  # the model's input name
    layout: str  # "NCHW" | "NHWC"
    encoding: str  # a key of ENCODINGS
    shape: tuple[int | None, ...]  # the model's input shape, None = any

    def __str__(self) -> str:
        return f"{self.name}: {self.layout} {ENCODINGS[self.encoding]}"

    @property
    def batch(self) -> int | None:
        """The model's fixed batch size (e.g. 1 for MLPerf Tiny), None when any batch is accepted."""
        return self.shape[0]

    def feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
                and images.shape[3] == 3):
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise QadtrError(f"feed: expected uint8 (B, H, W, 3) images, got {got}")
        hw = self.shape[2:4] if self.layout == "NCHW" else self.shape[1:3]
        if any(d is not None and d != s for d, s in zip(hw, images.shape[1:3])):
            raise QadtrError(f"the model takes {hw[0]}x{hw[1]} images, the data is "
                             f"{images.shape[1]}x{images.shape[2]}; replay data of the model's dataset")
        if self.layout == "NCHW":
            images = images.transpose(0, 3, 1, 2)  # (B, 3, H, W)
        if self.encoding == "float01":
            x = images.astype(np.float32) / np.float32(255.0)  # the same division as qadtr.predict.to_tensor
        else:
            x = (images.astype(np.int16) - 128).astype(np.int8)
        return {self.name: np.ascontiguousarray(x)}


def feed_format(runner) -> FeedFormat:
    """Read an active runner's input spec: layout from where the 3 channels sit, encoding from the dtype."""
    spec = runner.input_spec()
    if len(spec) != 1:
        raise QadtrError(f"{runner.name}: the model has {len(spec)} inputs; replay needs a one-input classifier")
    (inp,) = spec
    shape = tuple(inp.shape)
    if len(shape) != 4 or (shape[1] == 3) == (shape[3] == 3):
        raise QadtrError(f"{runner.name}: cannot tell NCHW from NHWC in input {inp.name!r} {shape}; "
                         "the model must take (B, 3, H, W) or (B, H, W, 3) images")
    layout = "NCHW" if shape[1] == 3 else "NHWC"
    quant = runner.input_quantization()[inp.name] if hasattr(runner, "input_quantization") else (0.0, 0)
    if inp.dtype == np.float32:
        encoding = "float01"
    elif inp.dtype == np.int8 and quant == (1.0, -128):
        encoding = "int8-minus-128"
    else:
        raise QadtrError(f"{runner.name}: input {inp.name!r} is {inp.dtype} quantized as {quant}; replay feeds "
                         "float32 pixel / 255 or int8 pixel - 128 (scale 1.0, zero point -128)")
    return FeedFormat(inp.name, layout, encoding, shape)


def prepare_feed(runner, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 (B, H, W, 3) images -> the feed dict of an active runner. Per batch, prefer `feed_format` once."""
    return feed_format(runner).feed(images)


def read_logits(runner, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The first output as (B, K) float32; a quantized integer output is dequantized with its (scale, zero point)."""
    name, out = next(iter(outputs.items()))
    out = out.reshape(len(out), -1)  # (B, K)
    if np.issubdtype(out.dtype, np.integer):
        scale, zero = runner.output_quantization()[name] if hasattr(runner, "output_quantization") else (0.0, 0)
        if scale > 0:
            return ((out.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)
    return out.astype(np.float32, copy=False)
