"""What every query attack shares: the margin loss, Sparse-RS's schedule and proposals, and patch pasting.

Patches are uint8 (3, s, s) or (N, 3, s, s), the deployed input domain; they are pasted with
`qadtr.attacks.rebuild` (the replay's own function: k / 255 in float32 times 255 rounds back to k exactly), at
axis-aligned top-left corners `xy` (N, 2) int32 (column, row), as `qadtr.attacks.Placement` records them.

Schedule (Croce et al., "Sparse-RS", AAAI 2022, patches): the fraction p of the patch area a square proposal
resamples starts at `p_init` and halves at the iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of
a 10 000-iteration run, rescaled to the run's length; a location proposal shifts each coordinate by at most
`0.75 * (1 - it / n_iter)` of the free range (at least one pixel).
"""

from __future__ import annotations

import math

import numpy as np

from qadtr.attacks import Placement, rebuild

BREAKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # Sparse-RS's halving points, of a 10 000-iteration run
SCHEDULE_LENGTH = 10_000  # the run length BREAKS are given for; rescaled to the run's own
SHIFT_START = 0.75  # Sparse-RS: the first location moves span 3/4 of the free range, shrinking linearly to 1 px
LOCATIONS = ("per-image", "shared", "fixed")  # searched per image, searched as one for all images, never moved


def check_common(cfg, *, min_budget: int = 2) -> None:
    """Field checks of every query attack config (ValueError naming the fix; configs turn it into one line)."""
    if not 0.0 < cfg.size < 1.0:
        raise ValueError(f"size={cfg.size}: give the patch's share of the image area in (0, 1), e.g. 0.1")
    if cfg.target is not None and cfg.target < 0:
        raise ValueError(f"target={cfg.target}: give a class index >= 0, or None for untargeted")
    if cfg.budget < min_budget:
        raise ValueError(f"budget={cfg.budget}: must be >= {min_budget} queries per image (one clean query, one "
                         "with the initial patch, then one per iteration)")
    if cfg.location not in LOCATIONS:
        raise ValueError(f"location={cfg.location!r}; choose one of {', '.join(LOCATIONS)}")
    if not 0.0 < cfg.p_init <= 1.0:
        raise ValueError(f"p_init={cfg.p_init}: the share of the patch the first proposals resample, in (0, 1]")
    if getattr(cfg, "loc_every", 1) < 1:
        raise ValueError(f"loc_every={getattr(cfg, 'loc_every', 1)}: iterations per location move, >= 1 (location='fixed' never "
                         "moves)")
    if cfg.batch < 1 or cfg.save_every < 1 or cfg.seed < 0:
        raise ValueError(f"batch={cfg.batch}, save_every={cfg.save_every} must be >= 1 and seed={cfg.seed} >= 0")


def p_selection(p_init: float, it: int, n_iter: int) -> float:
    """The share of the patch area resampled at iteration `it` of `n_iter` (the module docstring's schedule)."""
    scaled = int(it / max(n_iter, 1) * SCHEDULE_LENGTH)
    return p_init / 2 ** sum(scaled > b for b in BREAKS)


def square_side(p: float, side: int) -> int:
    """Side of the square covering share `p` of a side x side patch: at least 1 px, at most the patch."""
    return min(side, max(1, int(math.sqrt(p) * side)))


def shift_range(it: int, n_iter: int, free: int) -> int:
    """Largest location shift at iteration `it`: SHIFT_START of the free range, decaying linearly; >= 1 px."""
    return max(1, int(SHIFT_START * max(n_iter - it, 0) / max(n_iter, 1) * free))


def margin(logits: np.ndarray, cls: np.ndarray, targeted: bool) -> np.ndarray:
    """(B, K) logits, (B,) class -> (B,) float64 margin loss, < 0 where the attack succeeds by the margin.

    untargeted (cls = the clean prediction): z_cls - max_{j != cls} z_j; targeted (cls = the target):
    max_{j != t} z_j - z_t. Success itself is judged on the argmax (`fooled`), as qadtr.attacks.attack_success does.
    """
    z = logits.astype(np.float64)  # (B, K)
    rows = np.arange(len(z))
    own = z[rows, cls]  # (B,)
    other = z.copy()
    other[rows, cls] = -np.inf
    best_other = other.max(axis=1)  # (B,)
    return best_other - own if targeted else own - best_other


def fooled(pred: np.ndarray, cls: np.ndarray, targeted: bool) -> np.ndarray:
    """(B,) bool: the prediction is the target (targeted) or differs from the clean prediction (untargeted)."""
    return pred == cls if targeted else pred != cls


def paste(images: np.ndarray, patches: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) images with uint8 (3, s, s) or (B, 3, s, s) patches at top-left corners xy (B, 2)."""
    n = len(images)
    values = patches.astype(np.float32) / np.float32(255)  # rebuild's float32 [0, 1] values: rint(v * 255) = k
    return rebuild(images, values, Placement(xy[:, 0], xy[:, 1], np.zeros(n), np.ones(n), np.ones(n)))


def stripes(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    """(n, 3, s, s) uint8 initial patches: vertical 1-px stripes, each a random corner of the colour cube
    (Sparse-RS's patch initialisation)."""
    colours = rng.integers(0, 2, (n, 3, 1, side)).astype(np.uint8) * np.uint8(255)  # (n, 3, 1, s)
    return np.ascontiguousarray(np.broadcast_to(colours, (n, 3, side, side)))


def random_xy(rng: np.random.Generator, n: int, side: int, *, hw: tuple[int, int]) -> np.ndarray:
    """(n, 2) int32 top-left corners drawn uniformly where a side x side patch fits an hw image."""
    cols = rng.integers(0, hw[1] - side + 1, n)
    rows = rng.integers(0, hw[0] - side + 1, n)
    return np.stack([cols, rows], axis=1).astype(np.int32)


def propose_squares(rng: np.random.Generator, patches: np.ndarray, p: float) -> np.ndarray:
    """A copy of (n, 3, s, s) patches with one square each (share p of the area) set to a random colour-cube
    corner; a square already of that colour gets one channel flipped, so every proposal changes the patch."""
    n, _, side, _ = patches.shape
    sq = square_side(p, side)
    corner = rng.integers(0, side - sq + 1, (n, 2))  # (n, 2) row, col
    colour = rng.integers(0, 2, (n, 3)).astype(np.uint8) * np.uint8(255)  # (n, 3)
    flip = rng.integers(0, 3, n)  # (n,) the channel flipped when the square already has that colour
    out = patches.copy()
    for i in range(n):
        r, c = corner[i]
        window = out[i, :, r:r + sq, c:c + sq]  # (3, sq, sq) view
        if (window == colour[i].reshape(3, 1, 1)).all():
            colour[i, flip[i]] ^= np.uint8(255)
        window[...] = colour[i].reshape(3, 1, 1)
    return out


def propose_moves(rng: np.random.Generator, xy: np.ndarray, side: int, *, hw: tuple[int, int], it: int,
                  n_iter: int) -> np.ndarray:
    """(n, 2) new top-left corners: each coordinate shifted by up to `shift_range`, never both by 0, clipped in."""
    free = min(hw) - side
    reach = shift_range(it, n_iter, free)
    step = rng.integers(-reach, reach + 1, xy.shape)  # (n, 2)
    nudge = rng.choice(np.array([-1, 1]), len(xy))  # (n,) used where both shifts drew 0
    step[:, 0] = np.where((step == 0).all(axis=1), nudge, step[:, 0])
    hi = np.array([hw[1] - side, hw[0] - side])
    return np.clip(xy + step, 0, hi).astype(np.int32)
