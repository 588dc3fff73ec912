"""Patch transfer across bit widths: `python -m eval.transfer --patches DIR --checkpoints zoo/a zoo/b --out results/transfer`.

Every patch file in DIR and its sub-folders (made on some source model and bit width) is evaluated on every target
(checkpoint, bit width), through `deploy_net` for quantized targets. A universal patch is placed at
the same seeded placements on every target, and a per-image patch at its own, so each target sees
identical patched bytes. Writes OUT/transfer.json, OUT/transfer.csv and one heatmap per
(attack, size, target class): OUT/heatmap_<attack>_s<size>_<target>.png (rows: source, columns: target).
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from qadtr.progress import progress as progress_bar
from qadtr.bits import bits_name, bits_names


def _targets(checkpoints: list[str]):
    """[(label, net, checkpoint sha256, data)] for every bit width of every checkpoint."""
    from qadtr.checkpoint import load_checkpoint
    from qadtr.models import bits_of, deploy_net

    out = []
    for path in checkpoints:
        model, ck = load_checkpoint(path)
        name = Path(path).parent.name if Path(path).suffix == ".pt" else Path(path).name
        data = ck.train.data if ck.train is not None else "cifar10"
        bits = bits_of(model)
        if not bits:
            out.append((f"{name}:float", model, ck.sha256, data))
        for w, a in bits:
            out.append((f"{name}:{bits_name((w, a))}", deploy_net(model, w, a), ck.sha256, data))
    return out


def _source_label(patch, names_by_sha: dict[str, str]) -> str:
    bits = bits_names(patch.bits)
    return f"{names_by_sha.get(patch.model_sha256, patch.model_sha256[:8] or '?')}:{bits}"


def transfer(patch_dir: str | Path, checkpoints: list[str], *, data_dir: str | None, eval_subset: int,
             eval_seed: int, progress: bool = False) -> list[dict]:
    """One row per (patch, evaluated-on model): attack, size, target class, source and the ASR."""
    from qadtr._errors import QadtrError
    from qadtr.data import subset_indices
    from qadtr.attacks import evaluate_patch, load_patch
    from qadtr.data import load_split
    from qadtr.predict import predict

    files = sorted(Path(patch_dir).rglob("*.npz"))  # sub-folders too (eval.strength writes per model)
    if not files:
        raise QadtrError(f"no patch files (*.npz) in {patch_dir}; make some with `python -m qadtr.attack`")
    patches = [(f, load_patch(f)) for f in files]
    targets = _targets(checkpoints)
    names_by_sha = {sha: label.split(":")[0] for label, _, sha, _ in targets}
    datasets = {d for *_, d in targets}
    if len(datasets) != 1:
        raise QadtrError(f"the checkpoints were trained on different datasets {sorted(datasets)}; compare one at a time")
    data = datasets.pop()
    test = load_split(data, "test", data_dir)
    subset_idx = subset_indices(len(test.labels), eval_subset, seed=1)
    clean_cache: dict[tuple[str, str], np.ndarray] = {}
    rows = []
    for (path, patch), (label, net, _, _) in progress_bar([(p, t) for p in patches for t in targets],
                                                          enabled=progress, desc="transfer", unit="pair"):
        if patch.per_image:
            if patch.data != f"{data}/test":
                raise QadtrError(f"{path.name} was made on {patch.data}, not {data}/test; re-run the attack on {data}")
            idx, key = patch.indices, path.name
        else:
            idx, key = subset_idx, "subset"
        if (label, key) not in clean_cache:
            clean_cache[(label, key)] = predict(net, test.images[idx])
        asr = evaluate_patch(net, patch, test.images[idx], labels=test.labels[idx], seed=eval_seed,
                             clean_pred=clean_cache[(label, key)])
        rows.append({"patch": str(path.relative_to(patch_dir)), "attack": patch.attack, "size": patch.size, "side": patch.side,
                     "target_class": patch.target, "source": _source_label(patch, names_by_sha),
                     "evaluated_on": label, "eval_seed": eval_seed, "asr": asr.rate.to_dict(),
                     "definition": asr.definition})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patch", "attack", "size", "side", "target_class", "source", "evaluated_on", "asr", "k", "n",
                    "ci95_lo", "ci95_hi", "definition"])
        for r in rows:
            a = r["asr"]
            w.writerow([r["patch"], r["attack"], r["size"], r["side"], "" if r["target_class"] is None else r["target_class"],
                        r["source"], r["evaluated_on"], f"{a['value']:.4f}", a["k"], a["n"], f"{a['ci95'][0]:.4f}",
                        f"{a['ci95'][1]:.4f}", r["definition"]])


def write_heatmaps(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for r in rows:
        groups[(r["attack"], r["size"], r["target_class"])].append(r)
    written = []
    for (attack, size, tclass), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        sources = sorted({r["source"] for r in group})
        targets = sorted({r["evaluated_on"] for r in group})
        cells = defaultdict(list)  # several patches with the same source (e.g. seeds): their mean
        for r in group:
            cells[sources.index(r["source"]), targets.index(r["evaluated_on"])].append(r["asr"]["value"])
        grid = np.full((len(sources), len(targets)), np.nan)  # (sources, targets)
        for (i, j), values in cells.items():
            grid[i, j] = float(np.mean(values))
        fig, ax = plt.subplots(figsize=(4.0 + 1.2 * len(targets), 2.8 + 0.5 * len(sources)))
        im = ax.imshow(100 * grid, vmin=0, vmax=100, cmap="viridis")
        for i in range(len(sources)):
            for j in range(len(targets)):
                ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center",
                        color="white" if grid[i, j] < 0.6 else "black")
        ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
        ax.set_yticks(range(len(sources)), sources)
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("patch made on")
        kind = "untargeted" if tclass is None else f"target {tclass}"
        ax.set_title(f"{attack}, {size:.0%} patch, {kind}: ASR %", fontsize=10)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = out / f"heatmap_{attack}_s{round(100 * size):02d}_{'untargeted' if tclass is None else f't{tclass}'}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import DATA_DIR_HELP, check_writable, run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.transfer", description=__doc__.split("\n")[0])
    p.add_argument("--patches", required=True, help="folder of patch files (*.npz) from qadtr.attack")
    p.add_argument("--checkpoints", nargs="+", required=True, help="target checkpoints (model.pt or folders)")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--eval-subset", type=int, default=2000, help="test images for universal patches (0 = all)")
    p.add_argument("--eval-seed", type=int, default=1, help="seed of the evaluation placements")
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr._config import write_json

        check_writable(args.out, "folder")  # before the matrix is measured, not at its first write
        rows = transfer(args.patches, args.checkpoints, data_dir=args.data_dir, eval_subset=args.eval_subset,
                        eval_seed=args.eval_seed, progress=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "transfer.json", {"argv": sys.argv, "rows": rows})
        write_csv(rows, out / "transfer.csv")
        maps = write_heatmaps(rows, out)
        for r in rows:
            a = r["asr"]
            print(f"{r['patch']:40s} -> {r['evaluated_on']:28s} ASR {100 * a['value']:6.2f}% "
                  f"[{100 * a['ci95'][0]:.2f}, {100 * a['ci95'][1]:.2f}] (n={a['n']})")
        print(f"wrote {out / 'transfer.json'}, transfer.csv and {len(maps)} heatmap(s)")

    return run_cli("eval.transfer", body, argv)


if __name__ == "__main__":
    sys.exit(main())
