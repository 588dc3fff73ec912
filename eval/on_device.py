"""Replay patched images on a device's runtimes: `python -m eval.on_device --model w4.onnx --patches DIR`.

    python -m eval.on_device --device local                   # the main job (eval.pipeline): export, replay, report
    python -m eval.on_device --device local --model w4.onnx --model w4.tflite --patches DIR --data cifar10
    python -m eval.on_device --device local,jetson,boards --model w4.onnx --patches DIR  # a fleet, concurrently

Without --model it runs the whole pipeline (`eval.pipeline`): --checkpoint (default zoo/resnet20_w4a4)
exported to ONNX and TFLite, the patches (default: the committed transfer-matrix patches) replayed on
every runtime, and the comparison report written to --out (default runs/main/report/report.html).

Every --model artifact runs on each runtime of the device that takes its type and is available here
(or on --runtimes): a checkpoint (folder or model.pt, `@w4a4` picks one bit width of a switchable one,
default all) on `fakequant`; an .onnx on `onnxrt` (and `tensorrt` where there is a GPU); a .tflite on
`litert-xnnpack` and `litert-builtin`; an export also on `fakequant` of the checkpoint it came from
(its JSON names it), which is the reference `eval.compare` pairs it with. Runtimes that can't run
here are listed with the reason. Each run:
  1. reads the replay file made from --patches (`eval.replay`, built once and cached by its inputs),
  2. streams it through `device.replay(...)` in batches into the result store (`eval.store`): one
     transaction per batch, so an interrupted run resumes where it stopped when the same command is
     run again (nothing lost, nothing counted twice; --fresh measures it again from scratch),
  3. reports clean top-1 and each patch's ASR (n, Wilson 95% CI, definition), latency p50/p90/p99 after
     warm-up, throughput, and energy per inference when the device has a power meter (else null and why).
Writes the metrics JSON (--out) and prints a table. The loop only sees `Batch` objects, so a remote
board that streams them back plugs in unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devices.inventory import describe_devices, load_inventory
from eval.fleet import list_runs, replay_on_devices, table
from eval.pipeline import DEFAULT_SUBSET, run_pipeline
from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli
from qadtr._config import write_json
from qadtr._errors import QadtrError


def _pipeline(args: argparse.Namespace, runtimes: list[str] | None) -> None:
    """The whole pipeline (no --model): export, replay, report into the --out folder."""
    out = str(check_writable(args.out or "runs/main", "folder"))  # pipeline: --out is its folder
    res = run_pipeline(checkpoints=args.checkpoint, patches=args.patches, device=args.device,
                       out=out, data_dir=args.data_dir, runtimes=runtimes,
                       eval_subset=DEFAULT_SUBSET if args.eval_subset is None else args.eval_subset,
                       inventory=args.inventory, progress=True)
    print(table(res["on_device"]))
    print(f"report: {res['report']}")


def _replay(args: argparse.Namespace, runtimes: list[str] | None) -> None:
    """Replay the --model artifacts on the devices, every output path checked before the replays."""
    if args.checkpoint:
        raise QadtrError("--checkpoint is for the pipeline (no --model); with --model pass the artifacts themselves")
    if not args.patches:
        raise QadtrError("give --patches DIR with --model (or drop --model to run the whole pipeline)")
    check_writable(args.store, "file", "--store")  # an existing store is resumed; a folder is refused
    check_writable(args.replay_dir or Path(args.store).parent / "replays", "folder", "--replay-dir")
    out = check_writable(args.out or Path(args.store).parent / "on_device.json", "file")  # before the replays
    result = replay_on_devices(devices=args.device, models=args.model, patches=args.patches, data=args.data,
                               data_dir=args.data_dir,
                               eval_subset=2000 if args.eval_subset is None else args.eval_subset,
                               eval_seed=args.eval_seed, store_path=args.store, replay_dir=args.replay_dir,
                               runtimes=runtimes, batch_size=args.batch_size, warmup=args.warmup,
                               inventory=args.inventory, fresh=args.fresh, progress=True)
    write_json(out, result)
    print(table(result))
    print(f"wrote {out}; per-image outputs in {args.store}")


def _dispatch(args: argparse.Namespace) -> None:
    """What the parsed flags ask for: a listing, the pipeline (no --model), or a replay of the artifacts."""
    if args.list_devices:
        print(describe_devices(load_inventory(args.inventory)))
        return
    if args.list_runs:
        print(list_runs(args.store))
        return
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()] if args.runtimes else None
    if not args.model:
        _pipeline(args, runtimes)
        return
    _replay(args, runtimes)


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.on_device", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--list-devices", action="store_true",
                   help="show each device's runtimes and power meters, then exit")
    p.add_argument("--list-runs", action="store_true", help="list the runs in --store, then exit")
    p.add_argument("--device", default="local", help="device or group names from the inventory, comma-separated; "
                   "several devices replay concurrently, one thread each")
    p.add_argument("--inventory", default=None, help="device inventory TOML (default: $QADTR_DEVICES, "
                   "~/.config/qadtr/devices.toml, else the built-in one)")
    p.add_argument("--model", action="append", default=[], help="an artifact (.onnx, .tflite, checkpoint folder or "
                   "model.pt[@w4a4]); repeat for several")
    p.add_argument("--patches", default=None, help="folder of patch files (*.npz) from qadtr.attack")
    p.add_argument("--data", default="cifar10", help="dataset whose test split the patches are replayed on")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--eval-subset", type=int, default=None, help="test images for universal patches (0 = all; "
                   "default 2000, pipeline 200)")
    p.add_argument("--eval-seed", type=int, default=1, help="seed of the evaluation placements")
    p.add_argument("--runtimes", default=None, help="comma-separated runtimes (default: every one of the device that "
                   "takes the artifact and runs here)")
    p.add_argument("--store", default="results/results.sqlite", help="SQLite result store (created if absent)")
    p.add_argument("--replay-dir", default=None, help="where replay files are cached (default: STORE's folder/replays)")
    p.add_argument("--out", default=None, help="metrics JSON (default: STORE's folder/on_device.json); pipeline: its "
                   "folder (default runs/main)")
    p.add_argument("--checkpoint", nargs="+", default=None, help="pipeline: checkpoints to export and replay "
                   "(default zoo/resnet20_w4a4); CKPT@2,4 picks bit widths of a switchable one")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--warmup", type=int, default=3, help="untimed inference calls before each session's batches")
    p.add_argument("--fresh", action="store_true", help="measure runs already in the store again from scratch")
    args = p.parse_args(argv)

    return run_cli("eval.on_device", lambda: _dispatch(args), argv)


if __name__ == "__main__":
    sys.exit(main())
