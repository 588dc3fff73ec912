"""Clean top-1 accuracy of a checkpoint at each of its bit widths, deployable and as trained.

Example:
    python -m qadtr.evaluate zoo/resnet20_w4a4/model.pt --data-dir ../shared/data
"""

from __future__ import annotations

import sys

from qadtr._cli import ArgumentParser, DATA_DIR_HELP, check_count, check_writable, run_cli
from qadtr._config import write_json
from qadtr._distributed import resolve_device
from qadtr._errors import QadtrError
from qadtr._stats import Proportion
from qadtr.checkpoint import load_checkpoint
from qadtr import data as datasets  # module attribute: tests swap datasets.load_split for a tiny split
from qadtr.predict import FORMS, accuracy_per_bits, predict
from qadtr.recipes.dwq import RandomPrecision, random_inference


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m qadtr.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="model.pt (with model.json beside it) or its folder")
    p.add_argument("--data", default=None, help="dataset name (default: the one the checkpoint trained on)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--download", action="store_true", help="fetch the official dataset archive if missing")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--limit", type=int, default=0, help="evaluate a fixed pseudo-random subset of N images (0 = all)")
    p.add_argument("--json", default=None, help="also write the accuracies to this JSON file")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (cuda when torch sees a GPU, else cpu)")
    args = p.parse_args(argv)

    def body() -> None:
        check_count(args.limit, "--limit", zero="all images")
        device = resolve_device(args.device)
        if args.json:
            check_writable(args.json, "file", "--json")
        model, ck = load_checkpoint(args.checkpoint)  # loaded on the CPU (map_location), whichever device saved it
        model.to(device)
        data = args.data or (ck.train.data if ck.train is not None else "cifar10")
        info = datasets.DATASETS.get(data)  # None: load_split refuses the unknown name with the known ones
        if info is not None and info.num_classes != ck.model.num_classes:  # else accuracy reads 0.00%, no error
            raise QadtrError(f"--data {data} has {info.num_classes} classes but the checkpoint "
                             f"{ck.model.num_classes}; evaluate it on the dataset it was trained on (omit --data)")
        split = datasets.subset(datasets.load_split(data, args.split, args.data_dir, download=args.download), args.limit)
        images, labels = split.images, split.labels
        results = {}
        for form in (FORMS if ck.model.is_quant else ("deploy",)):
            acc = accuracy_per_bits(model, images, labels, form=form, progress=True, device=device)
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
        if random_inference(ck):  # DWQ: the checkpoint asks for a random precision per batch at inference
            p_ = Proportion(int((predict(RandomPrecision(model, seed=0), images, device=device) == labels).sum()),
                            len(labels))
            results["random"] = {"per_batch_of": 500, "seed": 0, **p_.to_dict()}
            print(f"{ck.model.arch} {'random deploy':15s} {data}/{args.split} top-1 {p_}  (a random precision "
                  f"per batch of 500, seed 0)")
        if args.json:
            write_json(args.json, results)
            print(f"wrote {args.json}")

    return run_cli("qadtr.evaluate", body, argv)


if __name__ == "__main__":
    sys.exit(main())
