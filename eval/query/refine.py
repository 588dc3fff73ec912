"""Transfer-then-refine: start the query attack from a white-box fake-quant patch file and refine it on the
deployed artifact.

    start = start_from_patch(load_patch("w4a4_universal_s10_t3.npz"), n, (32, 32), eval_seed=1)
    out = sparse_rs(runner, images, labels, cfg=SparseRSConfig(size=patch.size, target=3, universal=True), start=start)
    milestones(out, reference=reference_asr(fq_runner, images, labels, start=start, target=3))

The start is the replay's own bytes: the patch's values on the uint8 grid (rint(v * 255) in float32, as
`qadtr.attacks.rebuild` rounds them) at `qadtr.attacks.eval_placements(patch, n, hw, seed=eval_seed)`, the
placements eval.transfer and every replay use, so the refine's first query is the replayed ASR (trace row 0).
"""

from __future__ import annotations

import numpy as np

from eval.query._oracle import Oracle
from eval.query._outcome import QueryOutcome
from eval.query._search import paste
from eval.query.sparse_rs import Start
from qadtr._errors import QadtrError
from qadtr.attacks import ASR, Patch, attack_success, eval_placements


def start_from_patch(patch: Patch, n: int, hw: tuple[int, int], *, eval_seed: int) -> Start:
    """A universal patch file's uint8 values at its seeded evaluation placements on n images of size hw."""
    if patch.per_image:
        raise QadtrError("refine starts from a universal patch (one patch, seeded placements); this file holds "
                         "per-image patches: pass a universal one, e.g. eval/results/transfer/patches/*_universal_*")
    placement = eval_placements(patch, n, hw, seed=eval_seed)
    if (placement.angle != 0).any() or (placement.scale != 1).any() or (placement.brightness != 1).any():
        raise QadtrError(f"the patch's EOT ranges rotate, scale or brighten it ({patch.eot}); the query attack moves "
                         "an axis-aligned square: refine a patch made with max_angle=0, scale=(1, 1), brightness=(1, 1)")
    values = np.rint(patch.values.astype(np.float32) * np.float32(255)).astype(np.uint8)  # (3, s, s): rebuild's bytes
    return Start(values, np.stack([placement.x, placement.y], axis=1).astype(np.int32))


def reference_asr(runner, images: np.ndarray, labels: np.ndarray, *, start: Start, target: int | None) -> ASR:
    """The start patch's ASR on another runner (the fake-quant reference) on the very same bytes."""
    oracle = Oracle(runner, n_images=len(images), budget=2, batch=256)
    clean = oracle.logits(images, np.arange(len(images))).argmax(axis=1)
    oracle.check_target(target)
    adv = oracle.logits(paste(images, start.patches, start.xy), np.arange(len(images))).argmax(axis=1)
    return attack_success(clean, adv, labels, target=target)


def milestones(out: QueryOutcome, *, reference: ASR | None) -> dict:
    """Queries per attacked image to exceed the replayed ASR (the start's, trace row 0) and to reach the
    reference's (e.g. the fake-quant model's) ASR; None where the budget ran out first."""
    n = int(out.eligible.sum())
    rate = out.trace[:, 2] / max(n, 1)  # (T,) ASR after each iteration
    queries = out.trace[:, 0] + 2  # a universal iteration costs one query per attacked image, after clean + start

    def first(mask: np.ndarray) -> int | None:
        hit = np.flatnonzero(mask)
        return int(queries[hit[0]]) if len(hit) else None

    ref = None if reference is None else reference.rate.value
    return {"replayed_asr": float(rate[0]), "final_asr": float(rate[-1]), "reference_asr": ref,
            "queries_to_exceed_replayed": first(out.trace[:, 2] > out.trace[0, 2]),
            "queries_to_reference": None if ref is None else first(rate >= ref),
            "asr_by_queries": [[int(q), float(r)] for q, r in zip(queries, rate)][:: max(1, len(rate) // 50)]}
