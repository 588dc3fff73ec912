"""Score-based patch attack on a deployed artifact: random search in the style of Sparse-RS / Patch-RS (Croce,
Andriushchenko, Singh, Flammarion, Hein, AAAI 2022), through any registered runtime's Runner.

Each image's patch starts as random vertical stripes of colour-cube corners at a random place. Every iteration
makes one candidate per attacked image: every `loc_every`-th iteration (the first included) it moves the patch
(`_search.propose_moves`), otherwise it sets one square of the patch, of the scheduled share p of its area
(`_search.p_selection`, decaying with the iteration), to a random colour-cube corner. A candidate is kept when it
lowers the margin loss (`_search.margin`) strictly, or fools the model where the kept one does not.

- per-image (universal=False): each image is attacked until fooled or out of budget; its candidates of all
  images go out in one batch per iteration.
- universal: one patch for all attacked images; a square candidate is evaluated on every image at once and kept
  when the mean of max(margin, 0) falls (a fooled image counts 0 whatever its margin, so the search serves the
  images not yet fooled: the score-only analogue of Sparse-RS's mean cross-entropy); location "per-image" moves
  and keeps each image's place by its own loss, "shared" moves one place for all by the mean.
- scores "top1" (universal only; `--attack decision --universal`): the decision-based universal patch. The search
  sees each image's top-1 label only (`_oracle.LabelOracle`), as one-hot scores, so every margin is -1 (fooled)
  or +1 and the hinged mean is the share of attacked images not yet fooled. A square candidate is kept when it
  fools at least as many images as the kept patch: on the plateaus a label-only objective is made of, accepting
  equal candidates is a random walk that can reach a better level, where keeping only strict gains would stall.

Queries per image: 1 clean, 1 with the initial patch, then 1 per iteration: `budget - 2` iterations.

Example:
    >>> with make_runner("litert-builtin", "w4.tflite") as r:
    ...     out = sparse_rs(r, images, labels, cfg=SparseRSConfig(size=0.1, target=3, budget=500))
    >>> print(out.asr(labels))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.query._oracle import OneHotScores, Oracle
from eval.query._outcome import QueryOutcome, drive
from eval.query._search import check_common, fooled, margin, p_selection, paste, propose_moves, propose_squares, \
    random_xy, stripes
from eval.query._state import load_state, restore_rng
from qadtr._config import config_to_dict, register_config
from qadtr._errors import QadtrError
from qadtr.attacks import patch_side

ARRAYS = ("patches", "xy", "loss", "pred", "clean", "eligible", "queries", "first_success", "trace", "losses")
SCORES = ("logits", "top1")  # what the search sees of each answer: the logits, or only the top-1 label


@register_config
@dataclass(frozen=True)
class SparseRSConfig:
    VERSION = 1
    size: float = 0.1  # patch share of the image area (qadtr.attacks.patch_side: 10% of 32x32 = 10 px)
    target: int | None = None  # None = untargeted
    budget: int = 1000  # queries per image, its clean query and the initial patch's included
    universal: bool = False  # one patch for all images (True) or one per image
    location: str = "per-image"  # per-image | shared (universal only) | fixed (never moved)
    p_init: float = 0.4  # share of the patch area the first square proposals resample
    loc_every: int = 4  # a location move every loc_every iterations (Sparse-RS's update_loc_period)
    seed: int = 0  # the one random generator: initial patches, places, every proposal
    batch: int = 256  # rows per runner.infer call (memory and speed only)
    save_every: int = 25  # iterations between state checkpoints (resume granularity)
    scores: str = "logits"  # logits: score-based | top1: the search sees top-1 labels only (universal)

    def __post_init__(self) -> None:
        check_common(self)
        if self.location == "shared" and not self.universal:
            raise ValueError("location='shared' moves one place for all images: it needs universal=True")
        if self.scores not in SCORES:
            raise ValueError(f"scores={self.scores!r}; choose one of {SCORES}")
        if self.scores == "top1" and not self.universal:
            raise ValueError("scores='top1' is the universal decision-based search; per image, use the decision "
                             "attack (eval/query/decision.py)")


@dataclass(frozen=True, eq=False)
class Start:
    """Where a refined attack begins (eval.query.refine): uint8 patch(es) and top-left corners (N, 2)."""

    patches: np.ndarray  # (3, s, s) or (N, 3, s, s) uint8
    xy: np.ndarray  # (N, 2) int32 (column, row)


def sparse_rs(runner, images: np.ndarray, labels: np.ndarray, *, cfg: SparseRSConfig, start: Start | None = None,
              state_path: str | Path | None = None, inputs: str = "", progress: bool = False) -> QueryOutcome:
    """Attack uint8 (N, H, W, 3) `images` (true `labels` (N,)) through the active `runner`.

    `state_path`: the checkpoint file; when it exists the attack resumes from it (it must come from the same
    config and `inputs`, a key of the artifact, runtime and images: `_state.inputs_key`).

    Raises:
        QadtrError: a patch that does not fit, a target the model lacks, images of another size than the
            model's, a state file of another run.
    """
    n, h, w, _ = images.shape
    side = patch_side(cfg.size, (h, w))  # a PatchSizeError (a QadtrError) for a patch that does not fit
    targeted, n_iter = cfg.target is not None, cfg.budget - 2
    oracle = Oracle(runner, n_images=n, budget=cfg.budget, batch=cfg.batch)
    oracle = oracle if cfg.scores == "logits" else OneHotScores(oracle)
    key = config_to_dict(cfg)
    if state_path is not None and Path(state_path).is_file():
        s, meta = load_state(state_path, config=key, inputs=inputs)
        s = {k: s[k].copy() for k in ARRAYS}
        rng, it0 = restore_rng(meta["rng"]), int(meta["iteration"])
        oracle.queries, oracle.num_classes = s["queries"], meta["num_classes"]
    else:
        rng, it0 = np.random.default_rng(cfg.seed), 0
        s = _initial(oracle, rng, images, labels=labels, cfg=cfg, side=side, start=start)
    cls = np.full(n, cfg.target, np.int64) if targeted else s["clean"]
    run = _Search(oracle=oracle, rng=rng, images=images, cfg=cfg, s=s, cls=cls, side=side, n_iter=n_iter, key=key,
                  inputs=inputs)
    drive(run.step, start=it0, n_iter=n_iter, snapshot=run.snapshot, state_path=state_path,
          save_every=cfg.save_every, progress=progress,
          desc=f"sparse-rs {'universal' if cfg.universal else 'per-image'}")
    return QueryOutcome(patches=s["patches"], xy=s["xy"], clean_pred=s["clean"], adv_pred=s["pred"],
                        eligible=s["eligible"], queries=oracle.queries, first_success=s["first_success"],
                        trace=s["trace"], target=cfg.target, budget=cfg.budget, extra={"loss": s["loss"], "losses": s["losses"]})


@dataclass(eq=False)
class _Search:
    """One sparse_rs run's iterations and checkpoints over its state `s` (the ARRAYS) and its one generator."""

    oracle: Oracle
    rng: np.random.Generator  # every proposal, in iteration order
    images: np.ndarray  # (N, H, W, 3) uint8
    cfg: SparseRSConfig
    s: dict  # the ARRAYS: kept patches, places, losses and predictions, counters (checkpointed)
    cls: np.ndarray  # (N,) the class each image's margin is taken against: the target or its clean prediction
    side: int  # patch side in pixels
    n_iter: int
    key: dict  # config_to_dict(cfg), recorded in the checkpoint
    inputs: str  # `_state.inputs_key`, recorded in the checkpoint

    def evaluate(self, idx, patches, xy):  # -> (len(idx),) losses and predictions of one candidate per image
        logits = self.oracle.logits(paste(self.images[idx], patches, xy), idx)  # (B, K)
        return margin(logits, self.cls[idx], self.cfg.target is not None), logits.argmax(axis=1)

    def keep(self, idx, ok, loss, *, pred) -> None:
        self.s["loss"][idx[ok]], self.s["pred"][idx[ok]] = loss[ok], pred[ok]

    def step(self, it: int) -> bool:
        """Iteration `it`: one candidate per attacked image (a move or a square), kept where it is better."""
        s, cls, cfg, rng, side, n_iter = self.s, self.cls, self.cfg, self.rng, self.side, self.n_iter
        targeted, hw = cfg.target is not None, self.images.shape[1:3]
        won = fooled(s["pred"], cls, targeted) & s["eligible"]
        idx = np.flatnonzero(s["eligible"] if cfg.universal else s["eligible"] & ~won)
        if not len(idx) or (cfg.universal and won[idx].all()):
            return False
        move = cfg.location != "fixed" and it % cfg.loc_every == 0
        if cfg.universal and move and cfg.location == "shared":
            xy = np.repeat(propose_moves(rng, s["xy"][idx[:1]], side, hw=hw, it=it, n_iter=n_iter), len(idx), axis=0)
            loss, pred = self.evaluate(idx, s["patches"], xy)
            if _better_mean(loss, pred, s, idx=idx, cls=cls, targeted=targeted):
                s["xy"][idx] = xy
                self.keep(idx, np.ones(len(idx), bool), loss, pred=pred)
        elif move:
            xy = propose_moves(rng, s["xy"][idx], side, hw=hw, it=it, n_iter=n_iter)
            patches = s["patches"] if cfg.universal else s["patches"][idx]
            loss, pred = self.evaluate(idx, patches, xy)
            ok = _better(loss, pred, s, idx=idx, cls=cls, targeted=targeted, hinge=cfg.universal)
            s["xy"][idx[ok]] = xy[ok]
            self.keep(idx, ok, loss, pred=pred)
        elif cfg.universal:
            cand = propose_squares(rng, s["patches"][None], p_selection(cfg.p_init, it, n_iter))[0]  # (3, s, s)
            loss, pred = self.evaluate(idx, cand, s["xy"][idx])
            if _better_mean(loss, pred, s, idx=idx, cls=cls, targeted=targeted, ties=cfg.scores == "top1"):
                s["patches"] = cand
                self.keep(idx, np.ones(len(idx), bool), loss, pred=pred)
        else:
            cand = propose_squares(rng, s["patches"][idx], p_selection(cfg.p_init, it, n_iter))  # (B, 3, s, s)
            loss, pred = self.evaluate(idx, cand, s["xy"][idx])
            ok = _better(loss, pred, s, idx=idx, cls=cls, targeted=targeted, hinge=False)
            s["patches"][idx[ok]] = cand[ok]
            self.keep(idx, ok, loss, pred=pred)
        s["queries"] = self.oracle.queries
        _record(s, cls, targeted, it=it + 1, hinge=cfg.universal)
        return True

    def snapshot(self, it: int):
        self.s["queries"] = self.oracle.queries
        return dict(self.s), {"iteration": it, "rng": self.rng.bit_generator.state, "config": self.key,
                              "inputs": self.inputs, "num_classes": self.oracle.num_classes}


def _initial(oracle: Oracle, rng, images, *, labels, cfg: SparseRSConfig, side: int, start: Start | None) -> dict:
    """The clean query, the initial patches and places, and their query: the state before iteration 0."""
    n, h, w, _ = images.shape
    clean = oracle.logits(images, np.arange(n)).argmax(axis=1).astype(np.int64)  # (N,)
    oracle.check_target(cfg.target)
    targeted = cfg.target is not None
    eligible = labels != cfg.target if targeted else clean == labels  # qadtr.attacks.asr's definitions
    if start is None:
        patches = stripes(rng, 1 if cfg.universal else n, side)  # (1 or N, 3, s, s)
        patches = patches[0] if cfg.universal else patches
        xy = random_xy(rng, n, side, hw=(h, w))
        if cfg.location == "shared":
            xy[:] = xy[0]
    else:
        patches, xy = _check_start(start, n, side, universal=cfg.universal, hw=(h, w))
    cls = np.full(n, cfg.target, np.int64) if targeted else clean
    idx = np.flatnonzero(eligible)
    loss, pred = np.full(n, np.inf), clean.copy()
    if len(idx):
        logits = oracle.logits(paste(images[idx], patches if cfg.universal else patches[idx], xy[idx]), idx)
        loss[idx], pred[idx] = margin(logits, cls[idx], targeted), logits.argmax(axis=1)
    s = {"patches": patches, "xy": xy, "loss": loss, "pred": pred, "clean": clean, "eligible": eligible,
         "queries": oracle.queries, "first_success": np.full(n, -1, np.int64), "trace": np.zeros((0, 3), np.int64),
         "losses": np.zeros(0, np.float64)}
    _record(s, cls, targeted, it=0, hinge=cfg.universal)
    return s


def _check_start(start: Start, n: int, side: int, *, universal: bool, hw) -> tuple[np.ndarray, np.ndarray]:
    want = (3, side, side) if universal else (n, 3, side, side)
    if start.patches.dtype != np.uint8 or start.patches.shape != want:
        raise QadtrError(f"the starting patch is {start.patches.dtype} {start.patches.shape}; this attack needs uint8 "
                         f"{want} (same size fraction, {'universal' if universal else 'per-image'})")
    xy = np.asarray(start.xy, np.int32)
    if xy.shape != (n, 2) or xy.min() < 0 or (xy[:, 0] > hw[1] - side).any() or (xy[:, 1] > hw[0] - side).any():
        raise QadtrError(f"the starting places {xy.shape} must be (N={n}, 2) corners where a {side}px patch fits")
    return start.patches.copy(), xy.copy()


def _better(loss, pred, s, *, idx, cls, targeted, hinge: bool) -> np.ndarray:
    """(B,) bool: each image's candidate lowers its (hinged) margin, or fools where the kept one does not."""
    new, old = (np.maximum(loss, 0), np.maximum(s["loss"][idx], 0)) if hinge else (loss, s["loss"][idx])
    return (new < old) | (fooled(pred, cls[idx], targeted) & ~fooled(s["pred"][idx], cls[idx], targeted))


def _better_mean(loss, pred, s, *, idx, cls, targeted, ties: bool = False) -> bool:
    """One candidate for all images: the mean hinged margin falls, or more images are fooled at an equal mean;
    with `ties` (label-only scores) also a candidate that fools exactly as many images as the kept one."""
    new, old = np.maximum(loss, 0).mean(), np.maximum(s["loss"][idx], 0).mean()
    gain = fooled(pred, cls[idx], targeted).sum() > fooled(s["pred"][idx], cls[idx], targeted).sum()
    return bool(new < old or (new == old and (gain or ties)))


def _record(s: dict, cls, targeted: bool, *, it: int, hinge: bool) -> None:
    """After iteration `it`: first-success query counts of newly fooled images, one trace row, and the objective
    (mean margin over the attacked images; hinged at 0 for universal patches), which never rises."""
    won = fooled(s["pred"], cls, targeted) & s["eligible"]
    new = won & (s["first_success"] < 0)
    s["first_success"][new] = s["queries"][new]
    row = np.array([[it, s["queries"].sum(), won.sum()]], np.int64)
    s["trace"] = np.concatenate([s["trace"], row])
    loss = s["loss"][s["eligible"]]
    mean = float(np.maximum(loss, 0).mean() if hinge else loss.mean()) if len(loss) else 0.0
    s["losses"] = np.append(s["losses"], mean)
