"""What a query attack returns, and the one loop driver (checkpoints, progress) both attacks run under.

`QueryOutcome.asr` is `qadtr.attacks.attack_success` of the clean and final predictions (the definitions every
replay uses); `queries_to_success` counts, per image, the queries spent when it was first fooled, its clean
query included; `trace` holds (iteration, queries spent on all images, images fooled) after every iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from eval.query._state import save_state
from qadtr.attacks import ASR, attack_success
from qadtr.progress import progress as progress_bar

QUANTILES = (0.25, 0.5, 0.75, 0.9)  # of queries-to-success over the fooled images


@dataclass(frozen=True, eq=False)
class QueryOutcome:
    patches: np.ndarray  # (3, s, s) universal or (N, 3, s, s) per-image, uint8
    xy: np.ndarray  # (N, 2) int32 top-left corners (column, row)
    clean_pred: np.ndarray  # (N,) int64 top-1 on the clean images (the first query of each)
    adv_pred: np.ndarray  # (N,) int64 top-1 with the final patch (the clean one where not attacked)
    eligible: np.ndarray  # (N,) bool: counted by the ASR definition, hence attacked
    queries: np.ndarray  # (N,) int64 queries spent per image (clean query included)
    first_success: np.ndarray  # (N,) int64 queries spent when first fooled; -1 never
    trace: np.ndarray  # (T, 3) int64 (iteration, queries so far over all images, images fooled)
    target: int | None
    budget: int
    extra: dict  # attack-specific arrays, e.g. the decision attack's visible patch pixels

    @property
    def universal(self) -> bool:
        return self.patches.ndim == 3

    def asr(self, labels: np.ndarray) -> ASR:
        return attack_success(self.clean_pred, self.adv_pred, labels, target=self.target)

    def query_stats(self) -> dict:
        """Queries-to-success quantiles over the fooled images, and the queries spent in all."""
        hit = self.first_success[self.eligible & (self.first_success >= 0)]
        q = {f"p{round(100 * p)}": (float(np.quantile(hit, p)) if len(hit) else None) for p in QUANTILES}
        return {"to_success": q, "to_success_mean": float(hit.mean()) if len(hit) else None, "fooled": int(len(hit)),
                "spent_total": int(self.queries.sum()), "spent_max_per_image": int(self.queries.max(initial=0)),
                "counting": "queries per image, its one clean query included; a universal iteration queries every "
                            "attacked image once"}


def drive(step: Callable[[int], bool], *, start: int, n_iter: int, snapshot: Callable[[int], tuple[dict, dict]],
          state_path: str | Path | None, save_every: int, progress: bool, desc: str) -> int:
    """Run `step(it)` for it = start .. n_iter - 1 until it returns False (nothing left to attack: it ran no
    iteration); every `save_every` iterations and at the end, write `snapshot(it)` (arrays, meta) to
    `state_path`. Returns the iterations done."""
    it = start
    bar = progress_bar(total=n_iter, initial=start, desc=desc, unit="iter", enabled=progress)
    try:
        while it < n_iter and step(it):
            it += 1
            bar.update(1)
            if state_path is not None and it % save_every == 0:
                save_state(state_path, *snapshot(it))
    finally:
        bar.close()
    if state_path is not None:
        save_state(state_path, *snapshot(it))  # the final state: a --resume of a finished run does nothing
    return it
