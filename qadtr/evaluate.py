"""Clean top-1 accuracy of a checkpoint at each of its bit widths, deployable and as trained.

Example:
    python -m qadtr.evaluate zoo/resnet20_w4a4/model.pt --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from qadtr._stats import Proportion
from qadtr.models import at_bits, bits_of, deploy_net


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500, progress: bool = False) -> np.ndarray:
    """Argmax predictions (N,) of `model` in eval mode on uint8 HWC images."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in tqdm(range(0, len(images), batch_size), disable=not progress, leave=False, desc="eval"):
            out.append(model(to_tensor(images[i:i + batch_size])).argmax(1).numpy())  # (B,)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    finally:
        model.train(was_training)


FORMS = ("deploy", "trained")


def accuracy_per_bits(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, form: str = "deploy",
                      progress: bool = False, keys: tuple[str, ...] | None = None) -> dict[str, Proportion]:
    """{"float": p} for a float model, {"w4a4": p, ...} for a quantized one; leaves the active bits as found.

    `keys` ("w4a4", ...) limits a quantized model to those bit widths (default: all it has).

    form="deploy" evaluates the BN-folded int32-bias network that exporters ship (the default, and the
    number to quote); form="trained" the network as trained, with BatchNorm.
    """
    if form not in FORMS:
        raise ValueError(f"form={form!r}; choose one of {FORMS}")
    if not bits_of(model):
        return {"float": Proportion(int((predict(model, images, progress=progress) == labels).sum()), len(labels))}
    active = model.active
    try:
        result = {}
        for w, a in bits_of(model):
            if keys is not None and f"w{w}a{a}" not in keys:
                continue
            net = deploy_net(model, w, a) if form == "deploy" else at_bits(model, w, a)
            correct = int((predict(net, images, progress=progress) == labels).sum())
            result[f"w{w}a{a}"] = Proportion(correct, len(labels))
        return result
    finally:
        model.active = active


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli

    p = argparse.ArgumentParser(prog="python -m qadtr.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="model.pt (with model.json beside it) or its folder")
    p.add_argument("--data", default=None, help="dataset name (default: the one the checkpoint trained on)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $QADTR_DATA)")
    p.add_argument("--download", action="store_true", help="fetch the official dataset archive if missing")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--limit", type=int, default=0, help="evaluate a fixed pseudo-random subset of N images (0 = all)")
    p.add_argument("--json", default=None, help="also write the accuracies to this JSON file")
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr.checkpoint import load_checkpoint
        from qadtr.data import load_split, subset

        model, ck = load_checkpoint(args.checkpoint)
        data = args.data or (ck.train.data if ck.train is not None else "cifar10")
        split = subset(load_split(data, args.split, args.data_dir, download=args.download), args.limit)
        images, labels = split.images, split.labels
        results = {}
        for form in (FORMS if ck.model.is_quant else ("deploy",)):
            acc = accuracy_per_bits(model, images, labels, form=form, progress=sys.stderr.isatty())
            results[form] = {k: v.to_dict() for k, v in acc.items()}
            metric = f"{args.split}_acc" + ("" if form == "deploy" else "_trained")
            recorded = ck.metrics.get(metric, {}) if not args.limit else {}
            for key, p_ in acc.items():
                note = ""
                if key in recorded:
                    delta = 100 * (p_.value - recorded[key]["value"])
                    note = f"  (recorded {100 * recorded[key]['value']:.2f}%, delta {delta:+.2f} pt)"
                label = key if not ck.model.is_quant else f"{key} {form}"
                print(f"{ck.model.arch} {label:15s} {data}/{args.split} top-1 {p_}{note}")
        from qadtr.recipes.dwq import RandomPrecision, random_inference

        if random_inference(ck):  # DWQ: the checkpoint asks for a random precision per batch at inference
            p_ = Proportion(int((predict(RandomPrecision(model, seed=0), images) == labels).sum()), len(labels))
            results["random"] = {"per_batch_of": 500, "seed": 0, **p_.to_dict()}
            print(f"{ck.model.arch} {'random deploy':15s} {data}/{args.split} top-1 {p_}  (a random precision "
                  f"per batch of 500, seed 0)")
        if args.json:
            from qadtr._config import write_json
            write_json(args.json, results)

    return run_cli("qadtr.evaluate", body)


if __name__ == "__main__":
    sys.exit(main())
