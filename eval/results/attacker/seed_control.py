"""Print the seed control's tables (Markdown) from eval/results/attacker/seed_control/results.sqlite.

Per model and runtime: each patch's targeted ASR on the 1,786 replayed test images not of class 3 (Wilson 95% CI),
then paired differences on those same images (Tango score 95% CI, qadtr._stats.PairedDifference): each (d) patch
and each other fake-quant seed minus the fake-quant 500-step seed-0 patch, which shares (d)'s init, minibatches
and placements and differs from it only in the forward it was optimised through.
Run from the repository root: python eval/results/attacker/seed_control.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.replay import load_replay
from eval.store import Store
from qadtr._stats import PairedDifference, Proportion

STORE = Path("eval/results/attacker/seed_control/results.sqlite")
BASE = "fakequant500_seed0.npz"  # the patch every other one is paired against


def _pp(d: PairedDifference) -> str:
    lo, hi = d.ci95
    return f"{100 * d.value:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _hits(replay, pred: np.ndarray) -> dict[str, np.ndarray]:
    """patch file -> (n,) bool: the patched image is read as the target (images of the target class left out)."""
    out = {}
    for ref in replay.info.patches:
        rows = slice(ref.first, ref.first + ref.n)
        keep = replay.labels[rows] != ref.target
        out[ref.file] = (pred[rows] == ref.target)[keep]
    return out


def main() -> None:
    lines = ["| model | runtime | patch | ASR | minus fake-quant 500 steps seed 0, paired |", "|---|---|---|---|---|"]
    with Store(STORE, readonly=True) as store:
        for run in store.runs():
            if not run.complete or run.runtime == "fakequant":
                continue
            replay = load_replay(run.replay, sha256=run.replay_sha256)
            hits = _hits(replay, store.preds(run.run_id))
            model = Path(run.artifact).stem
            for name, h in sorted(hits.items()):
                asr = Proportion(int(h.sum()), len(h))
                base = hits[BASE]
                diff = "" if name == BASE else _pp(PairedDifference(b=int((h & ~base).sum()),
                                                                    c=int((base & ~h).sum()), n=len(h)))
                lines.append(f"| {model} | {run.runtime} | {Path(name).stem} | {asr} | {diff} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
