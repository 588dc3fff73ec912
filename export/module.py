"""Export a model you built (an nn.Module, not a qadtr checkpoint) with the same exporters, proofs and records.

    from export.module import export_module
    r = export_module("tflite", net, "net.tflite", images=images)   # "onnx": a .onnx; "trt": a folder
    r.record.passed, r.record.source                                 # the module source the replay's reference loads

What is exported and proven is `net` itself, put in eval mode: a deploy-form Brevitas CNN (BatchNorm folded,
QuantConv2d / QuantLinear with Int32Bias, activation quantizers between; export/_tflite_lower.py lists the layers
TFLite takes, anything else is refused in one line before anything is written) mapping float32 pixels in [0, 1],
NCHW, to logits, its last layer a QuantLinear. `images` (uint8 (N, H, W, 3)) are what the proof runs on; they
fix the TFLite input size. The checkpoint CLIs (export.onnx, export.trt, export.tflite) load a checkpoint's
deploy net and call the same `export_*_net` functions: one export, proof and failure rule for both.

The weights go to a module source (qadtr._module_ref: `<out>.source/`, or `<out>/source/` for the trt folder,
unless `source=` names a folder) whose state-dict sha256 the record holds as `source_sha256` and whose class
name it holds as `arch`, so `python -m eval.on_device --model net.onnx --runtimes fakequant,onnxrt` replays the
artifact against this very module. The class must be importable there by its "module:Class" path (`target=`
names it; `kwargs=` are its constructor's keyword arguments, JSON values).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch.nn as nn

from export._common import ExportResult, Source
from export.registry import get_exporter, probe
from qadtr._errors import QadtrError

OPTIONS = {"onnx": ("opset",), "trt": ("batch", "opset"), "tflite": ("kernels", "headroom")}  # each one's own options


def export_module(name: str, model: nn.Module, out: str | Path, *, images: np.ndarray,
                  bits: tuple[int, int] | None = None, source: str | Path | None = None, target: str | None = None,
                  kwargs: dict | None = None, **options) -> ExportResult:
    """Export `model` with exporter `name` ("onnx", "trt" or "tflite") to `out`, proven on `images`.

    Args:
        bits: the (w, a) the records and tables label it with; None: the narrowest weight and activation widths.
        source: the module source folder (written after a passing proof; one holding other weights is refused).
        target, kwargs: how the replay rebuilds the class (default: the class's own "module:Class", no kwargs).
        options: the exporter's own (OPTIONS), e.g. opset=13, kernels=("xnnpack",), batch=(1, 8, 32).

    Raises:
        QadtrError: not a Brevitas CNN, bad images, an option the exporter lacks, a layer with no exact mapping
            (all before anything is written); ProofFailed as the checkpoint exporters.
    """
    from qadtr._module_ref import save_module, state_bytes, target_of

    if name not in OPTIONS:
        get_exporter(name)  # the registry's one-line refusal listing the exporters
        raise QadtrError(f"exporter {name!r} has no module entry; use one of {sorted(OPTIONS)}")
    missing, unknown = probe(name), sorted(set(options) - set(OPTIONS[name]))
    if missing or unknown:
        raise QadtrError(f"exporter {name!r}: {missing}" if missing else
                         f"exporter {name!r} has no option {', '.join(unknown)}; it takes {', '.join(OPTIONS[name])}")
    net, images = _check_model(model), _check_images(images)
    bits = tuple(bits) if bits is not None else infer_bits(net)
    target = target or target_of(net)
    data = state_bytes(net)
    out = Path(out)
    folder = Path(source) if source is not None else (out / "source" if name == "trt" else Path(f"{out}.source"))
    _check_source(folder, data)
    src = Source(str(folder), hashlib.sha256(data).hexdigest(), type(net).__name__, "")
    result = _run(name, net, out, src=src, bits=bits, images=images, options=options)
    save_module(net, folder, bits=bits, target=target, kwargs=kwargs, data=data)
    return result


def export_onnx_module(model: nn.Module, out: str | Path, *, images: np.ndarray, **kw) -> ExportResult:
    """export_module("onnx", ...): a QDQ .onnx for ONNX Runtime."""
    return export_module("onnx", model, out, images=images, **kw)


def export_trt_module(model: nn.Module, out: str | Path, *, images: np.ndarray, **kw) -> ExportResult:
    """export_module("trt", ...): a folder with the TensorRT-bound model.onnx and the engine build recipe."""
    return export_module("trt", model, out, images=images, **kw)


def export_tflite_module(model: nn.Module, out: str | Path, *, images: np.ndarray, **kw) -> ExportResult:
    """export_module("tflite", ...): a full-integer .tflite for LiteRT."""
    return export_module("tflite", model, out, images=images, **kw)


def _run(name: str, net, out: Path, *, src: Source, bits: tuple[int, int], images: np.ndarray,
         options: dict) -> ExportResult:
    """The exporter's `export_*_net` on `net` (the checkpoint entry points call the same ones)."""
    described = f"{len(images)} given images"
    if name == "tflite":
        from export.tflite import KERNEL_SETS, _check_request, export_tflite_net

        kernels = tuple(options.pop("kernels", KERNEL_SETS))
        out = _check_request(bits[0], bits[1], kernels, out=out)
        return export_tflite_net(net, out, source=src, bits=bits, images=images, image_source=described,
                                 kernels=kernels, **options)
    if name == "trt":
        from export.trt import export_trt_net

        return export_trt_net(net, out, source=src, bits=bits, images=images, image_source=described, **options)
    from export.onnx import export_onnx_net

    return export_onnx_net(net, out, source=src, bits=bits, images=images, image_source=described, **options)


def _check_model(model) -> nn.Module:
    """`model` in eval mode when it is a deploy-form Brevitas CNN ending in a QuantLinear; else a one-line refusal."""
    import brevitas.nn as qnn

    if not isinstance(model, nn.Module):
        raise QadtrError(f"model is a {type(model).__name__}; pass an nn.Module (a Brevitas CNN)")
    bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bn:
        raise QadtrError(f"{bn[0]}: {type(model.get_submodule(bn[0])).__name__} is not folded; fold BatchNorm into "
                         "the conv before it (the deploy form is what is exported and proven)")
    if not any(isinstance(m, qnn.QuantLinear) for m in model.modules()):
        raise QadtrError(f"{type(model).__name__} has no QuantLinear; the exporters take a Brevitas CNN whose "
                         "classifier is a QuantLinear (brevitas.nn)")
    return model.eval()


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(images) == 0:
        raise QadtrError(f"images must be uint8 (N, H, W, 3) with N > 0, got {images.dtype} {images.shape}")
    return images


def _check_source(folder: Path, data: bytes) -> None:
    """Refuse, before anything is exported, a source folder that holds another module's weights."""
    from qadtr._module_ref import is_module_source, read_module_source

    pt = folder / "model.pt"
    if pt.exists() and (not is_module_source(folder) or read_module_source(folder).sha256
                        != hashlib.sha256(data).hexdigest()):
        raise QadtrError(f"{folder} holds another model; pass another source= folder or delete it")


def infer_bits(net: nn.Module) -> tuple[int, int]:
    """(w, a): the narrowest weight bit width of the QuantConv2d / QuantLinear layers and activation bit width
    of the activation quantizers (the edge layers are usually wider)."""
    import brevitas.nn as qnn

    w = [int(m.quant_weight().bit_width) for m in net.modules() if isinstance(m, (qnn.QuantConv2d, qnn.QuantLinear))]
    a = [int(m.act_quant.bit_width()) for m in net.modules()
         if isinstance(m, (qnn.QuantReLU, qnn.QuantIdentity, qnn.QuantHardTanh)) and m.act_quant.is_quant_enabled]
    if not w or not a:
        raise QadtrError(f"{type(net).__name__}: no quantized weights or activations found; pass bits=(w, a)")
    return min(w), min(a)
