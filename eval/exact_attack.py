"""White-box universal patch on a deployed .tflite's or .onnx's exact integer arithmetic: `python -m eval.exact_attack
--artifact w2a2.tflite --semantics double-ruy --runtimes litert-builtin --size 0.1 --target 3 --steps 100 --compare
w2a2_universal_s10_t3.npz --out runs/x1`, or `--artifact w2a2.onnx --runtimes onnxrt` (semantics single with VNNI,
single-u8s8sat on AVX2 alone).

The patch is qadtr's universal attack (same config flags as `python -m qadtr.attack --attack universal`) against
the artifact as a torch model, eval._exact_torch.ExactTflite for a .tflite and eval._exact_onnx.ExactOnnx for a
.onnx: the integer executor's forward under --semantics (default: what the first of --runtimes computes on this
host, devices.intexec.expected_semantics), straight-through gradients around every requantization. It is optimised
on the training split (--train-subset, the seed-0 subset as qadtr.attack takes it) and replayed, with the
--compare fake-quant patch, on each of --runtimes on the seed-1 test subset (--eval-subset) at the seeded
placements of --eval-seed. Writes OUT/patch.npz and OUT/result.json (ASR with n and Wilson 95% CIs per runtime,
exact minus compare paired). The library is eval/_exact_attack.py.
"""

from __future__ import annotations

import sys

_OPTIONS = {"--steps": "steps", "--batch-size": "batch_size", "--lr": "lr", "--optimizer": "optimizer",
            "--schedule": "schedule"}  # flag -> argparse dest, the keys qadtr.attack.make_config takes
_EOT = {"--max-angle": "max_angle", "--scale": "scale", "--brightness": "brightness"}  # flag -> dest, EOT ranges


def _body(*, artifact: str, semantics: str | None, runtimes: str, compare: str | None, data: str,
          data_dir: str | None, size: float, target: str, seed: int, train_subset: int, eval_subset: int,
          eval_seed: int, out: str, options: dict, eot: dict) -> None:
    """Check the flags (main's, by name; `options` / `eot`: flag -> value, None where not given), optimise the
    patch, replay it on each runtime and print the ASRs."""
    from devices._host import fingerprint
    from devices.intexec import expected_semantics
    from eval._exact_attack import run_exact_attack
    from qadtr._cli import check_count, check_writable
    from qadtr._errors import QadtrError
    from qadtr.attack import make_config
    from qadtr.data import load_split, subset_indices

    names = [r for r in runtimes.split(",") if r]
    semantics = semantics or expected_semantics(names[0] if names else "", fingerprint())
    if not names or semantics is None:
        raise QadtrError(f"--runtimes {runtimes!r} / --semantics: name at least one runtime, and a semantics "
                         "when the first runtime's is not known here (e.g. --semantics double-ruy)")
    options = {f: v for f, v in options.items() if v is not None}
    eot = {f: v for f, v in eot.items() if v is not None}
    cfg = make_config("universal", size=size, bits=(), target=target, seed=seed, options=options, eot=eot)
    check_count(train_subset, "--train-subset", zero="all")
    check_count(eval_subset, "--eval-subset", zero="all")
    check_writable(out, "folder")
    train, test = (load_split(data, s, data_dir) for s in ("train", "test"))
    ti = subset_indices(len(train.labels), train_subset, seed=0)
    ei = subset_indices(len(test.labels), eval_subset, seed=1)
    result = run_exact_attack(artifact=artifact, semantics=semantics, cfg=cfg, runtimes=names,
                              train=(train.images[ti], train.labels[ti], f"{data}/train"),
                              test=(test.images[ei], test.labels[ei], ei, f"{data}/test"), out=out,
                              compare=compare, eval_seed=eval_seed, progress=True)
    print(f"patch optimised on {semantics} ({result.models}) in {result.seconds:.0f} s: {result.patch}")
    for rt, row in result.replays.items():
        expected = row["expected_semantics"]
        note = "" if expected == semantics else f" (computes {expected or 'an unmodelled semantics'} here)"
        for key in ("exact", "compare"):
            if key in row:
                a = row[key]["asr"]
                print(f"{rt}{note}: {key} patch ASR {100 * a['value']:.2f}% [{100 * a['ci95'][0]:.2f}, "
                      f"{100 * a['ci95'][1]:.2f}] (n={a['n']})")
        if row["exact_minus_compare"]:
            d = row["exact_minus_compare"]
            print(f"{rt}: exact - compare {100 * d['value']:+.2f} pp [{100 * d['ci95'][0]:+.2f}, "
                  f"{100 * d['ci95'][1]:+.2f}] (paired, discordant {d['b']}/{d['c']})")
    print(f"wrote {out}/result.json, patch.npz")


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser, DATA_DIR_HELP, run_cli

    p = ArgumentParser(prog="python -m eval.exact_attack", description=__doc__.split("\n")[0])
    p.add_argument("--artifact", required=True, help="the deployed .tflite (export.tflite) or .onnx (export.onnx)")
    p.add_argument("--semantics", default=None, help="double | double-ruy | xnnpack for a .tflite, single | "
                   "single-u8s8sat for a .onnx (default: the first runtime's)")
    p.add_argument("--runtimes", default="litert-builtin", help="comma-separated registered runtimes to replay on")
    p.add_argument("--compare", default=None, help="a fake-quant universal patch file to replay beside it")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--size", type=float, default=0.1, help="patch share of the image area")
    p.add_argument("--target", default="none", help="target class, or 'none' for untargeted")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the universal attack's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", default=None, help="sign | adam")
    p.add_argument("--schedule", default=None, help="cosine | constant")
    p.add_argument("--max-angle", type=float, default=None, help="EOT rotation range, degrees")
    p.add_argument("--scale", default=None, help="EOT scale range lo,hi")
    p.add_argument("--brightness", default=None, help="EOT brightness range lo,hi")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, default=0, help="optimise on N training images (0 = all)")
    p.add_argument("--eval-subset", type=int, default=2000, help="replay on N test images (0 = all)")
    p.add_argument("--eval-seed", type=int, default=1, help="seed of the evaluation placements")
    p.add_argument("--out", required=True, help="run folder: patch.npz, result.json")
    flags = dict(vars(p.parse_args(argv)))
    options, eot = ({f: flags.pop(d) for f, d in table.items()} for table in (_OPTIONS, _EOT))
    return run_cli("eval.exact_attack", lambda: _body(**flags, options=options, eot=eot), argv)


if __name__ == "__main__":
    sys.exit(main())
