"""Replay speed: images per second through the whole replay path, per runtime, as a ratio to fake-quant.

    python -m bench.replay_speed --checkpoint zoo/resnet20_w8a8 --patches patches/ --data-dir ../shared/data

What one measurement covers (the path `eval.on_device` takes): `load_replay` (read the file, check its
sha256), `device.replay` on the local device (runner start-up, warm-up calls, feed preparation,
inference) and every batch written to a fresh SQLite result store. Each runtime is measured in
`--rounds` interleaved rounds (fakequant, onnxrt, litert-xnnpack, litert-builtin, fakequant, ...),
so machine noise hits all of them alike; each figure is the median over rounds, and the ratio is to
the fakequant median of the same run. The runtime's own inference throughput (summed batch times) is
reported beside it, so the replay and store overhead can be read off.

The .onnx and .tflite are exported from the checkpoint at --bits (or given with --onnx / --tflite).
Prints a table and saves bench/results/replay_speed_<utc time>.json. Times on a shared machine are
noisy: compare ratios measured in one run, not absolute numbers across runs.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNTIMES = ("fakequant", "onnxrt", "litert-xnnpack", "litert-builtin")


@dataclass(frozen=True)
class ReplaySpeedConfig:
    """One measurement: the flags of the same names (main fills it; their help texts say what each means)."""

    checkpoint: str
    bits: int  # w = a
    patches: str
    data: str
    data_dir: str | None
    images: int  # eval subset: clean images per patch block
    onnx: str | None  # an existing export (None: export one)
    tflite: str | None
    batch_size: int
    warmup: int
    rounds: int

    def __post_init__(self):
        from qadtr._errors import QadtrError

        if self.rounds < 1 or self.images < 1:
            raise QadtrError(f"--rounds {self.rounds} / --images {self.images}: use positive numbers")


def _artifacts(cfg: ReplaySpeedConfig, tmp: Path) -> dict[str, Path]:
    """runtime -> artifact: the checkpoint for fakequant, exports (made here unless given) for the others."""
    from devices.runtimes import probe

    out = {"fakequant": Path(cfg.checkpoint)}
    if probe("onnxrt") is None:
        if cfg.onnx:
            out["onnxrt"] = Path(cfg.onnx)
        else:
            from export.onnx import export_onnx

            out["onnxrt"] = export_onnx(cfg.checkpoint, tmp / "model.onnx", bits=cfg.bits, data_dir=cfg.data_dir,
                                        limit=200).path
    if probe("litert-xnnpack") is None:
        if cfg.tflite:
            path = Path(cfg.tflite)
        else:
            from export.tflite import export_tflite

            path = tmp / "model.tflite"
            export_tflite(cfg.checkpoint, path, bits=cfg.bits, data_dir=cfg.data_dir, limit=200)
        out["litert-xnnpack"] = out["litert-builtin"] = path
    return out


def measure(device, job, replay_path: Path, *, store_path: Path, batch_size: int, warmup: int) -> dict:
    """One pass of the whole path into a fresh store: wall images/s and the runtime's own images/s."""
    from eval.fleet import replay_run
    from eval.replay import load_replay
    from eval.store import Store

    store_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    replay = load_replay(replay_path)
    with Store(store_path) as store:
        out = replay_run(store, device, job, replay=replay, batch_size=batch_size, warmup=warmup, device_info={})
        wall = time.perf_counter() - t0
        inference = sum(b.seconds for b in store.batches(out.run.run_id))
    return {"images": len(replay), "wall_s": wall, "img_per_s": len(replay) / wall,
            "inference_img_per_s": len(replay) / inference, "kernels": out.run.kernels}


def run(cfg: ReplaySpeedConfig) -> dict:
    from devices.inventory import load_inventory, open_device
    from eval.fleet import jobs_for
    from eval.replay import make_replay
    from qadtr._scratch import scratch

    with scratch("bench") as tmp_dir:
        tmp = Path(tmp_dir)
        device = open_device(load_inventory()["local"])
        available = set(device.runtimes())
        wanted = [r for r in RUNTIMES if r in available]
        artifacts = _artifacts(cfg, tmp)
        jobs = {}
        for name in wanted:
            if name in artifacts:
                bits = (cfg.bits, cfg.bits) if name == "fakequant" else None
                jobs[name] = jobs_for(name, artifacts[name], bits, data=cfg.data)[0]
        replay_path = make_replay(cfg.patches, cfg.data, cfg.data_dir, eval_subset=cfg.images,
                                  eval_seed=1, out=tmp / "replays")
        rounds = {name: [] for name in jobs}
        for _ in range(cfg.rounds):
            for name, job in jobs.items():
                rounds[name].append(measure(device, job, replay_path, store_path=tmp / f"{name}.sqlite",
                                            batch_size=cfg.batch_size, warmup=cfg.warmup))
                print(f"{name:15s} {rounds[name][-1]['img_per_s']:9.0f} img/s", flush=True)
    med = {k: statistics.median(r["img_per_s"] for r in v) for k, v in rounds.items()}
    inf = {k: statistics.median(r["inference_img_per_s"] for r in v) for k, v in rounds.items()}
    ref = med.get("fakequant")
    return {
        "what": "images/s through load_replay -> device.replay (local) -> SQLite store, per runtime; median of rounds",
        "checkpoint": str(cfg.checkpoint), "bits": cfg.bits, "data": cfg.data,
        "images": rounds[next(iter(rounds))][0]["images"], "batch_size": cfg.batch_size, "warmup": cfg.warmup,
        "rounds": cfg.rounds, "img_per_s": med, "inference_img_per_s": inf,
        "ratio_to_fakequant": {k: v / ref for k, v in med.items()} if ref else None,
        "kernels": {k: v[0]["kernels"] for k, v in rounds.items()}, "all_rounds": rounds,
        "device": device.describe(), "argv": sys.argv,
        "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import check_writable, run_cli
    from qadtr._config import write_json

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m bench.replay_speed", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="zoo/resnet20_w8a8", help="model.pt or its folder")
    p.add_argument("--bits", type=int, default=8, help="bit width (w = a) to export and replay")
    p.add_argument("--patches", required=True, help="folder of patch files (qadtr.attack)")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=2000, help="eval subset: clean images per patch block")
    p.add_argument("--onnx", default=None, help="an existing .onnx export of the checkpoint (default: export one)")
    p.add_argument("--tflite", default=None, help="an existing .tflite export (default: export one)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    args = p.parse_args(argv)

    def body() -> None:
        check_writable(args.out, "folder")  # before the timed runs: a bad --out lost them
        res = run(ReplaySpeedConfig(**{k: v for k, v in vars(args).items() if k != "out"}))
        path = Path(args.out) / f"replay_speed_{res['utc'].replace(':', '').replace('-', '')}.json"
        write_json(path, res)
        print(f"{'runtime':15s} {'path img/s':>10s} {'vs fakequant':>13s} {'inference img/s':>16s}")
        for name, v in res["img_per_s"].items():
            ratio = f"{res['ratio_to_fakequant'][name]:.2f}x" if res["ratio_to_fakequant"] else "n/a"
            print(f"{name:15s} {v:10.0f} {ratio:>13s} {res['inference_img_per_s'][name]:16.0f}")
        print(f"{res['images']} replay rows, batch {args.batch_size}, median of {args.rounds} round(s); wrote {path}")

    return run_cli("bench.replay_speed", body, argv)


if __name__ == "__main__":
    sys.exit(main())
