"""Make adversarial patches: `python -m qadtr.attack zoo/resnet20_w8a8 --attack universal --bits 8 --size 0.1 --target 3 --out patches/`.

Universal, LaVAN and A-QAPA patches are optimised on training images and evaluated on test images;
location-optimised patches are per-image, made for (and stored with the indices of) test images.
Quantized models are attacked through `deploy_net` (BN folded, int32 bias), the integer runtimes' function.
Each patch is written as OUT/<bits>_<attack>_s<size>_<target>.npz (+ .png, .json, .asr.json).
The work is `qadtr.attacks.make.make_patches`; this module turns the flags into its attack configs.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

from qadtr._cli import DATA_DIR_HELP, ArgumentParser, run_cli
from qadtr._errors import QadtrError
from qadtr.attacks import parse_target
from qadtr.attacks.make import check_device, check_job, make_patches
from qadtr.bits import parse_bits


def _pair(text: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise QadtrError(f"--{name} {text!r}: write two numbers lo,hi, e.g. 0.9,1.1") from None
    return lo, hi


# flag -> config field for the options only some attacks have (a flag left out keeps the attack's default)
_OPTIONS = {"--steps": "steps", "--lr": "lr", "--batch-size": "batch_size", "--optimizer": "optimizer",
            "--schedule": "schedule", "--temperature": "temperature"}
_EOT_OPTIONS = {"--max-angle": "max_angle", "--scale": "scale", "--brightness": "brightness"}


def make_config(attack: str, *, size: float, bits: tuple, target: str, seed: int,
                options: Mapping[str, Any] | None = None, eot: Mapping[str, Any] | None = None):
    """The attack's config from the flags given (`options`: {"--steps": 100, ...}, `eot`: {"--scale": "0.9,1.1",
    ...}, both keyed by _OPTIONS / _EOT_OPTIONS); a flag the attack does not take, and config errors, become
    QadtrError (one line, exit 1): no value the user gave is dropped or replaced by a default."""
    from qadtr.attacks import ATTACK_ROWS, EOTConfig

    if attack not in ATTACK_ROWS:
        raise QadtrError(f"unknown attack {attack!r}; choose one of {sorted(ATTACK_ROWS)}")
    cls = ATTACK_ROWS.get(attack).config
    fields = {f.name for f in dataclasses.fields(cls)}
    given, eot_given = dict(options or {}), dict(eot or {})
    unused = [f for f in given if _OPTIONS[f] not in fields] + ([*eot_given] if "eot" not in fields else [])
    if unused:
        raise QadtrError(f"--attack {attack} takes no {', '.join(unused)}; drop it or pick an attack that does "
                         f"({', '.join(sorted(r.name for r in ATTACK_ROWS.rows() if _takes(r.config, unused)))})")
    kwargs = {_OPTIONS[f]: v for f, v in given.items()}
    kwargs.update(size=size, target=parse_target(target), seed=seed)
    try:
        if "eot" in fields:
            ranges = {_EOT_OPTIONS[f]: v if f == "--max-angle" else _pair(v, f[2:]) for f, v in eot_given.items()}
            kwargs["eot"] = EOTConfig(**ranges)
        if "bits" in fields:
            kwargs["bits"] = bits
        return cls(**kwargs)
    except ValueError as e:
        raise QadtrError(f"--attack {attack}: {e}") from None


def _takes(cls: type, flags: list[str]) -> bool:
    names = {f.name for f in dataclasses.fields(cls)}
    return all(_OPTIONS[f] in names if f in _OPTIONS else "eot" in names for f in flags)


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m qadtr.attack", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="model.pt (with model.json beside it) or its folder")
    p.add_argument("--attack", default="universal", help="universal | lavan | location | aqapa")
    p.add_argument("--bits", default="", help="bit width to attack: 8, w4a4 (omit for float / a one-width model); "
                   "aqapa: several, e.g. 2,4,8 (default: all of the model's)")
    p.add_argument("--size", default="0.1", help="patch area fraction(s): 0.1 or 0.02,0.05,0.1")
    p.add_argument("--target", default="none", help="target class index, or 'none' (untargeted)")
    p.add_argument("--out", required=True, help="folder for the patch files")
    p.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the attack's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="default: the attack's")
    p.add_argument("--optimizer", default=None, help="sign (projected sign-gradient, the default) | adam (sigmoid "
                   "logits; pass --lr 0.1); not for location")
    p.add_argument("--schedule", default=None, help="step size schedule: cosine (decays to 0, the default) | "
                   "constant; not for location")
    p.add_argument("--max-angle", type=float, default=None, help="EOT rotation range, degrees (default 0); "
                   "universal and aqapa")
    p.add_argument("--scale", default=None, help="EOT scale range lo,hi (default 1,1); universal and aqapa")
    p.add_argument("--brightness", default=None, help="EOT brightness range lo,hi (default 1,1); universal and aqapa")
    p.add_argument("--temperature", type=float, default=None, help="aqapa: softmax temperature over bit widths "
                   "(default 0.5)")
    p.add_argument("--train-subset", type=int, default=0, help="optimise on N training images (0 = all)")
    p.add_argument("--eval-subset", type=int, default=2000, help="evaluate (location: attack) N test images (0 = all)")
    p.add_argument("--eval-seed", type=int, default=1, help="seed of the evaluation placements")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (cuda when torch sees a GPU, else cpu): where "
                   "the network runs; patches and placements stay on the CPU; aqapa: cpu only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> None:
        # the counts, seeds, --out and --device, refused before a checkpoint is loaded or a patch computed
        check_job(out=args.out, train_subset=args.train_subset, eval_subset=args.eval_subset, seed=args.seed,
                  eval_seed=args.eval_seed)
        device = check_device(args.attack, args.device)
        try:
            sizes = [float(s) for s in args.size.split(",")]
            bits = parse_bits(args.bits if args.bits not in ("float", "32") else "")
        except ValueError as e:
            raise QadtrError(f"{e}; --size takes fractions like 0.1 or 0.02,0.05,0.1") from None
        options = {f: getattr(args, name) for f, name in _OPTIONS.items() if getattr(args, name) is not None}
        eot = {f: getattr(args, name) for f, name in _EOT_OPTIONS.items() if getattr(args, name) is not None}
        configs = [make_config(args.attack, size=s, bits=bits, target=args.target, seed=args.seed, options=options,
                               eot=eot) for s in sizes]  # every flag validated before the checkpoint is loaded
        written = make_patches(args.checkpoint, configs, out=args.out, bits=args.bits, data=args.data,
                               data_dir=args.data_dir, train_subset=args.train_subset, eval_subset=args.eval_subset,
                               eval_seed=args.eval_seed, device=device)
        print(f"wrote {len(written)} patch file(s) to {args.out}")

    return run_cli("qadtr.attack", body, argv)


if __name__ == "__main__":
    sys.exit(main())
