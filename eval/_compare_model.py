"""eval.compare's result and its pure part: the Gate, the per-sample records, and `compare_outputs`, which
compares two sides' logits over arrays (no store, no files). `eval.compare` re-exports every name here and
adds the runs of a store, compare.json and the CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qadtr._errors import QadtrError
from qadtr._stats import PAIRED_METHOD, PairedDifference, Proportion, stability

TIE_RULE = ("a sample ties on a side when its top-2 logits there differ by less than half a reference logit "
            "LSB (the smallest class's step; export._compare.TIE_RULE applied to each side; exact equality "
            "when no LSB is known). Predictions are the argmax with the lowest class index winning an exact "
            "tie (numpy), on both sides alike; agreement rates exclude samples that tie on either side, and "
            "ties are counted on their own")
ASR_NOTE = ("ASR per side as qadtr.attacks.attack_success defines it, each side's clean predictions taken "
            "from the clean replay row of the same test image; the paired difference (deployed - reference) is "
            "over the images eligible on both sides: for a targeted patch the same set, so it equals the "
            "difference of the two ASRs; for an untargeted one, the images classified correctly on both")


@dataclass(frozen=True)
class Gate:
    """When a deployed runtime counts as agreeing with the fake-quant reference."""

    min_agree: float = 0.99  # argmax agreement over non-tie samples, on clean and on patched inputs each
    max_asr_diff: float = 0.02  # largest |ASR deployed - ASR reference| of any patch (point estimate)
    # ties leave the agreement rate, so a runtime that collapses logits into ties (all zeros, a coarse int8
    # output) must not pass by having nothing left to disagree on
    max_extra_ties: float = 0.01  # largest fraction of samples tying on the deployed side only

    def __post_init__(self) -> None:
        for name, example in (("min_agree", "0.99"), ("max_asr_diff", "0.02 (2 pp)"), ("max_extra_ties", "0.01")):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Gate.{name}={getattr(self, name)}: a fraction in [0, 1], e.g. {example}")

    def describe(self) -> str:
        return (f"passes when argmax agreement over non-tie samples is >= {100 * self.min_agree:g}% on clean and "
                f"on patched inputs, every patch's |ASR difference| is <= {100 * self.max_asr_diff:g} pp and at "
                f"most {100 * self.max_extra_ties:g}% of samples tie on the deployed side only")


@dataclass(frozen=True)
class Agreement:
    """Argmax agreement on one group of samples (clean or patched)."""

    n: int  # samples
    agree: int  # same argmax, ties included
    ties_ref: int  # samples tying on the reference side (TIE_RULE)
    ties_out: int  # ... on the deployed side
    n_nontie: int  # samples tying on neither side
    agree_nontie: int  # of those, same argmax

    @property
    def rate(self) -> Proportion:
        return Proportion(self.agree_nontie, self.n_nontie)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rate": self.rate.to_dict()}


@dataclass(frozen=True)
class PatchComparison:
    index: int  # patch index in the replay
    name: str  # patch file
    target: int | None  # None = untargeted
    asr_ref: dict  # ASR.to_dict() on the reference
    asr_out: dict  # ... on the deployed runtime
    diff: PairedDifference  # deployed - reference, over images eligible on both sides
    ref_only: tuple[int, ...]  # samples (replay rows) where the attack succeeds only on the reference
    out_only: tuple[int, ...]  # ... only on the deployed runtime
    stability: dict = field(default_factory=dict)  # qadtr._stats.stability: the difference on 5 image subsets

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "diff": self.diff.to_dict()}


@dataclass(frozen=True)
class Disagreement:
    """One sample where the two sides predict differently or the attack's outcome differs."""

    sample: int  # replay row
    test_index: int
    patch: int  # -1 = clean
    label: int
    pred_ref: int
    pred_out: int
    tie_ref: bool
    tie_out: bool
    attack: str  # "ref-only" | "deployed-only" (attack succeeds only there) | "" (no outcome change)
    max_dlogit_lsb: float | None  # this sample's largest |dlogit| in LSBs (None: no LSB known)


@dataclass(frozen=True)
class Comparison:
    """Deployed runtime vs the fake-quant reference on one replay; truthy when `gate` passes (P8)."""

    ref: str  # reference name, e.g. "fakequant"
    out: str  # deployed runtime name
    n: int
    clean: Agreement
    patched: Agreement
    patches: tuple[PatchComparison, ...]
    logits: dict  # export._compare.CompareResult.to_dict() in LSBs; "lsb" and how it was obtained
    disagreements: tuple[Disagreement, ...]
    gate: Gate
    passed: bool
    reasons: tuple[str, ...]  # why the gate failed (empty when passed)
    kernels: dict = field(default_factory=dict)  # side -> kernel set reported by its runner
    runs: dict = field(default_factory=dict)  # side -> run id in the store
    info: dict = field(default_factory=dict)  # model, bits, device, replay
    divergence: dict | None = None  # eval._divergence.Divergence.to_dict(), when computed
    attribution: dict = field(default_factory=dict)  # devices.intexec.attribute(): the semantics that reproduces it

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(clean=self.clean.to_dict(), patched=self.patched.to_dict(), gate=dataclasses.asdict(self.gate),
                 patches=[p.to_dict() for p in self.patches], disagreements=[dataclasses.asdict(x) for x in
                                                                          self.disagreements],
                 tie_rule=TIE_RULE, asr_note=ASR_NOTE, paired_ci=PAIRED_METHOD, gate_rule=self.gate.describe())
        return d

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lsb = self.logits.get("max_abs_lsb")
        lines = [f"{verdict} {self.out} vs {self.ref} ({self.info.get('model', '?')}, {self.n} samples): "
                 f"clean agree {self.clean.rate} ({self.clean.ties_ref}/{self.clean.ties_out} ties ref/deployed), "
                 f"patched agree {self.patched.rate} ({self.patched.ties_ref}/{self.patched.ties_out} ties), "
                 f"max |dlogit| " + ("n/a" if lsb is None else f"{lsb:.3g} LSB")
                 + (f" (deployed logit step {self.logits['out_step_lsb']:.3g} LSB)" if self.logits.get("out_step_lsb")
                    else "")]
        for p in self.patches:
            before, after = 100 * p.asr_ref["asr"]["value"], 100 * p.asr_out["asr"]["value"]
            lines.append(f"  {p.name}: ASR {before:.2f}% -> {after:.2f}%"
                         f", diff {p.diff}{_stable(p.stability)}; attack succeeds only on {self.ref}: {len(p.ref_only)}, "
                         f"only on {self.out}: {len(p.out_only)}")
        if self.attribution:
            lines.append(f"  reproduced by: {self.attribution.get('summary', '')}")
        if self.divergence is not None:
            lines.append(f"  first divergent layers: {self.divergence.get('summary', '')}")
        lines += [f"  gate: {r}" for r in self.reasons]
        return "\n".join(lines)


def _stable(st: dict) -> str:
    """', same sign in 4 of 5 image subsets' (STABILITY_METHOD); '' when not measured."""
    return f", same sign in {st['same_sign']} of {st['measured']} image subsets" if st.get("measured") else ""


# -- pure comparison over arrays ---------------------------------------------------------------------------
def ties(logits: np.ndarray, lsb: float | np.ndarray | None) -> np.ndarray:
    """(M,) bool: TIE_RULE on one side's logits (M, K)."""
    top2 = np.sort(np.asarray(logits, np.float64), axis=1)[:, -2:]  # (M, 2)
    gap = top2[:, 1] - top2[:, 0]
    if lsb is None:
        return gap == 0
    return gap < 0.5 * float(np.min(lsb))


def _agreement(pred_r: np.ndarray, pred_o: np.ndarray, tie_r: np.ndarray, *, tie_o: np.ndarray) -> Agreement:
    same, clear = pred_r == pred_o, ~(tie_r | tie_o)
    return Agreement(n=len(same), agree=int(same.sum()), ties_ref=int(tie_r.sum()), ties_out=int(tie_o.sum()),
                     n_nontie=int(clear.sum()), agree_nontie=int((same & clear).sum()))


def _success(clean_pred: np.ndarray, adv_pred: np.ndarray, labels: np.ndarray, *, target: int | None):
    """(eligible, success) per image, as `attack_success` counts them."""
    if target is None:
        eligible = clean_pred == labels
        return eligible, eligible & (adv_pred != clean_pred)
    eligible = labels != target
    return eligible, eligible & (adv_pred == target)


def compare_outputs(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, *, patch: np.ndarray,
                    test_index: np.ndarray, targets: Sequence[int | None], lsb: float | np.ndarray | None,
                    patch_names: Sequence[str] | None = None, gate: Gate = Gate(), ref_name: str = "fakequant",
                    out_name: str = "deployed", lsb_source: str = "") -> Comparison:
    """Compare two sides' logits on the same replay samples.

    Args:
        ref, out: (M, K) logits of the reference (fake-quant) and the deployed runtime, row = replay sample.
        labels: (M,) true labels.
        patch: (M,) patch index per sample, -1 = clean.
        test_index: (M,) test-split index; pairs each patched sample with the clean sample of its image.
        targets: the target class of each patch (None = untargeted), indexed by `patch`.
        lsb: one step of the reference logit grid, scalar or (K,); None for float models (raw units).
        patch_names: a display name per patch (default "patch <i>").
        lsb_source: how `lsb` was obtained (recorded in the result).

    Returns:
        Comparison, truthy when `gate` passes.

    Raises:
        QadtrError: shapes that do not match, or a patched sample with no clean sample of its image.

    Example:
        >>> res = compare_outputs(ref, out, labels, patch, test_index, [3], lsb=step)
        >>> assert res, str(res)
    """
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)  # (M, K)
    labels, patch, test_index = (np.asarray(a).reshape(-1) for a in (labels, patch, test_index))
    m = len(labels)
    _check_inputs(ref, out, labels, patch=patch, test_index=test_index, targets=targets)
    names = list(patch_names) if patch_names is not None else [f"patch {i}" for i in range(len(targets))]
    pred_r, pred_o = ref.argmax(1), out.argmax(1)  # (M,)
    tie_r, tie_o = ties(ref, lsb), ties(out, lsb)
    clean = patch == -1
    patches, attack = _compare_patches(pred_r, pred_o, labels, patch=patch, test_index=test_index,
                                       targets=targets, names=names)
    logits, per_sample = _logit_summary(ref, out, lsb, lsb_source=lsb_source, out_name=out_name)
    flagged = np.flatnonzero((pred_r != pred_o) | (attack != ""))
    disagreements = tuple(Disagreement(
        sample=int(i), test_index=int(test_index[i]), patch=int(patch[i]), label=int(labels[i]),
        pred_ref=int(pred_r[i]), pred_out=int(pred_o[i]), tie_ref=bool(tie_r[i]), tie_out=bool(tie_o[i]),
        attack=str(attack[i]), max_dlogit_lsb=None if lsb is None else float(per_sample[i])) for i in flagged)
    agree_c = _agreement(pred_r[clean], pred_o[clean], tie_r[clean], tie_o=tie_o[clean])
    agree_p = _agreement(pred_r[~clean], pred_o[~clean], tie_r[~clean], tie_o=tie_o[~clean])
    reasons = _gate_reasons(gate, agree_c, agree_p, extra_ties=int((tie_o & ~tie_r).sum()), m=m, patches=patches)
    return Comparison(ref=ref_name, out=out_name, n=m, clean=agree_c, patched=agree_p, patches=tuple(patches),
                      logits=logits, disagreements=disagreements, gate=gate, passed=not reasons,
                      reasons=tuple(reasons))


def _check_inputs(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, *, patch: np.ndarray,
                  test_index: np.ndarray, targets: Sequence[int | None]) -> None:
    """Raise QadtrError unless the arrays describe the same replay samples and every patch has a target."""
    m = len(labels)
    if ref.shape != out.shape or ref.ndim != 2 or ref.shape[0] != m or len(patch) != m or len(test_index) != m:
        raise QadtrError(f"logits {ref.shape} vs {out.shape}, {m} labels, {len(patch)} patch indices, "
                         f"{len(test_index)} test indices: they must describe the same replay samples")
    if len(patch) and int(patch.max(initial=-1)) >= len(targets):
        raise QadtrError(f"patch index {int(patch.max())} but only {len(targets)} patch targets given")


def _compare_patches(pred_r: np.ndarray, pred_o: np.ndarray, labels: np.ndarray, *, patch: np.ndarray,
                     test_index: np.ndarray, targets: Sequence[int | None],
                     names: Sequence[str]) -> tuple[list[PatchComparison], np.ndarray]:
    """Each patch's ASR on both sides and its paired difference; (patches, (M,) attack-outcome label per row)."""
    from qadtr.attacks import attack_success

    clean = patch == -1
    clean_row = {int(test_index[i]): int(i) for i in np.flatnonzero(clean)[::-1]}  # test image -> first clean row
    attack = np.full(len(labels), "", dtype=object)
    patches = []
    for k, target in enumerate(targets):
        rows = np.flatnonzero(patch == k)  # (n,)
        missing = sorted({int(t) for t in test_index[rows]} - set(clean_row))
        if missing:
            raise QadtrError(f"{names[k]}: no clean sample of test images {missing[:5]}; the replay must hold the "
                             "clean image of every patched one (re-make it with eval.replay.make_replay)")
        crow = np.array([clean_row[int(t)] for t in test_index[rows]], dtype=np.int64)  # (n,)
        el_r, ok_r = _success(pred_r[crow], pred_r[rows], labels[rows], target=target)
        el_o, ok_o = _success(pred_o[crow], pred_o[rows], labels[rows], target=target)
        both = el_r & el_o  # targeted: the same set on both sides; untargeted: clean-correct on both
        diff = PairedDifference(b=int((both & ok_o & ~ok_r).sum()), c=int((both & ok_r & ~ok_o).sum()),
                                n=int(both.sum()))
        ref_only, out_only = rows[ok_r & ~ok_o], rows[ok_o & ~ok_r]
        attack[ref_only], attack[out_only] = "ref-only", "deployed-only"
        patches.append(PatchComparison(
            index=k, name=names[k], target=target,
            asr_ref=attack_success(pred_r[crow], pred_r[rows], labels[rows], target=target).to_dict(),
            asr_out=attack_success(pred_o[crow], pred_o[rows], labels[rows], target=target).to_dict(),
            diff=diff, ref_only=tuple(int(i) for i in ref_only), out_only=tuple(int(i) for i in out_only),
            stability=stability(ok_o & ~ok_r, ok_r & ~ok_o, both, test_index=test_index[rows])))
    return patches, attack


def _logit_summary(ref: np.ndarray, out: np.ndarray, lsb: float | np.ndarray | None, *, lsb_source: str,
                   out_name: str) -> tuple[dict, np.ndarray]:
    """(Comparison.logits, (M,) each sample's largest |dlogit| in LSBs, raw units when `lsb` is None)."""
    from export._compare import compare

    step = 1.0 if lsb is None else lsb
    res = compare(ref, out, lsb=step, atol_lsb=0.5, max_mismatch_frac=1.0, name=f"{out_name} logits")
    per_sample = np.abs(out - ref) / np.broadcast_to(np.asarray(step, np.float64), ref.shape)  # (M, K)
    per_sample = per_sample.max(1) if len(ref) else per_sample.reshape(0)
    logits = {**res.to_dict(), "lsb": None if lsb is None else np.asarray(lsb, np.float64).reshape(-1).tolist(),
              "lsb_source": lsb_source or ("none: float reference, raw units" if lsb is None else "given")}
    if lsb is None:
        logits["max_abs_lsb"] = None
    return logits, per_sample


def _gate_reasons(gate: Gate, agree_c: Agreement, agree_p: Agreement, *, extra_ties: int, m: int,
                  patches: Sequence[PatchComparison]) -> list[str]:
    """Why `gate` fails (empty when it passes); `extra_ties`: samples tying on the deployed side only."""
    reasons = []
    for what, a in (("clean", agree_c), ("patched", agree_p)):
        if a.n_nontie and a.rate.value < gate.min_agree:
            reasons.append(f"{what} agreement {a.rate} < {100 * gate.min_agree:g}%")
    if m and extra_ties > gate.max_extra_ties * m:
        reasons.append(f"{extra_ties} of {m} samples tie on the deployed side only "
                       f"(> {100 * gate.max_extra_ties:g}%)")
    for p in patches:
        d = p.asr_out["asr"]["value"] - p.asr_ref["asr"]["value"]
        if abs(d) > gate.max_asr_diff:
            reasons.append(f"{p.name}: ASR differs by {100 * d:+.2f} pp (> {100 * gate.max_asr_diff:g} pp)")
    return reasons
