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

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _contenders(checkpoint: Path, bits: int, tmp: Path, *, images: np.ndarray) -> dict:
    """name -> active runner, every one made by devices.runtimes.make_runner and fed by feed_format."""
    from devices.intexec import SEMANTICS
    from devices.runtimes import make_runner
    from export.onnx import export_onnx
    from export.tflite import export_tflite

    files = {".onnx": export_onnx(checkpoint, tmp / "m.onnx", bits=bits, images=images[:100]).path,
             ".tflite": export_tflite(checkpoint, tmp / "m.tflite", bits=bits, images=images[:100]).path}
    runners = {"fakequant (Brevitas, torch)": make_runner("fakequant", checkpoint, bits=(bits, bits)),
               "onnxrt ORT_ENABLE_ALL": make_runner("onnxrt", files[".onnx"]),
               "litert-xnnpack": make_runner("litert-xnnpack", files[".tflite"]),
               "litert-ref": make_runner("litert-ref", files[".tflite"])}
    runners.update({f"intexec-{name}": make_runner(f"intexec-{name}", files[sem.artifact])
                    for name, sem in SEMANTICS.items() if sem.deployed})  # float-mlas: a reference, not a replay path
    return {name: r.activate() for name, r in runners.items()}


def run(*, checkpoint: str, bits: int | None, data_dir: str | None, batch: int, rounds: int, threads: int) -> dict:
    """Images/s of every contender at `batch` (median of `rounds` interleaved rounds); bits None: the first."""
    import torch

    from devices._host import fingerprint
    from devices.runtimes import feed_format
    from qadtr._scratch import scratch
    from qadtr.checkpoint import read_checkpoint_info, resolve
    from qadtr.data import load_split, subset

    torch.set_num_threads(threads)
    pt = resolve(Path(checkpoint))[0]
    bits = bits or read_checkpoint_info(pt).model.bits[0][0]
    images = subset(load_split("cifar10", "test", data_dir), max(batch, 100)).images  # (N, 32, 32, 3)
    first = images[:batch]
    times: dict[str, list[float]] = {}
    with scratch("bench") as tmp:
        runners = _contenders(pt, bits, Path(tmp), images=images)
        feeds = {name: feed_format(r).feed(first) for name, r in runners.items()}  # the bytes every replay uses
        for name, r in runners.items():  # warm-up: allocations, XNNPACK packing, torch's first-call costs
            r.infer(feeds[name])
        for k in range(rounds):
            for name, r in runners.items():
                t0 = time.perf_counter()  # the whole call, feed checks included, alike for every runner
                r.infer(feeds[name])
                times.setdefault(name, []).append(time.perf_counter() - t0)
            print(f"round {k + 1}/{rounds}", file=sys.stderr, flush=True)
        for r in runners.values():
            r.deactivate()
    ips = {k: batch / float(np.median(v)) for k, v in times.items()}
    ref = ips["fakequant (Brevitas, torch)"]
    return {"argv": sys.argv, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": fingerprint(), "checkpoint": str(pt), "bits": bits, "batch": batch, "rounds": rounds,
            "threads": threads, "images_per_s": ips, "ratio_to_fakequant": {k: v / ref for k, v in ips.items()},
            "seconds_per_batch": times}


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser, check_writable, run_cli  # ArgumentParser: one line, exit 1 on a bad flag
    from qadtr._config import write_json

    p = ArgumentParser(prog="python -m bench.executor_speed", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="zoo/resnet20_w4a4")
    p.add_argument("--out", default=str(RESULTS),
                   help="folder for executor_speed_<name>_<utc>.json (default bench/results)")
    p.add_argument("--bits", type=int, default=None, help="bit width of a switchable checkpoint (default: its first)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch threads (BLAS and the runtimes use their defaults)")
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr._errors import QadtrError

        if min(args.batch, args.rounds, args.threads) < 1:
            raise QadtrError(f"--batch {args.batch} / --rounds {args.rounds} / --threads {args.threads}: each 1 or more")
        check_writable(args.out, "folder")  # before the exports and timing, not after
        res = run(checkpoint=args.checkpoint, bits=args.bits, data_dir=args.data_dir, batch=args.batch,
                  rounds=args.rounds, threads=args.threads)
        for k, v in sorted(res["images_per_s"].items(), key=lambda kv: -kv[1]):
            print(f"{k:34s} {v:9.0f} img/s  {res['ratio_to_fakequant'][k]:6.2f}x fake-quant")
        out = Path(args.out) / f"executor_speed_{Path(res['checkpoint']).parent.name}_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
        write_json(out, res)
        print(f"wrote {out}")

    return run_cli("bench.executor_speed", body, argv)


if __name__ == "__main__":
    sys.exit(main())
