"""The main job: checkpoint -> patches -> export -> replay on the device's runtimes -> comparison report.

    python -m eval.pipeline                                      # the embedded defaults below, a few minutes
    python -m eval.pipeline --checkpoint zoo/resnet20_w8a8 zoo/resnet20_w4a4 zoo/resnet20_w2a2 \\
        --patches eval/results/transfer/patches --eval-subset 2000 --out eval/results/on_device
    python -m eval.on_device --device local                      # the same job (on_device without --model)

Steps, each cached so a re-run (or an interrupted run) redoes nothing already done:
1. patches: the given folder; by default the transfer-matrix patches committed in the repo
   (eval/results/transfer/patches), else one quick targeted universal patch made on the first checkpoint.
2. export: every checkpoint at every bit width to QDQ ONNX and full-integer TFLite (each exporter proves
   itself); an artifact is reused only when its record names the same source sha256, exporter version and
   artifact sha256 and its proof passed (`export._common.reusable`).
3. replay: `eval.fleet.replay_on_devices` on the device, fake-quant reference included, into OUT/results.sqlite.
4. compare + report: `eval.compare.compare_store` and `eval.report.write_report` into OUT/report/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qadtr._errors import QadtrError
from qadtr.bits import bits_name

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINTS = ("zoo/resnet20_w4a4",)  # relative to the repository
DEFAULT_PATCHES = "eval/results/transfer/patches"
DEFAULT_TRANSFER = "eval/results/transfer/transfer.json"
DEFAULT_SUBSET = 200  # test images per patch: with 12 patches ~2,600 replayed images, minutes on 2 cores


def _default(rel: str) -> Path:
    """A default path: as given if it exists from here, else inside the repository."""
    return Path(rel) if Path(rel).exists() else REPO / rel


PROOF_IMAGES = 250  # test images each export proves itself on (the zoo table uses 500)


def export_checkpoint(checkpoint: Path, bits: int, out: Path, *, images) -> list[Path]:
    """ONNX QDQ and TFLite of one (checkpoint, bits), proven on `images` (N, H, W, 3) uint8 test images,
    reused when their records name the same source checkpoint."""
    from export import onnx as onnx_export, tflite as tflite_export
    from export._common import reusable
    from qadtr._config import sha256_file

    src = sha256_file(checkpoint / "model.pt" if checkpoint.is_dir() else checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{checkpoint.name if checkpoint.is_dir() else checkpoint.parent.name}_{bits_name((bits, bits))}"
    onnx_path, tflite_path = Path(f"{stem}_qdq.onnx"), Path(f"{stem}_int8.tflite")
    jobs = ((onnx_path, onnx_export.EXPORTER_VERSION,
             lambda: onnx_export.export_onnx(checkpoint, onnx_path, bits=bits, images=images)),
            (tflite_path, tflite_export.EXPORTER_VERSION,
             lambda: tflite_export.export_tflite(checkpoint, tflite_path, bits=bits, images=images)))
    for path, version, make in jobs:
        why = reusable(path, src, version)
        if why is None:
            print(f"reusing {path.name} (same source checkpoint, exporter version and file; its proof passed)")
            continue
        if path.is_file():
            print(f"re-exporting {path.name}: {why}")
        make()
        print(f"exported {path.name}")
    return [onnx_path, tflite_path]


def _pick(text: str) -> tuple[Path, tuple[tuple[int, int], ...] | None]:
    """`zoo/x@w2a2,w4a4` (or `@2,4`) -> (zoo/x, ((2, 2), (4, 4))): the bit widths of a switchable checkpoint to
    export and replay; without `@`: every bit width it has (None)."""
    from qadtr.bits import parse_bits

    path, sep, bits = text.rpartition("@") if "@" in text else (text, "", "")
    try:
        return Path(path), (parse_bits(bits) or None) if sep else None
    except ValueError as e:
        raise QadtrError(f"--checkpoint {text}: {e}") from None


def _patch_data(folder: Path) -> set[str]:
    """The datasets (e.g. "cifar10") the patch files in `folder` were made on ("" where a file does not say)."""
    from qadtr.attacks import load_patch

    return {load_patch(f).data.split("/")[0] for f in sorted(folder.glob("*.npz"))}


def _patches(patches: str | None, checkpoint: Path, out: Path, *, data: str, bits: tuple[int, int],
             data_dir: str | None) -> Path:
    """The patch folder: --patches (made on `data`), else the committed transfer patches when they were made on
    `data`, else one quick patch made on `checkpoint` at `bits` (a GTSRB checkpoint gets GTSRB patches, not
    CIFAR-10's)."""
    if patches is not None:
        if not Path(patches).is_dir() or not any(Path(patches).glob("*.npz")):
            raise QadtrError(f"--patches {patches}: no patch files (*.npz); make some with `python -m qadtr.attack`")
        other = sorted(_patch_data(Path(patches)) - {data, ""})
        if other:
            raise QadtrError(f"--patches {patches} holds patches made on {', '.join(other)}, the checkpoints were "
                             f"trained on {data}: pass patches made on {data}, or leave --patches out")
        return Path(patches)
    committed = _default(DEFAULT_PATCHES)
    if committed.is_dir() and any(committed.glob("*.npz")) and _patch_data(committed) == {data}:
        return committed
    from qadtr.attacks import UniversalConfig
    from qadtr.attacks.make import make_patches

    made = out / "patches"
    if not any(made.glob("*.npz")):  # a quick stand-in: one targeted 10% universal patch, 100 steps (~1 min)
        make_patches(checkpoint, [UniversalConfig(size=0.1, target=3, steps=100)], out=made, bits=bits_name(bits),
                     data_dir=data_dir)
    return made


def _dataset(picks: list[tuple[Path, tuple | None]]) -> tuple[str, list[list[tuple[int, int]]]]:
    """(the one dataset the (checkpoint, wanted bit widths) picks were trained on, the (w, a) replayed of each
    pick), each pick checked first: a float checkpoint, a missing or unequal (w, a) and a second dataset are
    refused in one line."""
    from qadtr.checkpoint import read_checkpoint_info

    trained_on: dict[str, Path] = {}  # dataset -> first checkpoint trained on it
    replayed: list[list[tuple[int, int]]] = []
    for ck, wanted in picks:
        info = read_checkpoint_info(ck)  # a one-line error for a missing or foreign checkpoint
        if not info.model.is_quant:
            raise QadtrError(f"{ck} is a float checkpoint; the pipeline replays quantized models (e.g. "
                             "zoo/resnet20_w4a4)")
        missing = sorted(set(wanted or ()) - set(info.model.bits))
        if missing:
            raise QadtrError(f"{ck} has no {', '.join(bits_name(b) for b in missing)}; it has "
                             f"{', '.join(bits_name(b) for b in info.model.bits)}")
        replayed.append([b for b in info.model.bits if wanted is None or b in wanted])
        for w, a in replayed[-1]:
            if w != a:
                raise QadtrError(f"{ck} has {bits_name((w, a))}; the exporters take equal weight and activation bits")
        trained_on.setdefault(info.train.data if info.train is not None else "cifar10", ck)
    if len(trained_on) > 1:
        raise QadtrError(f"--checkpoint: {', '.join(f'{p} was trained on {d}' for d, p in trained_on.items())}; "
                         "one run replays one dataset: run the pipeline once per dataset")
    return next(iter(trained_on)), replayed


def run_pipeline(*, checkpoints: list[str] | None = None, patches: str | None = None, device: str = "local",
                 out: str | Path = "runs/main", data_dir: str | None = None, eval_subset: int = DEFAULT_SUBSET,
                 runtimes: list[str] | None = None, inventory: str | None = None, transfer: str | None = None,
                 progress: bool = False) -> dict:
    """Run the main job; returns {"report": html path, "comparisons": [...], "on_device": metrics}."""
    from eval.compare import compare_store, document
    from eval.fleet import json_safe, replay_on_devices
    from eval.report import write_report
    from qadtr._config import write_json
    from qadtr.data import load_split, subset

    out = Path(out)
    picks = [_pick(c) for c in checkpoints] if checkpoints else [(_default(c), None) for c in DEFAULT_CHECKPOINTS]
    ckpts = [ck for ck, _ in picks]
    data, replayed = _dataset(picks)
    proof = subset(load_split(data, "test", data_dir), PROOF_IMAGES).images  # (N, H, W, 3) uint8
    models: list[str] = []
    for ck, bits in zip(ckpts, replayed):
        for w, _ in bits:
            models += [str(p) for p in export_checkpoint(ck, w, out / "artifacts", images=proof)]
    patch_dir = _patches(patches, ckpts[0], out, data=data, bits=replayed[0][0], data_dir=data_dir)
    print(f"patches: {patch_dir} ({len(list(patch_dir.glob('*.npz')))} files)")
    store = out / "results.sqlite"
    metrics = replay_on_devices(devices=device, models=models, patches=str(patch_dir), data=data, data_dir=data_dir,
                       eval_subset=eval_subset, store_path=store, runtimes=runtimes, inventory=inventory,
                       progress=progress)
    write_json(out / "on_device.json", metrics)
    comparisons, skipped = compare_store(store)
    compare = json_safe(document(comparisons, skipped, store=store))
    write_json(out / "report" / "compare.json", compare)
    # the committed transfer matrix describes the committed patches only (CIFAR-10's), not patches made here
    transfer_json = Path(transfer) if transfer else _default(DEFAULT_TRANSFER)
    if transfer is None and patch_dir != _default(DEFAULT_PATCHES):
        transfer_json = None
    html = write_report(store, out / "report", compare=out / "report" / "compare.json",
                        transfer=transfer_json if transfer_json and transfer_json.is_file() else None,
                        patches=patch_dir)
    for c in comparisons:
        print(c)
    return {"report": str(html), "comparisons": compare["comparisons"], "on_device": metrics}


def main(argv: list[str] | None = None) -> int:
    from eval.fleet import table
    from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.pipeline", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--checkpoint", nargs="+", default=None, help="checkpoints to export and replay (default "
                   f"{', '.join(DEFAULT_CHECKPOINTS)}); CKPT@2,4 picks bit widths of a switchable one")
    p.add_argument("--patches", default=None, help=f"folder of patch files (default {DEFAULT_PATCHES})")
    p.add_argument("--device", default="local", help="device or group names from the inventory, comma-separated")
    p.add_argument("--inventory", default=None, help="device inventory TOML (default: the built-in one)")
    p.add_argument("--runtimes", default=None, help="comma-separated runtimes (default: every one the device has)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--eval-subset", type=int, default=DEFAULT_SUBSET, help="test images per universal patch "
                   f"(0 = all; default {DEFAULT_SUBSET})")
    p.add_argument("--transfer", default=None, help=f"transfer-matrix JSON for the report (default {DEFAULT_TRANSFER})")
    p.add_argument("--out", default="runs/main", help="output folder (default runs/main)")
    args = p.parse_args(argv)

    def body() -> None:
        if args.eval_subset < 0:
            raise QadtrError(f"--eval-subset {args.eval_subset}: give a count of test images, or 0 for all of them")
        check_writable(args.out, "folder")  # before the exports and replays
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()] if args.runtimes else None
        res = run_pipeline(checkpoints=args.checkpoint, patches=args.patches, device=args.device, out=args.out,
                           data_dir=args.data_dir, eval_subset=args.eval_subset, runtimes=runtimes,
                           inventory=args.inventory, transfer=args.transfer, progress=True)
        print(table(res["on_device"]))
        print(f"report: {res['report']}")

    return run_cli("eval.pipeline", body, argv)


if __name__ == "__main__":
    sys.exit(main())
