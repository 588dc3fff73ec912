"""Integer executor speed as a replay reference: images/s of each semantics vs Brevitas fake-quant, in one run.

    python -m bench.executor_speed --checkpoint zoo/resnet20_w4a4 --data-dir ../shared/data

Exports the checkpoint (ONNX QDQ, full-integer TFLite; each proves itself on 100 test images) into a temporary
folder and measures, at batch `--batch` on the same test images: the Brevitas fake-quant deploy net (torch,
no_grad), the numpy executor under every semantics (devices.intexec), and the real runtimes it models (ORT
ORT_ENABLE_ALL, LiteRT XNNPACK and reference kernels). Interleaved rounds (one pass of each per round, median
over rounds) so that load from other processes on this shared machine hits all alike. Prints each one's
images/s and its ratio to fake-quant; saves bench/results/executor_speed_<utc>.json with the host fingerprint.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _contenders(checkpoint: Path, bits: int, tmp: Path, images: np.ndarray) -> dict:
    """name -> (callable taking uint8 (B, H, W, 3) images, returns logits)."""
    import torch

    from devices.intexec import SEMANTICS, load_graph
    from devices.litert import LiteRTRunner
    from devices.onnxrt import OnnxrtRunner
    from export._common import deploy_model
    from export.onnx import export_onnx
    from export.tflite import export_tflite

    onnx_path = export_onnx(checkpoint, tmp / "m.onnx", bits=bits, images=images[:100]).path
    tfl_path = Path(export_tflite(checkpoint, tmp / "m.tflite", bits=bits, images=images[:100]).artifact)
    net, _ = deploy_model(checkpoint, bits)
    nchw = lambda x: np.ascontiguousarray((x.astype(np.float32) / np.float32(255)).transpose(0, 3, 1, 2))  # noqa: E731
    nhwc = lambda x: x.astype(np.float32) / np.float32(255)  # noqa: E731

    def fakequant(x):
        with torch.no_grad():
            return net(torch.from_numpy(nchw(x))).numpy()

    out = {"fakequant (Brevitas, torch)": fakequant}
    graphs = {".onnx": (load_graph(onnx_path), nchw), ".tflite": (load_graph(tfl_path), nhwc)}
    for name, sem in SEMANTICS.items():
        graph, feed = graphs[sem.artifact]
        out[f"intexec-{name}"] = lambda x, g=graph, f=feed, s=sem.graph_name: g.run(f(x), s)[0]
    runners = {"onnxrt ORT_ENABLE_ALL": (OnnxrtRunner(onnx_path), "input", nchw),
               "litert-xnnpack": (LiteRTRunner(tfl_path, kernels="xnnpack"), "pixels", nhwc),
               "litert-ref": (LiteRTRunner(tfl_path, kernels="ref"), "pixels", nhwc)}
    for name, (r, key, feed) in runners.items():
        r.activate()
        out[name] = lambda x, r=r, k=key, f=feed: r.infer({k: f(x)})
    return out


def run(args: argparse.Namespace) -> dict:
    import torch

    from devices._host import fingerprint
    from qadtr.checkpoint import read_checkpoint_info, resolve
    from qadtr.data import load_split, subset

    torch.set_num_threads(args.threads)
    pt = resolve(Path(args.checkpoint))[0]
    bits = args.bits or read_checkpoint_info(pt).model.bits[0][0]
    images = subset(load_split("cifar10", "test", args.data_dir), max(args.batch, 100)).images  # (N, 32, 32, 3)
    batch = images[:args.batch]
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="qadtr-bench-") as tmp:
        fns = _contenders(pt, bits, Path(tmp), images)
        for fn in fns.values():  # warm-up: allocations, XNNPACK packing, torch's first-call costs
            fn(batch)
        for r in range(args.rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(batch)
                times.setdefault(name, []).append(time.perf_counter() - t0)
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    ips = {k: args.batch / float(np.median(v)) for k, v in times.items()}
    ref = ips["fakequant (Brevitas, torch)"]
    return {"argv": sys.argv, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": fingerprint(), "checkpoint": str(pt), "bits": bits, "batch": args.batch, "rounds": args.rounds,
            "threads": args.threads, "images_per_s": ips, "ratio_to_fakequant": {k: v / ref for k, v in ips.items()},
            "seconds_per_batch": times}


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli
    from qadtr._config import write_json

    p = argparse.ArgumentParser(prog="python -m bench.executor_speed", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="zoo/resnet20_w4a4")
    p.add_argument("--bits", type=int, default=None, help="bit width of a switchable checkpoint (default: its first)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch threads (BLAS and the runtimes use their defaults)")
    args = p.parse_args(argv)

    def body() -> None:
        res = run(args)
        for k, v in sorted(res["images_per_s"].items(), key=lambda kv: -kv[1]):
            print(f"{k:34s} {v:9.0f} img/s  {res['ratio_to_fakequant'][k]:6.2f}x fake-quant")
        out = RESULTS / f"executor_speed_{Path(res['checkpoint']).parent.name}_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
        write_json(out, res)
        print(f"wrote {out}")

    return run_cli("bench.executor_speed", body)


if __name__ == "__main__":
    sys.exit(main())
