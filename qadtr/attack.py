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

from qadtr._errors import QadtrError
from qadtr.attacks import parse_target
from qadtr.data import subset_indices


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


def make_config(attack: str, args: argparse.Namespace, size: float, bits: tuple):
    """The attack's config from CLI arguments; a flag the attack does not take, and config errors, become
    QadtrError (one line, exit 1): no value the user gave is dropped or replaced by a default."""
    from qadtr.attacks import ATTACKS, EOTConfig

    if attack not in ATTACKS:
        raise QadtrError(f"unknown attack {attack!r}; choose one of {sorted(ATTACKS)}")
    cls = ATTACKS[attack][0]
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {flag: getattr(args, name) for flag, name in _OPTIONS.items() if getattr(args, name) is not None}
    eot_given = {flag: getattr(args, name) for flag, name in _EOT_OPTIONS.items() if getattr(args, name) is not None}
    unused = [f for f in given if _OPTIONS[f] not in fields] + ([*eot_given] if "eot" not in fields else [])
    if unused:
        raise QadtrError(f"--attack {attack} takes no {', '.join(unused)}; drop it or pick an attack that does "
                         f"({', '.join(a for a, (c, _) in sorted(ATTACKS.items()) if _takes(c, unused))})")
    kwargs = {_OPTIONS[f]: v for f, v in given.items()}
    kwargs.update(size=size, target=parse_target(args.target), seed=args.seed)
    try:
        if "eot" in fields:
            eot = {_EOT_OPTIONS[f]: v if f == "--max-angle" else _pair(v, f[2:]) for f, v in eot_given.items()}
            kwargs["eot"] = EOTConfig(**eot)
        if "bits" in fields:
            kwargs["bits"] = bits
        return cls(**kwargs)
    except ValueError as e:
        raise QadtrError(f"--attack {attack}: {e}") from None


def _takes(cls: type, flags: list[str]) -> bool:
    names = {f.name for f in dataclasses.fields(cls)}
    return all(_OPTIONS[f] in names if f in _OPTIONS else "eot" in names for f in flags)


def check_args(args: argparse.Namespace) -> None:
    """The counts, seeds and --out, refused before a checkpoint is loaded or a patch computed."""
    from qadtr._cli import check_count, check_writable

    check_count(args.train_subset, "--train-subset", zero="all")
    check_count(args.eval_subset, "--eval-subset", zero="all")
    for flag, seed in (("--seed", args.seed), ("--eval-seed", args.eval_seed)):
        if seed < 0:  # numpy's generators refuse it, after the patch has been computed (--eval-seed)
            raise QadtrError(f"{flag} {seed}: must be >= 0")
    check_writable(args.out, "folder")


def run(args: argparse.Namespace) -> list[Path]:
    from qadtr.attacks import ATTACKS, evaluate_patch, patch_name, save_patch
    from qadtr.checkpoint import load_checkpoint
    from qadtr.data import DATASETS, load_split
    from qadtr.models import bits_of, deploy_net
    from qadtr.bits import parse_bits
    from qadtr._config import write_json

    from qadtr._distributed import OnDevice, resolve_device

    check_args(args)
    device = resolve_device(args.device)
    if device.type != "cpu" and args.attack == "aqapa":
        raise QadtrError("--attack aqapa runs on the CPU only so far (it switches the bit widths of the whole model); "
                         "pass --device cpu")

    def placed(net):  # the attacks build their tensors on the CPU; the network runs on --device
        return net if device.type == "cpu" else OnDevice(net, device)

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
        net, src_bits = placed(model), ()
    else:
        if len(bits) != 1 and len(have) != 1:
            raise QadtrError(f"--bits: pick one of the model's bit widths {have} (e.g. --bits {have[0][0]}), "
                             "or use --attack aqapa to attack several")
        (w, a) = bits[0] if bits else have[0]
        if (w, a) not in have:
            raise QadtrError(f"--bits {args.bits}: the model has {have}")
        net, src_bits = placed(deploy_net(model, w, a)), ((w, a),)
    data = args.data or (ck.train.data if ck.train is not None else "cifar10")
    info = DATASETS.get(data)  # an unknown name: load_split refuses it with the known ones
    if info is not None and info.num_classes != ck.model.num_classes:
        raise QadtrError(f"--data {data} has {info.num_classes} classes but the model {ck.model.num_classes}; attack "
                         "it on the dataset it was trained on (omit --data)")
    test = load_split(data, "test", args.data_dir)
    eval_idx = subset_indices(len(test.labels), args.eval_subset, seed=1)
    progress = True  # qadtr.progress: a bar on a terminal, log lines elsewhere
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
        eval_nets = [(f"w{w}a{a}", placed(deploy_net(model, w, a))) for w, a in src_bits] if have else [("float", net)]
        for key, eval_net in eval_nets:
            asr = evaluate_patch(eval_net, patch, test.images[eval_idx], test.labels[eval_idx], seed=args.eval_seed)
            report[key] = asr.to_dict()
            print(f"{path.name} on {key}, {data}/test ({len(eval_idx)} images, placement seed {args.eval_seed}): {asr}")
        write_json(path.with_suffix(".asr.json"), {"patch": path.name, "eval_seed": args.eval_seed,
                                                    "eval_images": len(eval_idx), "asr": report})
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import DATA_DIR_HELP, ArgumentParser, run_cli

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
    args = p.parse_args(argv)
    return run_cli("qadtr.attack", lambda: print(f"wrote {len(run(args))} patch file(s) to {args.out}"), argv)


if __name__ == "__main__":
    sys.exit(main())
