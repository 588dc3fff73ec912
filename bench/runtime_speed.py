"""Runtime speed: integer runtimes vs fp32 and vs the fake-quant model, as ratios measured in one run.

    python -m bench.runtime_speed --checkpoint zoo/resnet20_w8a8 --float zoo/resnet20_float --data-dir ../shared/data

Exports the quantized checkpoint (ONNX QDQ and full-integer TFLite) and the float one (fp32 ONNX) into a
temporary folder (each export proves itself on `--proof-images` test images), then measures, with the
same thread count everywhere:
    latency, batch 1       ORT int8 vs ORT fp32 (median of `--latency-runs` single-image calls)
    throughput, batch 64   ORT int8 vs ORT fp32
    replay throughput      images/s of ORT int8, LiteRT int8 (XNNPACK and builtin kernels) and ORT fp32,
                           each as a ratio to the Brevitas fake-quant (deploy) model, batch 64
    file size              each artifact vs the fp32 ONNX
Runtimes are measured in interleaved rounds (one pass each per round, median over rounds) so that a
burst of load from another process on this shared machine hits all of them alike. Prints the table
and saves bench/results/runtime_speed_<utc>.json.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class RuntimeSpeedConfig:
    """One measurement: the flags of the same names (main fills it; their help texts say what each means)."""

    checkpoint: str  # quantized
    bits: int
    float: str  # the float checkpoint (the fp32 baseline)
    data_dir: str | None
    images: int  # test images per replay pass
    proof_images: int
    rounds: int
    latency_runs: int
    threads: int  # for every runtime


def _export_all(cfg: RuntimeSpeedConfig, tmp: Path, images: np.ndarray) -> dict[str, Path]:
    from export.onnx import export_onnx
    from export.tflite import export_tflite

    proof = images[:cfg.proof_images]
    return {
        "onnx_int8": export_onnx(cfg.checkpoint, tmp / "int8.onnx", bits=cfg.bits, images=proof).path,
        "onnx_fp32": export_onnx(cfg.float, tmp / "fp32.onnx", bits=None, images=proof, float_model=True).path,
        "tflite_int8": export_tflite(cfg.checkpoint, tmp / "int8.tflite", bits=cfg.bits, images=proof).path,
    }


def _runners(paths: dict[str, Path], threads: int):
    """name -> runner (each fed by `devices.runtimes.feed_format`, the bytes every replay uses)."""
    from devices.litert import LiteRTRunner
    from devices.onnxrt import OnnxrtRunner

    return {
        "ort-int8": OnnxrtRunner(paths["onnx_int8"], intra_op_threads=threads),
        "ort-fp32": OnnxrtRunner(paths["onnx_fp32"], intra_op_threads=threads),
        "litert-xnnpack-int8": LiteRTRunner(paths["tflite_int8"], kernels="xnnpack", num_threads=threads),
        "litert-builtin-int8": LiteRTRunner(paths["tflite_int8"], kernels="builtin", num_threads=threads),
    }


def run(cfg: RuntimeSpeedConfig) -> dict:
    import torch

    from devices.runtimes import feed_format
    from export._common import deploy_model
    from qadtr._scratch import scratch
    from qadtr.data import load_split, subset
    from qadtr.predict import to_tensor

    torch.set_num_threads(cfg.threads)
    images = subset(load_split("cifar10", "test", cfg.data_dir), cfg.images).images  # (N, H, W, 3) uint8
    batches = [images[i:i + 64] for i in range(0, len(images), 64)]
    net, _ = deploy_model(cfg.checkpoint, cfg.bits)
    with scratch("bench") as tmp:
        paths = _export_all(cfg, Path(tmp), images)
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        runners = _runners(paths, cfg.threads)
        for r in runners.values():
            r.activate()
        try:
            def fake_quant(x):
                with torch.no_grad():
                    return net(to_tensor(x))

            passes = {name: (lambda b, r=r, f=feed_format(r).feed: r.infer(f(b))) for name, r in runners.items()}
            passes["fakequant"] = fake_quant
            for fn in passes.values():  # warm-up: sessions allocate and pack weights on first use
                fn(batches[0])
            rounds: dict[str, list[float]] = {k: [] for k in passes}
            for _ in range(cfg.rounds):
                for name, fn in passes.items():
                    t0 = time.perf_counter()
                    for b in batches:
                        fn(b)
                    rounds[name].append(len(images) / (time.perf_counter() - t0))
            one = images[:1]
            latency: dict[str, list[float]] = {"ort-int8": [], "ort-fp32": []}
            for _ in range(cfg.latency_runs):
                for name in latency:
                    t0 = time.perf_counter()
                    passes[name](one)
                    latency[name].append(time.perf_counter() - t0)
        finally:
            for r in runners.values():
                r.deactivate()
    ips = {k: float(np.median(v)) for k, v in rounds.items()}
    lat = {k: float(np.median(v)) for k, v in latency.items()}
    return {
        "checkpoint": str(cfg.checkpoint), "float": str(cfg.float), "bits": cfg.bits, "threads": cfg.threads,
        "images": len(images), "rounds": cfg.rounds, "batch": 64,
        "latency_b1_ms": {k: 1e3 * v for k, v in lat.items()},
        "ratio_ort_int8_vs_fp32_latency_b1": lat["ort-int8"] / lat["ort-fp32"],
        "throughput_img_per_s": ips,
        "ratio_ort_int8_vs_fp32_throughput_b64": ips["ort-int8"] / ips["ort-fp32"],
        "replay_vs_fakequant": {k: v / ips["fakequant"] for k, v in ips.items() if k != "fakequant"},
        "bytes": sizes, "size_vs_fp32_onnx": {k: v / sizes["onnx_fp32"] for k, v in sizes.items()},
        "argv": sys.argv, "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def describe(res: dict) -> str:
    lines = [f"{res['checkpoint']} w{res['bits']}a{res['bits']}, {res['threads']} thread(s), {res['images']} images, "
             f"median of {res['rounds']} interleaved rounds",
             f"batch-1 latency: ORT int8 {res['latency_b1_ms']['ort-int8']:.2f} ms, ORT fp32 "
             f"{res['latency_b1_ms']['ort-fp32']:.2f} ms -> int8/fp32 = {res['ratio_ort_int8_vs_fp32_latency_b1']:.2f}x",
             f"batch-64 throughput: int8/fp32 = {res['ratio_ort_int8_vs_fp32_throughput_b64']:.2f}x"]
    for k, v in res["throughput_img_per_s"].items():
        ratio = res["replay_vs_fakequant"].get(k)
        lines.append(f"  {k:22s} {v:8.0f} img/s" + ("" if ratio is None else f"   {ratio:5.2f}x fake-quant"))
    for k, v in res["bytes"].items():
        lines.append(f"  {k:12s} {v / 1024:8.1f} KiB  {res['size_vs_fp32_onnx'][k]:.3f}x fp32 ONNX")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli
    from qadtr._config import write_json

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m bench.runtime_speed", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="zoo/resnet20_w8a8", help="quantized checkpoint")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--float", default="zoo/resnet20_float", help="float checkpoint (the fp32 baseline)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--images", type=int, default=1024, help="test images per replay pass")
    p.add_argument("--proof-images", type=int, default=64, help="images each export proves itself on")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="threads for every runtime (1: fair on a shared machine)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    def body() -> None:
        check_writable(args.out, "folder")  # before the timed runs: a bad --out lost them
        res = run(RuntimeSpeedConfig(**{k: v for k, v in vars(args).items() if k != "out"}))
        print(describe(res))
        path = Path(args.out) / f"runtime_speed_{res['utc'].replace(':', '').replace('-', '')}.json"
        write_json(path, res)
        print(f"saved {path}")

    return run_cli("bench.runtime_speed", body, argv)


if __name__ == "__main__":
    sys.exit(main())
