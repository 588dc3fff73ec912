"""Proportions with 95% confidence intervals (Wilson score), for accuracies and attack success rates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Z95 = 1.959964  # two-sided 95% normal quantile
ALPHA = 0.05  # family-wise error rate of every "significant" label (Holm) and of the simultaneous intervals
FAMILY_METHOD = ("significance: exact two-sided McNemar test on the discordant pairs of each paired ASR difference, "
                 "Holm's step-down over the whole family (every patch x runtime x bit width x device compared in one "
                 "run), family-wise error rate 5%; intervals: Bonferroni-simultaneous (each at 1 - 0.05/m), so all m "
                 "cover together with probability >= 95%")


@dataclass(frozen=True)
class Proportion:
    k: int  # successes
    n: int  # trials

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson score interval: stays inside [0, 1] and behaves at 0% and 100%, unlike the normal one."""
        if self.n == 0:
            return (float("nan"), float("nan"))
        p, n, z = self.value, self.n, Z95
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (max(0.0, centre - half), min(1.0, centre + half))

    def to_dict(self) -> dict:
        lo, hi = self.ci95
        return {"value": self.value, "k": self.k, "n": self.n, "ci95": [lo, hi]}

    def __str__(self) -> str:
        lo, hi = self.ci95
        return f"{100 * self.value:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] (n={self.n})"


FOLDS = 5  # disjoint image subsets a difference is re-measured on: a sign flip shows, each keeps ~1/5 of n
STABILITY_METHOD = (f"stability across image subsets: the images of each paired ASR difference are split into {FOLDS} "
                    "disjoint subsets by a fixed hash of the test-set index (independent of the patch, the runtime "
                    "and the model); the difference is re-measured on each; 'same sign in k of 5' counts the subsets "
                    "whose difference has the sign of the whole (0 counts as its own sign); a finding is stable when "
                    "every subset agrees")


def fold_of(test_index, folds: int = FOLDS) -> np.ndarray:
    """(n,) test-set indices -> (n,) subset number in [0, folds): a fixed multiplicative hash, so that an image
    lands in the same subset in every comparison, whatever the replay's row order."""
    h = (np.asarray(test_index, np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)  # Fibonacci hashing
    return (h % np.uint64(folds)).astype(np.int64)


def stability(b_mask, c_mask, both_mask, *, test_index, folds: int = FOLDS) -> dict:
    """How a paired difference (side 1 only `b_mask`, side 2 only `c_mask`, over pairs `both_mask`; all (n,) bool)
    holds across `folds` disjoint image subsets (STABILITY_METHOD)."""
    b_mask, c_mask, both_mask = (np.asarray(m, bool) for m in (b_mask, c_mask, both_mask))
    fold = fold_of(test_index, folds)
    parts = [PairedDifference(b=int((b_mask & both_mask & (fold == f)).sum()),
                              c=int((c_mask & both_mask & (fold == f)).sum()),
                              n=int((both_mask & (fold == f)).sum())) for f in range(folds)]
    whole = int((b_mask & both_mask).sum()) - int((c_mask & both_mask).sum())
    sign = (whole > 0) - (whole < 0)
    measured = [p for p in parts if p.n]
    same = sum(((p.b > p.c) - (p.b < p.c)) == sign for p in measured)
    return {"folds": folds, "values": [p.value if p.n else None for p in parts], "n": [p.n for p in parts],
            "same_sign": same, "measured": len(measured), "stable": bool(measured) and same == len(measured)}


PAIRED_METHOD = ("Tango's asymptotic score interval for the difference of paired proportions (Tango 1998, "
                 "Stat Med 17:891), found by bisection; recommended for paired binary data by Fagerland, "
                 "Lydersen and Laake (2013); unlike the Wald interval it stays inside [-1, 1] and does not "
                 "collapse to a point when no pair is discordant")


@dataclass(frozen=True)
class PairedDifference:
    """p_1 - p_2 for two binary outcomes measured on the same n items (e.g. one image, two runtimes).

    Only the discordant pairs carry information: `b` items succeed on side 1 only, `c` on side 2 only.
    """

    b: int  # successes on side 1 only
    c: int  # successes on side 2 only
    n: int  # pairs (items measured on both sides)

    def __post_init__(self) -> None:
        if min(self.b, self.c, self.n) < 0 or self.b + self.c > self.n:
            raise ValueError(f"paired counts b={self.b}, c={self.c}, n={self.n}: need b, c >= 0 and b + c <= n")

    @property
    def value(self) -> float:
        return (self.b - self.c) / self.n if self.n else float("nan")

    def _score(self, delta: float) -> float:
        """Tango's score statistic at difference `delta` (decreasing in `delta`)."""
        n, b, c = self.n, self.b, self.c
        # restricted MLE of the side-2-only cell probability under p_1 - p_2 = delta
        qa, qb, qc = 2 * n, -b - c + (2 * n - b + c) * delta, -c * delta * (1 - delta)
        q21 = (math.sqrt(max(qb * qb - 4 * qa * qc, 0.0)) - qb) / (2 * qa)
        var = n * (2 * q21 + delta * (1 - delta))
        num = b - c - n * delta
        if var <= 0:  # only at delta = +-1 with every pair discordant that way: the estimate itself
            return 0.0 if num == 0 else math.copysign(math.inf, num)
        return num / math.sqrt(var)

    @property
    def ci95(self) -> tuple[float, float]:
        """PAIRED_METHOD at 95%: every delta whose |score| <= Z95."""
        return self.ci(Z95)

    def ci(self, z: float) -> tuple[float, float]:
        """PAIRED_METHOD at the two-sided level of normal quantile `z` (e.g. `z_for(0.05 / m)`)."""
        if self.n == 0:
            return (float("nan"), float("nan"))
        est = self.value

        def root(lo: float, hi: float, sign: float) -> float:
            # score(lo) and score(hi) straddle sign * z; 60 halvings: below 1e-17
            for _ in range(60):
                mid = (lo + hi) / 2
                if (self._score(mid) - sign * z) * sign > 0:
                    lo, hi = (mid, hi) if sign > 0 else (lo, mid)
                else:
                    lo, hi = (lo, mid) if sign > 0 else (mid, hi)
            return (lo + hi) / 2

        lower = -1.0 if self._score(-1.0) <= z else root(-1.0, est, 1.0)
        upper = 1.0 if self._score(1.0) >= -z else root(est, 1.0, -1.0)
        return (lower, upper)

    @property
    def p_value(self) -> float:
        """Exact two-sided McNemar test of "no difference": the discordant pairs split b / c as Binomial(b + c, 1/2)."""
        return mcnemar_p(self.b, self.c)

    def to_dict(self) -> dict:
        lo, hi = self.ci95
        return {"value": self.value, "b": self.b, "c": self.c, "n": self.n, "ci95": [lo, hi], "method": PAIRED_METHOD}

    def __str__(self) -> str:
        lo, hi = self.ci95
        return (f"{100 * self.value:+.2f} pp [{100 * lo:+.2f}, {100 * hi:+.2f}] "
                f"(n={self.n}, discordant {self.b}/{self.c})")


def z_for(alpha: float) -> float:
    """Two-sided normal quantile for error rate `alpha` (0.05 -> 1.96)."""
    return NormalDist().inv_cdf(1 - alpha / 2)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)  # exact big integers, one rounded division
    return min(1.0, 2 * tail)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error rate), in the order given.

    Sorted ascending, p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)); reject where adjusted <= alpha.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def family(diffs: list[PairedDifference], alpha: float = ALPHA) -> list[dict]:
    """For a family of paired differences: raw and Holm-adjusted p, `significant`, and the simultaneous CI."""
    m = max(len(diffs), 1)
    raw = [d.p_value for d in diffs]
    adj = holm(raw)
    z = z_for(alpha / m)
    return [{"p": p, "p_holm": q, "significant": q <= alpha, "ci_family": list(d.ci(z)), "family_size": len(diffs),
             "method": FAMILY_METHOD} for d, p, q in zip(diffs, raw, adj)]
