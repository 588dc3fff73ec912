"""Top-1 accuracy of a deployed artifact through its runtime's runner (n and Wilson 95% CI).

    python -m eval.accuracy model.tflite --data cifar10 --data-dir ../shared/data --kernels builtin
    python -m eval.accuracy ../shared/models/mlperf-tiny-ic/pretrainedResnet_quant.tflite \\
        --data cifar10 --data-dir ../shared/data          # int8 input = pixel - 128, detected

Input formats (how uint8 HWC images become the model's input bytes; the runner feeds them as is):
    float01        float32 (B, H, W, 3) pixel / 255: `export.tflite` artifacts (normalisation inside)
    int8-minus-128 int8 (B, H, W, 3) pixel - 128: MLPerf Tiny's int8 models (scale 1.0, zero point -128)
    auto           float32 input -> float01; int8 input with scale 1.0, zero point -128 -> int8-minus-128
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError
from qadtr._stats import Proportion
from qadtr.progress import progress as progress_bar

INPUT_FORMATS = ("auto", "float01", "int8-minus-128")


def _to_input(images: np.ndarray, fmt: str) -> np.ndarray:
    """uint8 (B, H, W, 3) -> the model's input array."""
    if fmt == "float01":
        return images.astype(np.float32) / np.float32(255.0)  # same bytes as qadtr.predict.to_tensor
    return (images.astype(np.int16) - 128).astype(np.int8)  # int8-minus-128


def resolve_format(fmt: str, dtype: np.dtype, quant: tuple[float, int]) -> str:
    """The concrete input format for a model input of `dtype` with (scale, zero point) `quant`."""
    if fmt not in INPUT_FORMATS:
        raise QadtrError(f"unknown input format {fmt!r}; choose one of {list(INPUT_FORMATS)}")
    if fmt == "auto":
        if dtype == np.float32:
            return "float01"
        if dtype == np.int8 and quant == (1.0, -128):
            return "int8-minus-128"
        raise QadtrError(f"cannot infer the input format of a {dtype} input quantized as {quant}; "
                         f"pass --input-format (one of {list(INPUT_FORMATS[1:])})")
    want = np.float32 if fmt == "float01" else np.int8
    if dtype != want:
        raise QadtrError(f"--input-format {fmt} makes {np.dtype(want)} inputs but the model takes {dtype}; "
                         "use --input-format auto")
    return fmt


def make_runner(path: str | Path, kernels: str):
    """The runner for an artifact, chosen by its suffix (through the runtime registry, devices.runtimes)."""
    from devices.runtimes import make_runner as registry_runner

    path = Path(path)
    if not path.is_file():
        raise QadtrError(f"{path} not found")
    runtimes = {".tflite": f"litert-{kernels}", ".onnx": "onnxrt"}
    if path.suffix not in runtimes:
        raise QadtrError(f"{path.name}: unknown artifact type {path.suffix!r}; expected .tflite or .onnx")
    return registry_runner(runtimes[path.suffix], path)


def accuracy(runner, images: np.ndarray, labels: np.ndarray, *, input_format: str = "auto",
             batch_size: int = 100, progress: bool = False) -> tuple[Proportion, str]:
    """Top-1 accuracy of an active runner on uint8 (N, H, W, 3) images; also returns the format used.

    The first output is taken as the scores (logits or probabilities, float or quantized: argmax is
    invariant to a positive scale and a zero point).
    """
    spec = runner.input_spec()
    if len(spec) != 1:
        raise QadtrError(f"{runner.name}: the model has {len(spec)} inputs; accuracy needs a one-input classifier")
    (inp,) = spec
    quant = runner.input_quantization()[inp.name] if hasattr(runner, "input_quantization") else (0.0, 0)
    fmt = resolve_format(input_format, inp.dtype, quant)
    if tuple(inp.shape[1:]) != tuple(images.shape[1:]):
        raise QadtrError(f"{runner.name}: the model takes {inp.shape[1:]} per image, the data is {images.shape[1:]}")
    step = batch_size if inp.shape[0] is None else inp.shape[0]  # a fixed batch (MLPerf: 1) is kept
    correct = 0
    for i in progress_bar(range(0, len(images), step), enabled=progress, desc=runner.name, unit="batch"):
        chunk = images[i:i + step]  # (B, H, W, 3)
        real = len(chunk)
        if real < step and inp.shape[0] is not None:  # fixed batch: pad with copies, score the real ones
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - real, axis=0)])
        scores = next(iter(runner.infer({inp.name: _to_input(chunk, fmt)}).values()))  # (B, classes)
        correct += int((scores.reshape(len(scores), -1)[:real].argmax(1) == labels[i:i + real]).sum())
    n = len(images)
    return Proportion(correct, n), fmt


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.accuracy", description=__doc__.split("\n")[0])
    p.add_argument("artifact", help="a .tflite (or .onnx, through devices.onnxrt)")
    p.add_argument("--data", default="cifar10", help="dataset name (qadtr.data)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--kernels", default="xnnpack", choices=("xnnpack", "builtin"), help="LiteRT kernel set")
    p.add_argument("--input-format", default="auto", choices=INPUT_FORMATS)
    p.add_argument("--limit", type=int, default=0, help="a fixed pseudo-random subset of N images (0 = all)")
    p.add_argument("--batch-size", type=int, default=100, help="for models with a dynamic batch")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr.data import load_split, subset

        if args.json:
            check_writable(args.json, "file", "--json")  # before the pass over the test set, not after it
        if args.batch_size < 1:
            raise QadtrError(f"--batch-size {args.batch_size}; pass a positive number")
        runner = make_runner(args.artifact, args.kernels)
        split = subset(load_split(args.data, args.split, args.data_dir), args.limit)
        with runner:
            acc, fmt = accuracy(runner, split.images, split.labels, input_format=args.input_format,
                                batch_size=args.batch_size, progress=True)
        line = f"{Path(args.artifact).name} [{runner.name}, input {fmt}] {args.data}/{args.split} top-1 {acc}"
        print(line)
        if args.json:
            from qadtr._config import write_json

            write_json(args.json, {"artifact": str(args.artifact), "runner": runner.name, "kernels": args.kernels,
                                   "input_format": fmt, "data": args.data, "split": args.split,
                                   "limit": args.limit, "top1": acc.to_dict()})

    return run_cli("eval.accuracy", body, argv)


if __name__ == "__main__":
    sys.exit(main())
