"""Attack strength check: targeted universal patches for many target classes, with and without rotation/scale EOT.

    python -m eval.strength --checkpoints zoo/resnet20_float zoo/resnet20_w8a8 --targets 0-9 \\
        --eot plain,rotscale --data-dir ../shared/data --out results/strength

No defence can be judged with a weak attack. For every (checkpoint, bit width, EOT variant, target) this
optimises one white-box universal patch (`qadtr.attacks.universal_patch`) on the training set and
measures its targeted ASR on a fixed test subset at seeded placements drawn from the same EOT ranges.
EOT variants:
    plain     random location, no rotation, no scaling (the issue's bar: >= 75% for some target)
    rotscale  random location, rotation in [-22.5, 22.5] degrees (Brown et al.'s range), side scale
              in [0.9, 1.1] (area 81-121% of the nominal size, 100% on average)
Writes OUT/strength.json (rows + the command), OUT/strength.csv, OUT/strength.md (a table) and every
patch file under OUT/patches/. Resumable: a (checkpoint, bits, eot, target, steps) whose row exists is skipped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qadtr._errors import QadtrError
from qadtr.progress import progress
from qadtr.bits import bits_name

EOT_VARIANTS = {
    "plain": dict(),
    "rotscale": dict(max_angle=22.5, scale=(0.9, 1.1)),  # Brown et al. 2017 rotate by up to 22.5 degrees
}


def parse_targets(text: str) -> list[int]:
    """'0-9' or '0,3,5' -> class indices."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise QadtrError(f"--targets {text!r}: write class indices like 0-9 or 0,3,5") from None
    return out


def _name(path: str) -> str:
    return Path(path).parent.name if Path(path).suffix == ".pt" else Path(path).name


def _row_key(r: dict) -> tuple:
    return r["checkpoint"], r["bits"], r["eot"], r["target"], r["steps"]


def run(*, checkpoints: Sequence[str | Path], out: str | Path, targets: str = "0-9", eot: str = "plain,rotscale",
        size: float = 0.1, steps: int = 500, batch_size: int = 64, optimizer: str = "sign", lr: float = 0.01,
        schedule: str = "cosine", eval_subset: int = 2000, eval_seed: int = 1, seed: int = 0,
        data_dir: str | Path | None = None) -> list[dict]:
    """The sweep over `checkpoints` (every bit width) x the EOT variants `eot` x the classes `targets` (as
    --targets writes them); rows already in OUT/strength.json are kept, not redone. Returns every row."""
    from qadtr._config import read_json, write_json
    from qadtr.checkpoint import load_checkpoint

    configs = _configs(targets, eot, size=size, steps=steps, batch_size=batch_size, optimizer=optimizer, lr=lr,
                       schedule=schedule, seed=seed)
    out = Path(out)
    result_path = out / "strength.json"
    rows = read_json(result_path)["rows"] if result_path.is_file() else []
    done = {_row_key(r) for r in rows}
    models = [(path, *load_checkpoint(path)) for path in checkpoints]  # fail early on a bad path
    jobs = _jobs(models, configs, done)
    print(f"{len(rows)} row(s) already in {result_path}; {len(jobs)} patch(es) to make")
    split = None  # (dataset, train, test, eval indices), loaded at the first job
    nets: dict = {}
    for job in progress(jobs, desc="strength", unit="patch"):
        if split is None:
            split = _load_split(job[2], data_dir, eval_subset=eval_subset)
        rows.append(_one_patch(job, split, out, nets=nets, eval_seed=eval_seed))
        if result_path.is_file():  # another sweep may write here concurrently: keep its rows too
            mine = {_row_key(r) for r in rows}
            rows += [r for r in read_json(result_path)["rows"] if _row_key(r) not in mine]
        write_json(result_path, {"argv": sys.argv, "rows": rows})  # after every patch: nothing is lost
    return rows


def _configs(targets: str, eot: str, *, size: float, steps: int, batch_size: int, optimizer: str, lr: float,
             schedule: str, seed: int) -> dict:
    """(EOT variant, target) -> the universal patch config, for the --eot and --targets flags."""
    from qadtr.attacks import EOTConfig, UniversalConfig

    classes = parse_targets(targets)
    variants = [v.strip() for v in eot.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(EOT_VARIANTS))
    if unknown:
        raise QadtrError(f"--eot {unknown}: choose from {sorted(EOT_VARIANTS)}")
    try:
        return {(v, t): UniversalConfig(size=size, target=t, steps=steps, batch_size=batch_size,
                                        optimizer=optimizer, lr=lr, schedule=schedule,
                                        eot=EOTConfig(**EOT_VARIANTS[v]), seed=seed)
                for v in variants for t in classes}
    except ValueError as e:
        raise QadtrError(str(e)) from None


def _jobs(models: list[tuple], configs: dict, done: set) -> list[tuple]:
    """(path, model, ck, bits, key, variant, config) of every patch whose row is not in `done`."""
    from qadtr.models import bits_of

    jobs = []
    for path, model, ck in models:
        have = bits_of(model) or [None]
        for bits in have:
            key = bits_name(bits)
            for (v, t), cfg in configs.items():
                if (_name(path), key, v, t, cfg.steps) not in done:
                    jobs.append((path, model, ck, bits, key, v, cfg))
    return jobs


def _load_split(ck, data_dir: str | Path | None, *, eval_subset: int) -> tuple:
    """The checkpoint's dataset, its train and test splits, and the test subset ASR is measured on."""
    from qadtr.data import load_split, subset_indices

    data = ck.train.data if ck.train is not None else "cifar10"
    train, test = load_split(data, "train", data_dir), load_split(data, "test", data_dir)
    return data, train, test, subset_indices(len(test.labels), eval_subset, seed=1)


def _one_patch(job: tuple, split: tuple, out: Path, *, nets: dict, eval_seed: int) -> dict:
    """Makes, saves and measures one job's patch; its row. `nets` caches clean predictions per network."""
    from qadtr.attacks import evaluate_patch, patch_name, save_patch, universal_patch
    from qadtr.models import deploy_net
    from qadtr.predict import predict

    path, model, ck, bits, key, v, cfg = job
    data, train, test, idx = split
    if cfg.target >= ck.model.num_classes:
        raise QadtrError(f"--targets: {path} has {ck.model.num_classes} classes (0..{ck.model.num_classes - 1})")
    net = model if bits is None else deploy_net(model, *bits)
    if (path, key) not in nets:
        nets[(path, key)] = predict(net, test.images[idx])
    start = time.perf_counter()
    patch = universal_patch(net, train.images, train.labels, cfg=cfg)
    seconds = time.perf_counter() - start
    patch = patch.with_source(model_sha256=ck.sha256, bits=() if bits is None else (bits,), data=f"{data}/train")
    name = _name(path)
    file = save_patch(patch, out / "patches" / name / v / patch_name(patch))
    asr = evaluate_patch(net, patch, test.images[idx], labels=test.labels[idx], seed=eval_seed,
                         clean_pred=nets[(path, key)])
    row = {"checkpoint": name, "bits": key, "eot": v, "eot_ranges": EOT_VARIANTS[v], "target": cfg.target,
           "size": cfg.size, "side": patch.side, "steps": cfg.steps, "optimizer": cfg.optimizer,
           "lr": cfg.lr, "schedule": cfg.schedule, "seconds": round(seconds, 1),
           "patch": str(file.relative_to(out)), "eval_images": len(idx), "eval_seed": eval_seed,
           "asr": asr.rate.to_dict(), "definition": asr.definition}
    print(f"{name} {key} {v} target {cfg.target}: {asr.rate} ({seconds:.0f} s)", flush=True)
    return row


def write_tables(rows: list[dict], out: Path) -> None:
    import csv

    rows = sorted(rows, key=lambda r: (r["checkpoint"], r["bits"], r["eot"], r["target"], r["steps"]))
    with open(out / "strength.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "bits", "eot", "target", "size", "side", "steps", "asr", "k", "n", "ci95_lo",
                    "ci95_hi", "seconds"])
        for r in rows:
            a = r["asr"]
            w.writerow([r["checkpoint"], r["bits"], r["eot"], r["target"], r["size"], r["side"], r["steps"],
                        f"{a['value']:.4f}", a["k"], a["n"], f"{a['ci95'][0]:.4f}", f"{a['ci95'][1]:.4f}", r["seconds"]])
    lines = ["| checkpoint | bits | EOT | target | targeted ASR [95% CI] | n | steps |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["asr"]
        lines.append(f"| {r['checkpoint']} | {r['bits']} | {r['eot']} | {r['target']} | {100 * a['value']:.2f}% "
                     f"[{100 * a['ci95'][0]:.1f}, {100 * a['ci95'][1]:.1f}] | {a['n']} | {r['steps']} |")
    (out / "strength.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.strength", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints (model.pt or folders); every bit width")
    p.add_argument("--targets", default="0-9", help="target classes: 0-9 or 0,3,5")
    p.add_argument("--eot", default="plain,rotscale", help=f"EOT variants: {','.join(EOT_VARIANTS)}")
    p.add_argument("--size", type=float, default=0.1, help="patch area fraction")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="sign", help="sign | adam")
    p.add_argument("--lr", type=float, default=0.01, help="sign: pixel step; adam: ~0.1")
    p.add_argument("--schedule", default="cosine", help="cosine | constant")
    p.add_argument("--eval-subset", type=int, default=2000, help="test images the ASR is measured on (0 = all)")
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--out", required=True, help="results folder (resumable)")
    args = p.parse_args(argv)

    def body() -> None:
        check_writable(args.out, "folder")  # before the attacks: their rows were lost to a bad --out
        rows = run(checkpoints=args.checkpoints, out=args.out, targets=args.targets, eot=args.eot, size=args.size,
                   steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                   schedule=args.schedule, eval_subset=args.eval_subset, eval_seed=args.eval_seed,
                   seed=args.seed, data_dir=args.data_dir)
        write_tables(rows, Path(args.out))
        print(f"wrote {Path(args.out) / 'strength.json'}, strength.csv, strength.md ({len(rows)} rows)")

    return run_cli("eval.strength", body, argv)


if __name__ == "__main__":
    sys.exit(main())
