"""Make adversarial patches: `python -m qadtr.attack zoo/resnet20_w8a8 --attack universal --bits 8 --size 0.1 --target 3 --out patches/`.

Universal, LaVAN and A-QAPA patches are optimised on training images and evaluated on test images;
location-optimised patches are per-image, made for (and stored with the indices of) test images.
Quantized models are attacked through `deploy_net` (BN folded, int32 bias), the integer runtimes' function.
Each patch is written as OUT/<bits>_<attack>_s<size>_<target>.npz (+ .png, .json, .asr.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError
from qadtr.attacks import parse_target
from qadtr.data import subset_indices


def _pair(text: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise QadtrError(f"--{name} {text!r}: write two numbers lo,hi, e.g. 0.9,1.1") from None
    return lo, hi


def make_config(attack: str, args: argparse.Namespace, size: float, bits: tuple):
    """The attack's config from CLI arguments; config errors become QadtrError (one line, exit 1)."""
    from qadtr.attacks import ATTACKS, EOTConfig

    if attack not in ATTACKS:
        raise QadtrError(f"unknown attack {attack!r}; choose one of {sorted(ATTACKS)}")
    cls = ATTACKS[attack][0]
    common = dict(size=size, target=parse_target(args.target), seed=args.seed)
    if args.steps is not None:
        common["steps"] = args.steps
    if args.lr is not None:
        common["lr"] = args.lr
    try:
        if attack == "location":
            return cls(**common, batch_size=args.batch_size or 100)
        common.update(batch_size=args.batch_size or 64, optimizer=args.optimizer, schedule=args.schedule)
        if attack == "lavan":
            return cls(**common)
        eot = EOTConfig(max_angle=args.max_angle, scale=_pair(args.scale, "scale"),
                        brightness=_pair(args.brightness, "brightness"))
        if attack == "aqapa":
            return cls(**common, eot=eot, bits=bits, temperature=args.temperature)
        return cls(**common, eot=eot)
    except ValueError as e:
        raise QadtrError(f"--attack {attack}: {e}") from None


def run(args: argparse.Namespace) -> list[Path]:
    from qadtr.attacks import ATTACKS, evaluate_patch, patch_name, save_patch
    from qadtr.checkpoint import load_checkpoint
    from qadtr.data import load_split
    from qadtr.models import bits_of, deploy_net
    from qadtr.bits import parse_bits
    from qadtr._config import write_json

    try:
        sizes = [float(s) for s in args.size.split(",")]
        bits = parse_bits(args.bits if args.bits not in ("float", "32") else "")
    except ValueError as e:
        raise QadtrError(f"{e}; --size takes fractions like 0.1 or 0.02,0.05,0.1") from None
    configs = [make_config(args.attack, args, s, bits) for s in sizes]  # validate every flag before loading
    model, ck = load_checkpoint(args.checkpoint)
    target = configs[0].target
    if target is not None and target >= ck.model.num_classes:
        raise QadtrError(f"--target {target}: the model has {ck.model.num_classes} classes (0..{ck.model.num_classes - 1})")
    have = bits_of(model)
    if args.attack == "aqapa":
        net, src_bits = model, tuple(bits) or tuple(have)  # aqapa_patch checks the bit widths itself
    elif not have:
        if bits:
            raise QadtrError(f"--bits {args.bits}: {args.checkpoint} is a float model; drop --bits")
        net, src_bits = model, ()
    else:
        if len(bits) != 1 and len(have) != 1:
            raise QadtrError(f"--bits: pick one of the model's bit widths {have} (e.g. --bits {have[0][0]}), "
                             "or use --attack aqapa to attack several")
        (w, a) = bits[0] if bits else have[0]
        if (w, a) not in have:
            raise QadtrError(f"--bits {args.bits}: the model has {have}")
        net, src_bits = deploy_net(model, w, a), ((w, a),)
    data = args.data or (ck.train.data if ck.train is not None else "cifar10")
    test = load_split(data, "test", args.data_dir)
    eval_idx = subset_indices(len(test.labels), args.eval_subset, seed=1)
    progress = sys.stderr.isatty()
    out = Path(args.out)
    written = []
    for cfg in configs:
        attack_fn = ATTACKS[args.attack][1]
        if args.attack == "location":  # per-image: attack the evaluation images themselves
            patch = attack_fn(net, test.images[eval_idx], test.labels[eval_idx], cfg, progress=progress)
            patch = dataclasses.replace(patch, indices=eval_idx)
            source = f"{data}/test"
        else:
            train = load_split(data, "train", args.data_dir)
            idx = subset_indices(len(train.labels), args.train_subset, seed=0)
            patch = attack_fn(net, train.images[idx], train.labels[idx], cfg, progress=progress)
            source = f"{data}/train"
        patch = patch.with_source(model_sha256=ck.sha256, bits=src_bits, data=source)
        path = save_patch(patch, out / patch_name(patch))
        report = {}
        eval_nets = [(f"w{w}a{a}", deploy_net(model, w, a)) for w, a in src_bits] if have else [("float", net)]
        for key, eval_net in eval_nets:
            asr = evaluate_patch(eval_net, patch, test.images[eval_idx], test.labels[eval_idx], seed=args.eval_seed)
            report[key] = asr.to_dict()
            print(f"{path.name} on {key}, {data}/test ({len(eval_idx)} images, placement seed {args.eval_seed}): {asr}")
        write_json(path.with_suffix(".asr.json"), {"patch": path.name, "eval_seed": args.eval_seed,
                                                    "eval_images": len(eval_idx), "asr": report})
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli

    p = argparse.ArgumentParser(prog="python -m qadtr.attack", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="model.pt (with model.json beside it) or its folder")
    p.add_argument("--attack", default="universal", help="universal | lavan | location | aqapa")
    p.add_argument("--bits", default="", help="bit width to attack: 8, w4a4 (omit for float / a one-width model); "
                   "aqapa: several, e.g. 2,4,8 (default: all of the model's)")
    p.add_argument("--size", default="0.1", help="patch area fraction(s): 0.1 or 0.02,0.05,0.1")
    p.add_argument("--target", default="none", help="target class index, or 'none' (untargeted)")
    p.add_argument("--out", required=True, help="folder for the patch files")
    p.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $QADTR_DATA)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the attack's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="default: the attack's")
    p.add_argument("--optimizer", default="sign", help="sign (projected sign-gradient) | adam (sigmoid logits; "
                   "pass --lr 0.1)")
    p.add_argument("--schedule", default="cosine", help="step size schedule: cosine (decays to 0) | constant")
    p.add_argument("--max-angle", type=float, default=0.0, help="EOT rotation range, degrees")
    p.add_argument("--scale", default="1,1", help="EOT scale range lo,hi")
    p.add_argument("--brightness", default="1,1", help="EOT brightness range lo,hi")
    p.add_argument("--temperature", type=float, default=0.5, help="aqapa: softmax temperature over bit widths")
    p.add_argument("--train-subset", type=int, default=0, help="optimise on N training images (0 = all)")
    p.add_argument("--eval-subset", type=int, default=2000, help="evaluate (location: attack) N test images (0 = all)")
    p.add_argument("--eval-seed", type=int, default=1, help="seed of the evaluation placements")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run_cli("qadtr.attack", lambda: print(f"wrote {len(run(args))} patch file(s) to {args.out}"), argv)


if __name__ == "__main__":
    sys.exit(main())
