"""How the device builds the INT8 TensorRT engine from export.trt's file: the profile, trtexec flags, a Python
builder snippet and build_engine.sh (export.trt writes them beside the artifact)."""

from __future__ import annotations

INT4_NOTE = ("TensorRT has no INT4/INT2 convolution kernels (INT4 is weight-only, for GEMM/MatMul): a "
             "sub-8-bit network runs on int8 kernels carrying the same clamped 4-/2-bit integers, which is "
             "exact but no faster than 8 bit. Weight-only INT4 for the final GEMM is not done.")

# -- build specification -----------------------------------------------------------------------------------
def build_spec(onnx_name: str, chw: tuple[int, int, int], batch: tuple[int, int, int]) -> dict:
    """How the device builds its INT8 engine: profile, trtexec flags and the equivalent Python."""
    c, h, w = chw
    shapes = {k: f"input:{b}x{c}x{h}x{w}" for k, b in zip(("min", "opt", "max"), batch)}
    trtexec = ["trtexec", f"--onnx={onnx_name}", "--int8",  # explicit Q/DQ decides every int8 layer
               f"--minShapes={shapes['min']}", f"--optShapes={shapes['opt']}", f"--maxShapes={shapes['max']}",
               "--saveEngine=model.engine", "--skipInference"]
    python = f"""import tensorrt as trt
logger = trt.Logger(trt.Logger.INFO)
builder = trt.Builder(logger)
network = builder.create_network(0)  # explicit batch (TensorRT >= 10; on 8.x pass 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
parser = trt.OnnxParser(network, logger)
if not parser.parse_from_file("{onnx_name}"):
    raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
config = builder.create_builder_config()
config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ nodes fix every scale: no calibrator
profile = builder.create_optimization_profile()
profile.set_shape("input", ({batch[0]}, {c}, {h}, {w}), ({batch[1]}, {c}, {h}, {w}), ({batch[2]}, {c}, {h}, {w}))
config.add_optimization_profile(profile)
engine = builder.build_serialized_network(network, config)
if engine is None:
    raise RuntimeError("TensorRT returned no engine; see the log above")
open("model.engine", "wb").write(engine)
"""
    return {"onnx": onnx_name, "input": "input", "output": "logits", "dtype": "float32 pixels in [0, 1], NCHW",
            "profile": {"min": [batch[0], c, h, w], "opt": [batch[1], c, h, w], "max": [batch[2], c, h, w]},
            "precision": "INT8 from explicit Q/DQ (no calibration); normalisation and logits stay fp32; do not add "
                         "--fp16 (fp16 normalisation can move the quantized input by a step)",
            "trtexec": " ".join(trtexec), "python": python, "bits_note": INT4_NOTE,
            "portability": "build on the target device with its own TensorRT (engines are not portable)"}


BUILD_SH = """#!/bin/sh
# Build the INT8 TensorRT engine on the target device (engines are not portable across devices or versions).
set -e
cd "$(dirname "$0")"
{trtexec}
echo "wrote $(pwd)/model.engine"
"""
