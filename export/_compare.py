"""Comparators: result objects that are true when they pass (Polygraphy's OutputCompareResult).

Integer runtimes are judged in quantization steps (LSBs), not raw floats: a one-step difference in
an int8 tensor is the natural unit of disagreement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TIE_RULE = ("a sample is a tie when its top-2 reference logits differ by less than half an LSB; "
            "ties are counted separately and excluded from argmax agreement")


@dataclass(frozen=True)
class CompareResult:
    name: str
    passed: bool
    n: int  # samples (first axis)
    elements: int  # compared elements
    max_abs: float  # max |out - ref| in raw units
    max_abs_lsb: float  # the same in LSBs
    mismatch_frac: float  # fraction of elements differing by more than atol_lsb
    argmax_agree: float | None  # fraction of non-tie samples with the same argmax (None: not logits)
    ties: int  # samples excluded from argmax agreement by TIE_RULE
    worst_index: tuple[int, ...]

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        agree = "" if self.argmax_agree is None else f", argmax agree {100 * self.argmax_agree:.2f}% ({self.ties} ties)"
        return (f"{verdict} {self.name}: max |d| {self.max_abs:.3g} = {self.max_abs_lsb:.3g} LSB, "
                f"{100 * self.mismatch_frac:.4f}% of {self.elements} elements off{agree}")


def compare(ref: np.ndarray, out: np.ndarray, *, lsb: float | np.ndarray, atol_lsb: float = 0.5,
            max_mismatch_frac: float = 0.0, min_argmax_agree: float | None = None,
            name: str = "output") -> CompareResult:
    """Compare two arrays in LSBs of the reference quantization.

    Args:
        ref, out: same shape, (N, ...) with samples first.
        lsb: one quantization step; scalar or broadcastable (e.g. per-class for per-channel logits).
        atol_lsb: elements differing by more than this many steps count as mismatches (0.5 = any step).
        max_mismatch_frac: the largest mismatch fraction that passes.
        min_argmax_agree: when set, `ref`/`out` are (N, classes) logits and argmax agreement over
            non-tie samples must reach this fraction.
    """
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"{name}: shapes differ, reference {ref.shape} vs output {out.shape}")
    diff_lsb = np.abs(out - ref) / np.broadcast_to(np.asarray(lsb, np.float64), ref.shape)
    mismatch = float((diff_lsb > atol_lsb).mean()) if ref.size else 0.0
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff_lsb)), ref.shape)) if ref.size else ()
    agree, ties = None, 0
    passed = mismatch <= max_mismatch_frac
    if min_argmax_agree is not None:
        top2 = np.sort(ref, axis=1)[:, -2:]  # (N, 2)
        lsb_row = np.broadcast_to(np.asarray(lsb, np.float64), ref.shape).min(axis=1)  # (N,)
        tie = (top2[:, 1] - top2[:, 0]) < 0.5 * lsb_row
        ties = int(tie.sum())
        same = ref.argmax(1) == out.argmax(1)
        agree = float(same[~tie].mean()) if (~tie).any() else 1.0
        passed = passed and agree >= min_argmax_agree
    return CompareResult(name=name, passed=bool(passed), n=int(ref.shape[0]) if ref.ndim else 1,
                         elements=int(ref.size), max_abs=float(np.abs(out - ref).max()) if ref.size else 0.0,
                         max_abs_lsb=float(diff_lsb.max()) if ref.size else 0.0, mismatch_frac=mismatch,
                         argmax_agree=agree, ties=ties, worst_index=worst)
