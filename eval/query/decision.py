"""Decision-based patch attack: the attacker sees only the deployed model's top-1 label (`_oracle.LabelOracle`).

What it optimises, per image:
1. search: until the label is the target (targeted) or differs from the clean label (untargeted), each query is
   an independent draw: a fresh random patch (squares of colour-cube corners, `_search.propose_squares` on
   `_search.stripes`) at a fresh random place (location "fixed": the first place). With top-1 only, a
   non-adversarial candidate tells nothing about how close it came, so a random walk has no reason to keep
   one over another; independent draws keep every query informative.
2. shrink: once fooled (queries-to-success is counted here), the place is frozen and the remaining budget
   minimises the visible patch, the number of patch pixels that differ from the clean image beneath (an L0
   within the patch square): each query restores one square of the patch (scheduled share of its area,
   `_search.p_selection`) to the clean pixels beneath, and is kept when the label stays adversarial.
A result is adversarial by construction (only adversarial candidates are kept after the first); `extra`
holds the visible pixels per image (-1 never fooled) so the patch's footprint can be reported.

Queries per image: 1 clean, then 1 per iteration (the first draw is iteration 0): `budget - 1` iterations.

universal=True: one patch for all images, from top-1 labels only. That is the random search of sparse_rs.py with
`scores="top1"`: the share of attacked images the patch fools is the one thing a label-only attacker can measure
of a universal patch, and that search climbs it (keeping equal candidates on its plateaus); one implementation of
the search, not two. Its queries are counted as sparse-rs counts them (1 clean, 1 initial, 1 per iteration).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.query._oracle import LabelOracle, Oracle
from eval.query._outcome import QueryOutcome, drive
from eval.query._search import check_common, fooled, p_selection, paste, random_xy, square_side, stripes, \
    propose_squares
from eval.query._state import load_state, restore_rng
from eval.query.sparse_rs import SparseRSConfig, sparse_rs
from qadtr._config import config_to_dict, register_config
from qadtr.attacks import patch_side

ARRAYS = ("patches", "xy", "pred", "clean", "eligible", "queries", "first_success", "trace", "visible")
DRAW_SQUARES = 4  # squares painted on the stripes of each fresh search draw: varied patches, not only stripes


@register_config
@dataclass(frozen=True)
class DecisionConfig:
    VERSION = 1
    size: float = 0.1  # patch share of the image area (qadtr.attacks.patch_side)
    target: int | None = None  # None = untargeted
    budget: int = 1000  # queries per image, its clean query included
    location: str = "per-image"  # per-image: a fresh place per search draw | fixed: the first place only
    p_init: float = 0.4  # share of the patch area the first shrink proposals restore
    seed: int = 0  # the one random generator
    batch: int = 256  # rows per runner.infer call (memory and speed only)
    save_every: int = 25  # iterations between state checkpoints
    universal: bool = False  # one patch for all images (sparse-rs's search on top-1 labels) or one per image

    def __post_init__(self) -> None:
        check_common(self, min_budget=2)
        if self.location == "shared" and not self.universal:
            raise ValueError("location='shared' moves one place for all images: it needs universal=True")


def decision_attack(runner, images: np.ndarray, labels: np.ndarray, *, cfg: DecisionConfig,
                    state_path: str | Path | None = None, inputs: str = "", progress: bool = False) -> QueryOutcome:
    """Per-image patches (or, `cfg.universal`, one patch) for uint8 (N, H, W, 3) `images` from top-1 labels of the
    active `runner` only."""
    if cfg.universal:
        search = SparseRSConfig(size=cfg.size, target=cfg.target, budget=cfg.budget, universal=True,
                                location=cfg.location, p_init=cfg.p_init, seed=cfg.seed, batch=cfg.batch,
                                save_every=cfg.save_every, scores="top1")
        return sparse_rs(runner, images, labels, cfg=search, state_path=state_path, inputs=inputs, progress=progress)
    n, h, w, _ = images.shape
    side = patch_side(cfg.size, (h, w))  # a PatchSizeError (a QadtrError) for a patch that does not fit
    targeted, n_iter = cfg.target is not None, cfg.budget - 1
    top1 = LabelOracle(Oracle(runner, n_images=n, budget=cfg.budget, batch=cfg.batch))
    key = config_to_dict(cfg)
    if state_path is not None and Path(state_path).is_file():
        s, meta = load_state(state_path, config=key, inputs=inputs)
        s = {k: s[k].copy() for k in ARRAYS}
        rng, it0 = restore_rng(meta["rng"]), int(meta["iteration"])
        top1.queries = s["queries"]
    else:
        rng, it0 = np.random.default_rng(cfg.seed), 0
        s = _initial(top1, rng, images, labels=labels, cfg=cfg, side=side)
    cls = np.full(n, cfg.target, np.int64) if targeted else s["clean"]
    run = _Decision(top1=top1, rng=rng, images=images, cfg=cfg, s=s, cls=cls, side=side, n_iter=n_iter, key=key,
                    inputs=inputs)
    drive(run.step, start=it0, n_iter=n_iter, snapshot=run.snapshot, state_path=state_path,
          save_every=cfg.save_every, progress=progress, desc="decision")
    return QueryOutcome(patches=s["patches"], xy=s["xy"], clean_pred=s["clean"], adv_pred=s["pred"],
                        eligible=s["eligible"], queries=top1.queries, first_success=s["first_success"],
                        trace=s["trace"], target=cfg.target, budget=cfg.budget,
                        extra={"visible_pixels": s["visible"], "side": side})


def _initial(top1: LabelOracle, rng, images: np.ndarray, *, labels: np.ndarray, cfg: DecisionConfig,
             side: int) -> dict:
    """The clean query and the first places: the state before iteration 0."""
    n, h, w, _ = images.shape
    targeted = cfg.target is not None
    clean = top1.labels(images, np.arange(n))  # (N,)
    top1.check_target(cfg.target)
    return {"patches": np.zeros((n, 3, side, side), np.uint8), "xy": random_xy(rng, n, side, hw=(h, w)),
            "pred": clean.copy(), "clean": clean, "queries": top1.queries,
            "eligible": labels != cfg.target if targeted else clean == labels,
            "first_success": np.full(n, -1, np.int64), "trace": np.zeros((0, 3), np.int64),
            "visible": np.full(n, -1, np.int64)}


def _beneath(images: np.ndarray, xy: np.ndarray, idx, *, side: int) -> np.ndarray:
    """(B, 3, s, s) the clean pixels under each image's patch square (top-left corners `xy` (N, 2))."""
    return np.stack([images[i, y:y + side, x:x + side].transpose(2, 0, 1) for i, (x, y) in zip(idx, xy[idx])])


@dataclass(eq=False)
class _Decision:
    """One decision_attack run's iterations and checkpoints over its state `s` (the ARRAYS) and its generator."""

    top1: LabelOracle
    rng: np.random.Generator  # every draw, in iteration order
    images: np.ndarray  # (N, H, W, 3) uint8
    cfg: DecisionConfig
    s: dict  # the ARRAYS: kept patches, places, predictions, counters (checkpointed)
    cls: np.ndarray  # (N,) the target, or each image's clean label
    side: int  # patch side in pixels
    n_iter: int
    key: dict  # config_to_dict(cfg), recorded in the checkpoint
    inputs: str  # `_state.inputs_key`, recorded in the checkpoint

    def step(self, it: int) -> bool:
        """Iteration `it`: a fresh draw for every image not yet fooled, a shrink for every fooled one."""
        s, cfg, rng, side, images = self.s, self.cfg, self.rng, self.side, self.images
        won = s["first_success"] >= 0
        search = np.flatnonzero(s["eligible"] & ~won)
        shrink = np.flatnonzero(s["eligible"] & won & (s["visible"] > 0))
        if not len(search) and not len(shrink):
            return False
        cand, xy, owners = [], [], []
        if len(search):
            draw = stripes(rng, len(search), side)
            for _ in range(DRAW_SQUARES):
                draw = propose_squares(rng, draw, cfg.p_init)
            place = s["xy"][search] if cfg.location == "fixed" else random_xy(rng, len(search), side,
                                                                              hw=images.shape[1:3])
            cand.append(draw), xy.append(place), owners.append(search)
        if len(shrink):
            cand.append(_restore(rng, s["patches"][shrink], _beneath(images, s["xy"], shrink, side=side),
                                 p=p_selection(cfg.p_init, it, self.n_iter)))
            xy.append(s["xy"][shrink]), owners.append(shrink)
        idx, cand, xy = np.concatenate(owners), np.concatenate(cand), np.concatenate(xy)
        pred = self.top1.labels(paste(images[idx], cand, xy), idx)  # one batch: search and shrink candidates together
        ok = fooled(pred, self.cls[idx], cfg.target is not None)
        s["patches"][idx[ok]], s["xy"][idx[ok]], s["pred"][idx[ok]] = cand[ok], xy[ok], pred[ok]
        s["queries"] = self.top1.queries
        first = ok & (s["first_success"][idx] < 0)
        s["first_success"][idx[first]] = s["queries"][idx[first]]
        kept = idx[ok]
        if len(kept):
            differs = s["patches"][kept] != _beneath(images, s["xy"], kept, side=side)  # (B, 3, s, s)
            s["visible"][kept] = differs.any(axis=1).sum(axis=(1, 2))
        won = s["first_success"] >= 0
        s["trace"] = np.concatenate([s["trace"], [[it + 1, s["queries"].sum(), (won & s["eligible"]).sum()]]])
        return True

    def snapshot(self, it: int):
        self.s["queries"] = self.top1.queries
        return dict(self.s), {"iteration": it, "rng": self.rng.bit_generator.state, "config": self.key,
                              "inputs": self.inputs}


def _restore(rng, patches: np.ndarray, clean: np.ndarray, *, p: float) -> np.ndarray:
    """(B, 3, s, s) copies of `patches` with one square (share p of the area) set back to the `clean` pixels
    beneath; the square holds a pixel drawn among the still visible ones, so every proposal shrinks the patch."""
    b, _, side, _ = patches.shape
    sq = square_side(p, side)
    out = patches.copy()
    for i in range(b):
        rows, cols = np.nonzero((patches[i] != clean[i]).any(axis=0))  # visible pixels (shrink runs on > 0 of them)
        k = rng.integers(0, len(rows))
        r, c = (int(np.clip(v - sq // 2, 0, side - sq)) for v in (rows[k], cols[k]))
        out[i, :, r:r + sq, c:c + sq] = clean[i, :, r:r + sq, c:c + sq]
    return out
