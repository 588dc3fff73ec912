"""Build the model zoo that later stages (attacks, export, replay, defences) start from.

    python -m qadtr.zoo --data-dir ../shared/data --out zoo

Trains, in order, each entry of `PLAN` (skipping finished ones, resuming interrupted ones), then
writes `OUT/zoo.json` with each entry's test accuracy, epochs and wall time. Every ResNet-20 entry starts
from the float ResNet-20 weights in ../shared/models (via the fine-tuned float entry); the edge
architectures, which have no pretrained weights here, from a float model trained from scratch.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qadtr.models import ModelConfig
from qadtr.recipes.qadtr import QadtrConfig
from qadtr.train_config import TrainConfig

DEFAULT_FLOAT = "../shared/models/resnet20-cifar10-akamaster.th"


_DEF_BITS = ((2, 2), (4, 4), (5, 5), (8, 8))  # QADT-R's DBWT set


@dataclass(frozen=True)
class Entry:
    name: str  # folder under OUT
    cfg: TrainConfig  # `init` is filled in from `start`
    start: str  # "pretrained" (the float file), "scratch" (random init) or the name of an earlier entry


def _rn20(bits=(), **kw) -> ModelConfig:
    return ModelConfig("resnet20", bits=bits, **kw)


# Epochs and learning rates: the smallest budgets that reached the targets on this machine
# (a 4-bit epoch is ~5 min here); lower bit widths get more epochs because they move further.
PLAN = (
    Entry("resnet20_float", TrainConfig(_rn20(), recipe="float", epochs=8, lr=0.02), "pretrained"),
    Entry("resnet20_w8a8", TrainConfig(_rn20(((8, 8),)), epochs=2, lr=0.005), "resnet20_float"),
    Entry("resnet20_w4a4", TrainConfig(_rn20(((4, 4),)), epochs=4, lr=0.01), "resnet20_float"),
    # one bit width per step, in turn: each bit width gets one epoch of steps at a third of "all"'s cost
    Entry("resnet20_sw248", TrainConfig(_rn20(((2, 2), (4, 4), (8, 8)), per_bit_bn=True), epochs=3, lr=0.01,
                                        switch="cycle"), "resnet20_float"),
    Entry("resnet20_w2a2", TrainConfig(_rn20(((2, 2),)), epochs=3, lr=0.01), "resnet20_w4a4"),
    # Defences: one switchable model over QADT-R's bit widths {2, 4, 5, 8} per recipe, each
    # fine-tuned for the same one epoch (390 steps) from the float entry, so the recipes differ only
    # in their loss; QAT is the undefended baseline of the same shape. PBAT and DWQ cost ~3x a QAT
    # step (bench/defense_cost.py) and get the same steps, not the same wall time.
    *(Entry(f"resnet20_def_{r}", TrainConfig(_rn20(_DEF_BITS, per_bit_bn=True), recipe=r, epochs=1, lr=0.01,
                                             switch=sw), "resnet20_float")
      for r, sw in (("qat", "cycle"), ("dq", "cycle"), ("pbat", "cycle"), ("dwq", "all"), ("qadtr", "all"))),
    # QADT-R minus one component each (the ablation). Without DBWT every bit width trains every step
    # ("all", the static multi-precision alternative): 4x the forward passes of the full recipe, so the
    # ablation is conservative (more compute than QADT-R, not less).
    *(Entry(f"resnet20_abl_no_{c}", TrainConfig(_rn20(_DEF_BITS, per_bit_bn=True), recipe="qadtr", epochs=1,
                                                lr=0.01, recipe_config=QadtrConfig(**{c: False})), "resnet20_float")
      for c in ("aqapa", "dbwt", "gir")),
    # Edge architectures: no pretrained CIFAR weights here, so float from scratch first (width 0.5,
    # ~4 min an epoch on 2 cores; lr 0.1, the from-scratch CIFAR standard); the QAT entries start from it.
    Entry("mobilenetv2_float", TrainConfig(ModelConfig("mobilenetv2_cifar"), recipe="float", epochs=6, lr=0.1),
          "scratch"),
    # one switchable MobileNetV2 at 2/4/8 bits (as resnet20_sw248): a bit width per step in turn, so each gets
    # one epoch of steps of the three; 1170 steps at ~2.3 s on an idle 2-core host (~45 min; the recorded
    # 114 min include a loaded host and a pause)
    Entry("mobilenetv2_sw248", TrainConfig(ModelConfig("mobilenetv2_cifar", bits=((2, 2), (4, 4), (8, 8)),
                                                       per_bit_bn=True), epochs=3, lr=0.01, switch="cycle"),
          "mobilenetv2_float"),
    # GTSRB (43 signs, no flips): no pretrained weights for it, so a float ResNet-20 from scratch (signs are
    # easy: a few epochs at lr 0.1 converge), then one switchable 2/4/8-bit model from it, as resnet20_sw248
    Entry("gtsrb_resnet20_float", TrainConfig(_rn20(num_classes=43), data="gtsrb", recipe="float", epochs=4, lr=0.1),
          "scratch"),
    Entry("gtsrb_resnet20_sw248", TrainConfig(_rn20(((2, 2), (4, 4), (8, 8)), num_classes=43, per_bit_bn=True),
                                              data="gtsrb", epochs=3, lr=0.01, switch="cycle"),
          "gtsrb_resnet20_float"),
    # the edge architecture on GTSRB, as on CIFAR-10: float from scratch (GTSRB's 26,640 training signs, 306 steps
    # an epoch: ~7 min at the 1.3-1.4 s a step measured on one thread of a loaded host; 5 epochs at lr 0.1),
    # then one switchable 2/4/8-bit model from it (1.8-1.9 s a step with two threads, 2.7 with one; each epoch end
    # evaluates 3 bit widths on 12,630 images, ~20 min on one loaded thread)
    # the ResNet-18 layout for 32x32 inputs at width 1 (16-32-64-128 channels: about ResNet-20's multiply-adds,
    # so about its step time); no pretrained weights here, so float from scratch as the MobileNetV2 (lr 0.1,
    # 5 epochs: 13 min), then one switchable 2/4/8-bit model from it, as resnet20_sw248 (1170 steps at ~1 s on one
    # thread beside another training job: 25 min)
    Entry("resnet18_float", TrainConfig(ModelConfig("resnet18_cifar"), recipe="float", epochs=5, lr=0.1), "scratch"),
    Entry("resnet18_sw248", TrainConfig(ModelConfig("resnet18_cifar", bits=((2, 2), (4, 4), (8, 8)),
                                                    per_bit_bn=True), epochs=3, lr=0.01, switch="cycle"),
          "resnet18_float"),
    Entry("gtsrb_mobilenetv2_float", TrainConfig(ModelConfig("mobilenetv2_cifar", num_classes=43), data="gtsrb",
                                                 recipe="float", epochs=5, lr=0.1), "scratch"),
    Entry("gtsrb_mobilenetv2_sw248", TrainConfig(ModelConfig("mobilenetv2_cifar", bits=((2, 2), (4, 4), (8, 8)),
                                                             num_classes=43, per_bit_bn=True),
                                                 data="gtsrb", epochs=3, lr=0.01, switch="cycle"),
          "gtsrb_mobilenetv2_float"),
)


def build(out: Path, *, data_dir: str | None, pretrained: str, only: list[str] | None = None) -> dict:
    import dataclasses

    from qadtr._config import read_json
    from qadtr._errors import QadtrError
    from qadtr._trainer import train

    out.mkdir(parents=True, exist_ok=True)
    summary = read_json(out / "zoo.json") if (out / "zoo.json").is_file() else {}
    for e in PLAN:
        if only and e.name not in only:
            continue
        run = out / e.name
        if (run / "model.pt").is_file():
            print(f"{e.name}: done, skipping")
            if e.name not in summary:  # trained elsewhere (python -m qadtr.train) and moved in: record it
                summary = _record(out, e.name, _summary(e, run, wall_s=None))
            continue
        cfg = e.cfg if e.start == "scratch" else dataclasses.replace(e.cfg, init=_start(e, out, pretrained))
        t = time.perf_counter()
        train(cfg, run, data_dir=data_dir, resume=(run / "last.pt").is_file())
        summary = _record(out, e.name, _summary(e, run, wall_s=round(time.perf_counter() - t)))
        (run / "last.pt").unlink(missing_ok=True)  # resume state: optimizer moments, not needed once done
    return summary


def _start(e: Entry, out: Path, pretrained: str) -> str:
    """The weights entry `e` starts from: the pretrained float file or an earlier entry's model.pt."""
    from qadtr._errors import QadtrError

    init = pretrained if e.start == "pretrained" else str(out / e.start / "model.pt")
    if not Path(init).is_file():
        raise QadtrError(f"{e.name} starts from {init}, which does not exist; build {e.start} first")
    return init


def _record(out: Path, name: str, entry: dict) -> dict:
    """Add one entry to OUT/zoo.json, re-read just before writing: two builds (--only) can run side by side."""
    from qadtr._config import read_json, write_json

    path = out / "zoo.json"
    summary = read_json(path) if path.is_file() else {}
    summary[name] = entry
    write_json(path, summary)
    return summary


def _summary(e: Entry, run: Path, *, wall_s: int | None) -> dict:
    """zoo.json's record of a finished entry, checked against the PLAN so a moved-in run is the planned one."""
    from qadtr._config import config_to_dict, read_json
    from qadtr._errors import QadtrError

    ck = read_json(run / "model.json")["_data"]
    planned = {k: v for k, v in config_to_dict(e.cfg)["_data"].items() if k != "init"}
    trained = {k: v for k, v in ck["train"]["_data"].items() if k != "init"}
    if planned != trained:
        diff = sorted(k for k in planned if planned[k] != trained.get(k))
        raise QadtrError(f"{run} was trained with other settings than zoo entry {e.name} ({', '.join(diff)}); "
                         "retrain it with python -m qadtr.zoo --only " + e.name)
    return {"test_acc": ck["metrics"]["test_acc"], "test_acc_trained": ck["metrics"].get("test_acc_trained", {}),
            "epochs": e.cfg.epochs, "lr": e.cfg.lr, "start": e.start, "wall_s_last_session": wall_s,
            "history": read_json(run / "history.json")}


def report(out: Path) -> str:
    """The README's zoo table (Markdown) from OUT/zoo.json."""
    from qadtr._config import read_json
    from qadtr._errors import QadtrError

    path = out / "zoo.json"
    if not path.is_file():
        raise QadtrError(f"{path} not found; build the zoo first: python -m qadtr.zoo --out {out}")
    rows = ["| checkpoint | bits | top-1, deployable (BN folded) | top-1, as trained | epochs | start | wall time |",
            "|---|---|---|---|---|---|---|"]
    summary = read_json(path)
    order = [e.name for e in PLAN if e.name in summary] + sorted(set(summary) - {e.name for e in PLAN})
    for name, s in ((n, summary[n]) for n in order):  # the plan's order, not zoo.json's sorted keys
        trained = read_json(out / name / "model.json")["_data"]["metrics"].get("test_acc_trained", {})
        minutes = s["history"][-1]["elapsed_s"] / 60 if s["history"] else 0.0  # cumulative at the last epoch
        for key, acc in s["test_acc"].items():
            lo, hi = acc["ci95"]
            t = trained.get(key)
            t_text = f"{100 * t['value']:.2f}%" if t else "n/a (float)"
            rows.append(f"| {name} | {key} | {100 * acc['value']:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}] | {t_text} "
                        f"| {s['epochs']} | {s['start']} | {minutes:.0f} min |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser, DATA_DIR_HELP, check_writable, run_cli
    from qadtr._errors import QadtrError

    p = ArgumentParser(prog="python -m qadtr.zoo", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--out", default=None, help="the folder to build the zoo in (required; --report reads it, "
                                               "default zoo)")
    p.add_argument("--pretrained", default=DEFAULT_FLOAT, help="float ResNet-20 weights to start from")
    p.add_argument("--only", default="", help="comma-separated entry names (default: all)")
    p.add_argument("--report", action="store_true", help="print the Markdown table of OUT/zoo.json and exit")
    args = p.parse_args(argv)

    def body() -> None:
        if args.report:
            print(report(Path(args.out or "zoo")))
            return
        if args.out is None:  # the committed zoo is the source tree's: never a default target
            raise QadtrError("--out is required: the folder to build the zoo in (e.g. --out runs/zoo; --out zoo "
                             "rebuilds the committed one)")
        only = [s for s in args.only.split(",") if s]
        unknown = sorted(set(only) - {e.name for e in PLAN})
        if unknown:  # else nothing would be built and the run would still pass
            raise QadtrError(f"--only {','.join(unknown)}: not zoo entries; choose from "
                             f"{', '.join(e.name for e in PLAN)}")
        check_writable(args.out, "folder")
        summary = build(Path(args.out), data_dir=args.data_dir, pretrained=args.pretrained, only=only or None)
        for name, s in summary.items():
            accs = ", ".join(f"{k} {100 * v['value']:.2f}%" for k, v in s["test_acc"].items())
            print(f"{name:16s} {accs}  ({s['epochs']} epochs)")
        print(f"wrote {len(summary)} zoo entries under {args.out} (table: {Path(args.out) / 'zoo.json'})")

    return run_cli("qadtr.zoo", body, argv)


if __name__ == "__main__":
    sys.exit(main())
