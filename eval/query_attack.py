"""Patch attacks that query a deployed artifact: `python -m eval.query_attack --artifact m.tflite --runtime
litert-builtin --images 100 --budget 500 --target 3 --out runs/q1`.

The attacked images are the dataset's test subset `qadtr.data.subset_indices(len(test), --images, seed=1)`, the
one every replay evaluates universal patches on. Writes OUT/result.json (typed JSON: n, ASR with its Wilson 95% CI,
the budget, queries-to-success quantiles, the runner's kernels, the host fingerprint), OUT/patch.npz and, while
running, OUT/state.npz: an interrupted run continues with the same command plus --resume. `--init PATCH.npz`
refines a white-box universal patch (transfer-then-refine) and reports the queries it takes to beat its replayed
ASR and to reach its fake-quant ASR. `--device NAME [--inventory FILE]` queries the runtime on a board of the
inventory (as eval.on_device selects devices; default `local`, this host): every query travels in batches through
one agent session over SSH, and result.json records the device and its fingerprint. The library is
eval/query/run.py.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eval.query.run import QueryResult


def _config(*, attack: str, size: float, target: str, budget: int, location: str, seed: int, batch: int,
            save_every: int, universal: bool) -> object:
    """The --attack's config from the flags; a flag it refuses is one line naming the fix."""
    from eval.query import QUERY_ATTACKS
    from qadtr.attacks import parse_target
    from qadtr._errors import QadtrError

    config_cls, _ = QUERY_ATTACKS[attack].load()
    fields = {"size": size, "target": parse_target(target), "budget": budget, "location": location, "seed": seed,
              "batch": batch, "save_every": save_every, "universal": universal}
    try:
        return config_cls(**fields)
    except ValueError as e:
        raise QadtrError(str(e)) from None


def _report(result: QueryResult, *, attack: str, out: str) -> None:
    """Print the ASR line, the refine and held-out lines where there are some, and what was written."""
    a, q = result.asr["asr"], result.queries
    board = f" on device {result.device['name']}" if result.device and result.device.get("kind") != "local" else ""
    print(f"{attack} on {result.runtime}{board} ({result.kernels}): ASR {100 * a['value']:.2f}% "
          f"[{100 * a['ci95'][0]:.2f}, {100 * a['ci95'][1]:.2f}] (n={a['n']}), budget {result.budget}, "
          f"queries to success median {q['to_success']['p50']}")
    if result.refine:
        print(f"refine: replayed {result.refine['replayed_asr']:.2%}, reference {result.refine['reference_asr']}, "
              f"queries to exceed replayed {result.refine['queries_to_exceed_replayed']}, to reference "
              f"{result.refine['queries_to_reference']}")
    if result.holdout:
        h = result.holdout["asr"]["asr"]
        print(f"held out: ASR {100 * h['value']:.2f}% [{100 * h['ci95'][0]:.2f}, {100 * h['ci95'][1]:.2f}] "
              f"(n={h['n']}) on images the attack never queried ({result.holdout['placement']})")
        if result.holdout["start_asr"]:
            print(f"held out, the --init patch at the same places: ASR "
                  f"{100 * result.holdout['start_asr']['asr']['value']:.2f}%")
    print(f"wrote {out}/result.json, patch.npz")


def _body(*, artifact: str, runtime: str, attack: str, data: str, data_dir: str | None, images: int, budget: int,
          target: str, size: float, universal: bool, location: str, holdout: int, init: str | None, eval_seed: int,
          reference: str | None, seed: int, batch: int, save_every: int, out: str, resume: bool, device: str,
          inventory: str | None) -> None:
    """Check the flags (main's, by name) and --out, attack the seeded test subset (and measure the held-out
    images), report."""
    from eval.query.run import query_device, run_query_attack
    from qadtr._cli import check_writable
    from qadtr._errors import QadtrError
    from qadtr.data import heldout_indices, load_split, subset_indices

    cfg = _config(attack=attack, size=size, target=target, budget=budget, location=location, seed=seed, batch=batch,
                  save_every=save_every, universal=universal)
    if images < 0 or holdout < 0:
        raise QadtrError(f"--images {images} / --holdout {holdout}: each must be >= 0")
    check_writable(out, "folder")
    test = load_split(data, "test", data_dir)
    idx = subset_indices(len(test.labels), images, seed=1)
    held = None
    if holdout:
        h = heldout_indices(len(test.labels), images, holdout, seed=1)
        held = (test.images[h], test.labels[h], h)
    with query_device(device, runtime=runtime, inventory=inventory) as (open_runner, where):
        result = run_query_attack(attack=attack, cfg=cfg, runtime=runtime, artifact=artifact,
                                  images=test.images[idx], labels=test.labels[idx], indices=idx,
                                  data=f"{data}/test", out=out, resume=resume, init=init,
                                  eval_seed=eval_seed, reference=reference, holdout=held, progress=True,
                                  open_runner=open_runner, device=where)
    _report(result, attack=attack, out=out)


def main(argv: list[str] | None = None) -> int:
    from eval.query import QUERY_ATTACKS
    from qadtr._cli import ArgumentParser, DATA_DIR_HELP, run_cli

    p = ArgumentParser(prog="python -m eval.query_attack", description=__doc__.split("\n")[0])
    p.add_argument("--artifact", required=True, help="the deployed file: .tflite, .onnx, or a checkpoint for fakequant")
    p.add_argument("--runtime", required=True, help="a registered runtime (python -m eval.on_device --list-runtimes)")
    p.add_argument("--attack", default="sparse-rs", choices=list(QUERY_ATTACKS), help="score-based or top-1 only")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--images", type=int, default=100, help="test images attacked (the seed-1 subset; 0 = all)")
    p.add_argument("--budget", type=int, default=1000, help="queries per image, its clean query included")
    p.add_argument("--target", default="none", help="target class, or 'none' for untargeted")
    p.add_argument("--size", type=float, default=0.1, help="patch share of the image area (0.1 = 10x10 on 32x32)")
    p.add_argument("--universal", action="store_true", help="one patch for all images (default: one per image; "
                   "with --attack decision: the universal search on top-1 labels only)")
    p.add_argument("--location", default="per-image", help="per-image | shared (universal) | fixed")
    p.add_argument("--holdout", type=int, default=0, help="with --universal: also measure the final patch on N test "
                   "images it never queried (the next N of the same seeded permutation; 0 = none)")
    p.add_argument("--init", default=None, help="universal patch file to refine (transfer-then-refine)")
    p.add_argument("--eval-seed", type=int, default=1, help="seed of --init's placements (eval.transfer's default)")
    p.add_argument("--reference", default=None, help="checkpoint for --init's fake-quant ASR (default: the artifact's "
                   "export record source)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=256, help="rows per runner call")
    p.add_argument("--save-every", type=int, default=25, help="iterations between checkpoints")
    p.add_argument("--out", required=True, help="run folder: state.npz, result.json, patch.npz")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--device", default="local", help="the one device whose runtime is queried: an inventory name "
                   "(python -m eval.on_device --list-devices); default local, this host")
    p.add_argument("--inventory", default=None, help="device inventory TOML (default: $QADTR_DEVICES, "
                   "~/.config/qadtr/devices.toml, else the built-in one)")
    args = p.parse_args(argv)

    return run_cli("eval.query_attack", lambda: _body(**vars(args)), argv)


if __name__ == "__main__":
    sys.exit(main())
