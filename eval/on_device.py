"""Replay patched images on a device's runtimes: `python -m eval.on_device --model w4.onnx --patches DIR`.

    python -m eval.on_device --device local                   # the main job (eval.pipeline): export, replay, report
    python -m eval.on_device --device local --model w4.onnx --model w4.tflite --patches DIR --data cifar10
    python -m eval.on_device --device local,jetson,boards --model w4.onnx --patches DIR  # a fleet, concurrently
    python -m eval.on_device --device local,rpi4-emu --scenario gtsrb-stop   # a scenario (eval.scenario)

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

from devices.inventory import describe_devices, load_inventory, select_devices
from eval.fleet import list_runs as store_runs, replay_on_devices, table
from eval.pipeline import DEFAULT_SUBSET, run_pipeline
from eval.scenario import run_scenario
from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli
from qadtr._config import write_json
from qadtr._errors import QadtrError

# test images per universal patch when --eval-subset is not given: on this host every runtime replays the whole
# test set (ORT and XNNPACK ~3,000 images/s here, fake-quant ~300: 12 patches x 10,000 images is minutes); a board
# over SSH or an emulated one replays tens of images per second, so there a seeded subset
ALL_IMAGES, BOARD_SUBSET = 0, 2000


def default_subset(devices: str, inventory: str | None) -> int:
    """0 (the whole test set) when every selected device is this host, else BOARD_SUBSET."""
    specs = select_devices(load_inventory(inventory), devices)
    return ALL_IMAGES if all(s.kind == "local" for s in specs) else BOARD_SUBSET


def _pipeline(*, checkpoint: list[str] | None, patches: str | None, device: str, out: str | None,
              data_dir: str | None, runtimes: list[str] | None, eval_subset: int | None,
              inventory: str | None) -> None:
    """The whole pipeline (no --model): export, replay, report into the --out folder."""
    out = str(check_writable(out or "runs/main", "folder"))  # pipeline: --out is its folder
    res = run_pipeline(checkpoints=checkpoint, patches=patches, device=device,
                       out=out, data_dir=data_dir, runtimes=runtimes,
                       eval_subset=DEFAULT_SUBSET if eval_subset is None else eval_subset,
                       inventory=inventory, progress=True)
    print(table(res["on_device"]))
    print(f"report: {res['report']}")


def _replay(*, model: list[str], patches: str | None, device: str, data: str, data_dir: str | None,
            eval_subset: int | None, eval_seed: int, store: str, replay_dir: str | None, out: str | None,
            runtimes: list[str] | None, batch_size: int, warmup: int, inventory: str | None, fresh: bool) -> None:
    """Replay the --model artifacts on the devices, every output path checked before the replays."""
    if not patches:
        raise QadtrError("give --patches DIR with --model (or drop --model to run the whole pipeline)")
    check_writable(store, "file", "--store")  # an existing store is resumed; a folder is refused
    check_writable(replay_dir or Path(store).parent / "replays", "folder", "--replay-dir")
    out = check_writable(out or Path(store).parent / "on_device.json", "file")  # before the replays
    result = replay_on_devices(devices=device, models=model, patches=patches, data=data,
                               data_dir=data_dir,
                               eval_subset=default_subset(device, inventory) if eval_subset is None else eval_subset,
                               eval_seed=eval_seed, store_path=store, replay_dir=replay_dir,
                               runtimes=runtimes, batch_size=batch_size, warmup=warmup,
                               inventory=inventory, fresh=fresh, progress=True)
    write_json(out, result)
    print(table(result))
    print(f"wrote {out}; per-image outputs in {store}")


def _scenario(name: str, *, device: str, out: str | None, data_dir: str | None, runtimes: list[str] | None,
              inventory: str | None, remake: bool) -> None:
    """A scenario from its committed model and stickers into --out (default runs/NAME)."""
    res = run_scenario(name, device=device, out=check_writable(out or f"runs/{name}", "folder"), data_dir=data_dir,
                       runtimes=runtimes, inventory=inventory, remake=remake, progress=True)
    for r in res["runs"]:
        rates = ", ".join(f"{k} ASR {100 * v['asr_target']['value']:.1f}%" for k, v in r["patches"].items())
        print(f"{r['run']}: read as class {res['source']} {100 * r['stop_before']['value']:.1f}% before; {rates}")
    print(f"page: {res['page']}\nreport: {res['report']}")


def _dispatch(*, list_devices: bool, list_runs: bool, runtimes: str | None, model: list[str],
              checkpoint: list[str] | None, patches: str | None, device: str, inventory: str | None, data: str,
              data_dir: str | None, eval_subset: int | None, eval_seed: int, store: str, replay_dir: str | None,
              out: str | None, batch_size: int, warmup: int, fresh: bool, scenario: str | None, remake: bool) -> None:
    """What the parsed flags (main's, by name) ask for: a listing, the pipeline (no --model), or a replay of
    the artifacts."""
    if list_devices:
        print(describe_devices(load_inventory(inventory)))
        return
    if list_runs:
        print(store_runs(store))
        return
    names = [r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None
    if scenario:
        if model or patches or checkpoint:
            raise QadtrError("--scenario runs from its own model and stickers; drop --model, --patches, --checkpoint")
        _scenario(scenario, device=device, out=out, data_dir=data_dir, runtimes=names, inventory=inventory,
                  remake=remake)
        return
    if remake:
        raise QadtrError("--remake re-makes a scenario's stickers; pass it with --scenario NAME")
    if not model:
        _pipeline(checkpoint=checkpoint, patches=patches, device=device, out=out, data_dir=data_dir,
                  runtimes=names, eval_subset=eval_subset, inventory=inventory)
        return
    if checkpoint:
        raise QadtrError("--checkpoint is for the pipeline (no --model); with --model pass the artifacts themselves")
    _replay(model=model, patches=patches, device=device, data=data, data_dir=data_dir, eval_subset=eval_subset,
            eval_seed=eval_seed, store=store, replay_dir=replay_dir, out=out, runtimes=names,
            batch_size=batch_size, warmup=warmup, inventory=inventory, fresh=fresh)


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
                   "default: all of them when every device is this host, else 2000; pipeline 200)")
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
    p.add_argument("--scenario", default=None, help="run a scenario end to end (eval.scenario: gtsrb-stop), into "
                   "--out (default runs/NAME)")
    p.add_argument("--remake", action="store_true", help="--scenario: make its stickers again instead of using "
                   "the committed ones")
    args = p.parse_args(argv)

    return run_cli("eval.on_device", lambda: _dispatch(**vars(args)), argv)


if __name__ == "__main__":
    sys.exit(main())
