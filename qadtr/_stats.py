"""Proportions with 95% confidence intervals (Wilson score), for accuracies and attack success rates."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959964  # two-sided 95% normal quantile


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
