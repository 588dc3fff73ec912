"""Train a float or quantized model: `python -m qadtr.train --model resnet20 --bits 4 --epochs 3 --out runs/w4`.

Runs are resumable (`--resume` continues from `OUT/last.pt`, replaying exactly the batches an
uninterrupted run sees) and end with OUT/model.pt + OUT/model.json (config, versions, sha256, metrics).
Several processes: `torchrun --nproc_per_node N -m qadtr.train ...` (see README, "Training on GPUs and
several processes").
"""

from __future__ import annotations

import sys

from qadtr._cli import ArgumentParser, DATA_DIR_HELP, check_writable, run_cli
from qadtr._distributed import is_main_process
from qadtr._errors import QadtrError
from qadtr._trainer import train
from qadtr.bits import parse_bits
from qadtr.data import DATASETS
from qadtr.models import SUPPORTED_BITS, ModelConfig, list_models
from qadtr.recipes import recipe_config
from qadtr.train_config import SWITCH_MODES, TrainConfig

__all__ = ["SWITCH_MODES", "TrainConfig", "main", "parse_bits", "train"]  # the CLI's library, re-exported


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m qadtr.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20", help=f"architecture: {', '.join(list_models())}")
    p.add_argument("--bits", default="", help=f"bit widths, w=a from {SUPPORTED_BITS}: '4', '2,4,8' "
                   "(one switchable model) or 'w4a8'; omit for float")
    p.add_argument("--recipe", default=None, help="float | qat | dq | pbat | dwq | qadtr (default: float without "
                   "--bits, qat with); see qadtr/recipes/")
    p.add_argument("--recipe-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the recipe's config, repeatable: e.g. --recipe-arg beta=3e-4 "
                   "(the fields of DqConfig, PbatConfig, DwqConfig, QadtrConfig)")
    p.add_argument("--per-bit-bn", action="store_true", help="separate BatchNorm per bit width")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--download", action="store_true", help="fetch the official dataset archive if missing")
    p.add_argument("--num-classes", type=int, default=None, help="default: the dataset's")
    p.add_argument("--init", default="", help="start from these weights (.th or model.pt)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch: under torchrun each of the N "
                   "processes takes batch-size / N images of it (a multiple of N)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--switch", default="all", choices=SWITCH_MODES)
    p.add_argument("--train-subset", type=int, default=0, help="train on the first N images (0 = all)")
    p.add_argument("--eval-subset", type=int, default=0, help="evaluate on the first N test images (0 = all)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--out", required=True, help="run folder: model.pt, model.json, last.pt, history.json")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (cuda when torch sees a GPU, else cpu); "
                   "under torchrun each process takes GPU LOCAL_RANK")
    args = p.parse_args(argv)

    def body() -> None:
        if args.seed < 0:  # numpy's generators refuse it, after the data has loaded
            raise QadtrError(f"--seed {args.seed}: must be >= 0")
        try:
            bits = parse_bits(args.bits)
            # an unknown --data gets 10 here; TrainConfig then refuses it by name
            default_classes = DATASETS[args.data].num_classes if args.data in DATASETS else 10
            num_classes = default_classes if args.num_classes is None else args.num_classes  # 0: refused, not 10
            recipe = args.recipe or ("qat" if bits else "float")
            cfg = TrainConfig(
                model=ModelConfig(args.model, num_classes=num_classes, bits=bits, per_bit_bn=args.per_bit_bn),
                recipe=recipe, data=args.data, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                init=args.init, switch=args.switch, train_subset=args.train_subset,
                eval_subset=args.eval_subset, save_every=args.save_every, device=args.device,
                recipe_config=recipe_config(recipe, args.recipe_arg))
        except ValueError as e:
            raise QadtrError(str(e)) from None
        check_writable(args.out, "folder")  # before training: a read-only --out would lose the trained model
        pt = train(cfg, args.out, data_dir=args.data_dir, resume=args.resume, download=args.download)
        if is_main_process():  # under torchrun: rank 0 wrote it
            print(f"wrote {pt} (+ {pt.with_suffix('.json').name})")

    return run_cli("qadtr.train", body, argv)


if __name__ == "__main__":
    sys.exit(main())
