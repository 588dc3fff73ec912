"""Fake-quant vs deployed, image by image: `python -m eval.compare --store results/results.sqlite --out DIR`.

For every deployed run in the store (eval.on_device) and the fake-quant run of the same model and bit
width on the same replay file, compares per sample:
- prediction agreement on clean and on patched inputs (argmax; ties counted apart, see TIE_RULE);
- each patch's ASR on both sides (`qadtr.attacks.attack_success`) and the paired difference
  deployed - reference with a 95% CI (`qadtr._stats.PAIRED_METHOD`: the same images on both sides);
- which attacked images flip, and which way (the attack succeeds only on the reference / only deployed);
- max |dlogit| in LSBs of the fake-quant logit grid (`eval._runs.logit_lsb`);
- for the disagreeing images (at most `--divergence-images`; room left goes to the samples whose logits
  differ most), the first layer whose integer activations differ between the two sides (`eval._divergence`);
- the kernel set of every runtime, as its runner reported it.

Writes DIR/compare.json and the HTML report (eval.report) beside it. A comparison is truthy when the
deployed side agrees within its `Gate` (P8); `--strict` turns a failed gate into exit code 1.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError
from qadtr.progress import stage
from qadtr._stats import FAMILY_METHOD, PAIRED_METHOD, STABILITY_METHOD, PairedDifference, Proportion, family, stability

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


def _agreement(pred_r: np.ndarray, pred_o: np.ndarray, tie_r: np.ndarray, tie_o: np.ndarray) -> Agreement:
    same, clear = pred_r == pred_o, ~(tie_r | tie_o)
    return Agreement(n=len(same), agree=int(same.sum()), ties_ref=int(tie_r.sum()), ties_out=int(tie_o.sum()),
                     n_nontie=int(clear.sum()), agree_nontie=int((same & clear).sum()))


def _success(clean_pred: np.ndarray, adv_pred: np.ndarray, labels: np.ndarray, target: int | None):
    """(eligible, success) per image, as `attack_success` counts them."""
    if target is None:
        eligible = clean_pred == labels
        return eligible, eligible & (adv_pred != clean_pred)
    eligible = labels != target
    return eligible, eligible & (adv_pred == target)


def compare_outputs(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, patch: np.ndarray,
                    test_index: np.ndarray, targets: Sequence[int | None], *, lsb: float | np.ndarray | None,
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
    from export._compare import compare
    from qadtr.attacks import attack_success

    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)  # (M, K)
    labels, patch, test_index = (np.asarray(a).reshape(-1) for a in (labels, patch, test_index))
    m = len(labels)
    if ref.shape != out.shape or ref.ndim != 2 or ref.shape[0] != m or len(patch) != m or len(test_index) != m:
        raise QadtrError(f"logits {ref.shape} vs {out.shape}, {m} labels, {len(patch)} patch indices, "
                         f"{len(test_index)} test indices: they must describe the same replay samples")
    if len(patch) and int(patch.max(initial=-1)) >= len(targets):
        raise QadtrError(f"patch index {int(patch.max())} but only {len(targets)} patch targets given")
    names = list(patch_names) if patch_names is not None else [f"patch {i}" for i in range(len(targets))]
    pred_r, pred_o = ref.argmax(1), out.argmax(1)  # (M,)
    tie_r, tie_o = ties(ref, lsb), ties(out, lsb)
    clean = patch == -1
    clean_row = {int(test_index[i]): int(i) for i in np.flatnonzero(clean)[::-1]}  # test image -> first clean row

    attack = np.full(m, "", dtype=object)
    patches = []
    for k, target in enumerate(targets):
        rows = np.flatnonzero(patch == k)  # (n,)
        missing = sorted({int(t) for t in test_index[rows]} - set(clean_row))
        if missing:
            raise QadtrError(f"{names[k]}: no clean sample of test images {missing[:5]}; the replay must hold the "
                             "clean image of every patched one (re-make it with eval.replay.make_replay)")
        crow = np.array([clean_row[int(t)] for t in test_index[rows]], dtype=np.int64)  # (n,)
        el_r, ok_r = _success(pred_r[crow], pred_r[rows], labels[rows], target)
        el_o, ok_o = _success(pred_o[crow], pred_o[rows], labels[rows], target)
        both = el_r & el_o  # targeted: the same set on both sides; untargeted: clean-correct on both
        diff = PairedDifference(b=int((both & ok_o & ~ok_r).sum()), c=int((both & ok_r & ~ok_o).sum()),
                                n=int(both.sum()))
        ref_only, out_only = rows[ok_r & ~ok_o], rows[ok_o & ~ok_r]
        attack[ref_only], attack[out_only] = "ref-only", "deployed-only"
        patches.append(PatchComparison(
            index=k, name=names[k], target=target,
            asr_ref=attack_success(pred_r[crow], pred_r[rows], labels[rows], target).to_dict(),
            asr_out=attack_success(pred_o[crow], pred_o[rows], labels[rows], target).to_dict(),
            diff=diff, ref_only=tuple(int(i) for i in ref_only), out_only=tuple(int(i) for i in out_only),
            stability=stability(ok_o & ~ok_r, ok_r & ~ok_o, both, test_index[rows])))

    step = 1.0 if lsb is None else lsb
    res = compare(ref, out, lsb=step, atol_lsb=0.5, max_mismatch_frac=1.0, name=f"{out_name} logits")
    per_sample = np.abs(out - ref) / np.broadcast_to(np.asarray(step, np.float64), ref.shape)  # (M, K)
    per_sample = per_sample.max(1) if m else per_sample.reshape(0)
    logits = {**res.to_dict(), "lsb": None if lsb is None else np.asarray(lsb, np.float64).reshape(-1).tolist(),
              "lsb_source": lsb_source or ("none: float reference, raw units" if lsb is None else "given")}
    if lsb is None:
        logits["max_abs_lsb"] = None

    flagged = np.flatnonzero((pred_r != pred_o) | (attack != ""))
    disagreements = tuple(Disagreement(
        sample=int(i), test_index=int(test_index[i]), patch=int(patch[i]), label=int(labels[i]),
        pred_ref=int(pred_r[i]), pred_out=int(pred_o[i]), tie_ref=bool(tie_r[i]), tie_out=bool(tie_o[i]),
        attack=str(attack[i]), max_dlogit_lsb=None if lsb is None else float(per_sample[i])) for i in flagged)

    agree_c = _agreement(pred_r[clean], pred_o[clean], tie_r[clean], tie_o[clean])
    agree_p = _agreement(pred_r[~clean], pred_o[~clean], tie_r[~clean], tie_o[~clean])
    reasons = []
    for what, a in (("clean", agree_c), ("patched", agree_p)):
        if a.n_nontie and a.rate.value < gate.min_agree:
            reasons.append(f"{what} agreement {a.rate} < {100 * gate.min_agree:g}%")
    extra = int((tie_o & ~tie_r).sum())
    if m and extra > gate.max_extra_ties * m:
        reasons.append(f"{extra} of {m} samples tie on the deployed side only (> {100 * gate.max_extra_ties:g}%)")
    for p in patches:
        d = p.asr_out["asr"]["value"] - p.asr_ref["asr"]["value"]
        if abs(d) > gate.max_asr_diff:
            reasons.append(f"{p.name}: ASR differs by {100 * d:+.2f} pp (> {100 * gate.max_asr_diff:g} pp)")
    return Comparison(ref=ref_name, out=out_name, n=m, clean=agree_c, patched=agree_p, patches=tuple(patches),
                      logits=logits, disagreements=disagreements, gate=gate, passed=not reasons,
                      reasons=tuple(reasons))


# -- runs in a store ---------------------------------------------------------------------------------------
def _divergence_rows(res: Comparison, per_sample_lsb: np.ndarray | None, limit: int) -> dict[int, str]:
    """Replay rows to rerun, with why: prediction changes first (clean, then patched), then attack-outcome
    changes, then (room left) the samples whose logits differ most, by more than half an LSB."""
    rows = sorted(res.disagreements, key=lambda d: (d.pred_ref == d.pred_out, d.patch != -1, d.sample))
    why = {d.sample: "prediction differs" if d.pred_ref != d.pred_out else "attack outcome differs"
           for d in rows[:limit]}
    if per_sample_lsb is not None and len(why) < limit:
        for i in np.argsort(-per_sample_lsb, kind="stable"):
            if len(why) >= limit or per_sample_lsb[i] <= 0.5:
                break
            why.setdefault(int(i), f"logits differ by {per_sample_lsb[i]:.3g} LSB")
    return why


def compare_runs(store, ref_run, run, *, gate: Gate = Gate(), divergence_images: int = 16) -> Comparison:
    """Compare deployed `run` with the fake-quant `ref_run` (RunRecords of `store`, same replay).

    Raises:
        QadtrError: different replays, incomplete or damaged runs, a replay or source checkpoint that changed
            since the runs (eval._integrity); a replaced artifact is not rerun (divergence, attribution skipped).
    """
    from eval._divergence import Divergence, first_divergence
    from eval._integrity import artifact_change, check_source, replay_of
    from eval._runs import LSB_SOURCE, bits_name, deploy_cached, logit_lsb, model_key, output_step

    if ref_run.replay_sha256 != run.replay_sha256:
        raise QadtrError(f"runs {ref_run.run_id[:12]} and {run.run_id[:12]} replayed different files; compare runs "
                         "of one replay")
    replay, key = replay_of(run), model_key(ref_run)
    stage(f"eval.compare: {run.device} {run.runtime} vs {ref_run.runtime} on {len(replay)} images (agreement, "
          "attribution, divergence)")
    check_source(key, ref_run)  # before its LSB grid or deploy net is computed
    ref_logits, out_logits = store.logits(ref_run.run_id), store.logits(run.run_id)
    changed = artifact_change(run)  # before anything reads or reruns the artifact
    lsb, source = None, ""
    if key.bits is not None and key.checkpoint:
        lsb = logit_lsb(key.checkpoint, key.bits, replay.info.hw)
        source = LSB_SOURCE.format(checkpoint=key.checkpoint, w=key.bits[0], a=key.bits[1])
    elif key.bits is not None:
        source = "unknown: source checkpoint not found, differences in raw units"
    res = compare_outputs(ref_logits, out_logits, replay.labels, replay.patch,
                          replay.test_index, [p.target for p in replay.info.patches], lsb=lsb,
                          patch_names=[p.file for p in replay.info.patches], gate=gate, ref_name=ref_run.runtime,
                          out_name=run.runtime, lsb_source=source)
    step = None if changed else output_step(run.artifact)
    if step is not None:
        res.logits["out_step"] = step
        res.logits["out_step_lsb"] = None if lsb is None else float(step / np.min(lsb))
    delta = None if lsb is None else (np.abs(out_logits.astype(np.float64) - ref_logits) / lsb).max(1)  # (M,)
    why = _divergence_rows(res, delta, divergence_images)
    rows = list(why)
    attribution = _attribute(run, replay, out_logits, changed)
    semantics = attribution.get("explained_by")
    if not divergence_images:
        div = Divergence(run.runtime, "", (), (), None, "not requested (divergence_images=0)")
    elif key.bits is None or not key.checkpoint:
        div = Divergence(run.runtime, "", (), (), None, "no integer activations (float model or checkpoint not found)")
    elif changed:
        div = Divergence(run.runtime, "", (), (), None, changed)
    else:
        net = deploy_cached(key.checkpoint, key.bits)
        div = first_divergence(net, run.runtime, run.artifact, replay.images[rows], rows, semantics=semantics,
                               deployed=out_logits[rows] if semantics else None)
    divergence = div.to_dict()
    if run.device != "local" and not div.skipped and not semantics:  # the rerun uses this host's runtime, not the board's kernels
        divergence["method"] += f"; rerun on this host ({platform.machine()}), the run was on device {run.device!r}"
    for image in divergence["images"]:
        image["why"] = why[image["sample"]]
    info = {"model": f"{Path(key.checkpoint).parent.name or '?'} {bits_name(key.bits)}", "bits": key.bits,
            "checkpoint": key.checkpoint, "source_sha256": key.source_sha256, "artifact": run.artifact,
            "device": run.device, "ref_device": ref_run.device, "emulated": run.emulated, "replay": run.replay,
            "replay_sha256": run.replay_sha256, "divergence_images": len(rows)}
    return dataclasses.replace(res, kernels={"ref": ref_run.kernels, "out": run.kernels},
                               runs={"ref": ref_run.run_id, "out": run.run_id}, info=info, divergence=divergence,
                               attribution=attribution)


ATTRIBUTED = ("onnxrt", "litert-xnnpack", "litert-builtin", "litert-ref")  # runtimes the executor has semantics for


def _attribute(run, replay, logits: np.ndarray, changed: str) -> dict:
    """devices.intexec.attribute for a deployed run, or {"skipped": why} (no model of it, or `changed`: the
    artifact is not here or not the file the run used, eval._integrity.artifact_change)."""
    from devices.intexec import attribute

    if run.runtime not in ATTRIBUTED:
        return {"skipped": f"no executor semantics models runtime {run.runtime!r}", "summary": ""}
    if changed:
        return {"skipped": changed, "summary": f"not attributed: {changed}"}
    return attribute(Path(run.artifact), replay.images, logits, runtime=run.runtime,
                     host=(run.device_info or {}).get("host"))


def compare_store(store_path: str | Path, *, reference: str = "fakequant", runs: Sequence[str] = (),
                  gate: Gate = Gate(), divergence_images: int = 16) -> tuple[list[Comparison], list[dict]]:
    """Every deployed run of the store against its fake-quant run; also the runs left out, with why."""
    from eval._runs import pair_runs
    from eval.store import Store

    if not Path(store_path).is_file():
        raise QadtrError(f"{store_path} not found; make it with `python -m eval.on_device ... --store {store_path}`")
    with Store(store_path) as store:
        pairs, skipped = pair_runs(store.runs(), reference=reference, only=runs)
        return [compare_runs(store, ref, run, gate=gate, divergence_images=divergence_images)
                for ref, run in pairs], skipped


def across_devices(store_path: str | Path, reference_device: str = "local") -> list[dict]:
    """The same runtime and artifact on other devices vs `reference_device`, logit by logit (identical bytes
    in, so identical integer kernels give identical logits): one row per (runtime, artifact, device)."""
    from eval.store import IncompleteRun, Store

    rows = []
    with Store(store_path) as store:
        runs = [r for r in store.runs() if r.runtime != "fakequant"]
        ref = {(r.runtime, r.artifact_sha256, r.replay_sha256): r for r in runs if r.device == reference_device}
        for r in runs:
            base = ref.get((r.runtime, r.artifact_sha256, r.replay_sha256))
            if r.device == reference_device or base is None:
                continue
            try:
                a, b = store.logits(base.run_id), store.logits(r.run_id)  # (M, K) each
            except IncompleteRun:
                continue  # nothing to compare yet; a damaged run is refused (StoreError), never skipped
            rows.append({"runtime": r.runtime, "artifact": Path(r.artifact).name, "device": r.device,
                         "reference_device": reference_device, "kernels": r.kernels, "logits": int(a.size),
                         "identical": bool(np.array_equal(a, b)), "differing": int((a != b).sum()),
                         "max_abs": float(np.abs(a - b).max()), "argmax_agree": float(np.mean(a.argmax(1) == b.argmax(1)))})
    return rows


def across_line(a: dict) -> str:
    """One line of `across_devices`: e.g. `onnxrt w4.onnx on rpi4-emu vs local: bit-identical`."""
    same = "bit-identical" if a["identical"] else (f"{a['differing']} of {a['logits']} logits differ (max "
                                                   f"{a['max_abs']:.3g}), argmax agree {100 * a['argmax_agree']:.2f}%")
    return f"{a['runtime']} {a['artifact']} on {a['device']} vs {a['reference_device']}: {same}"


def document(results: list[Comparison], skipped: list[dict], *, store: str | Path, reference: str = "fakequant",
             gate: Gate = Gate()) -> dict:
    """compare.json: the comparisons, the runs left out, the same runtime across devices, and every rule.

    Every patch's ASR difference also gets its place in the family of all differences of this document
    (`qadtr._stats.family`: Holm-adjusted McNemar p, `significant`, Bonferroni-simultaneous CI)."""
    from devices._host import fingerprint
    from devices.intexec import METHOD

    comparisons = [r.to_dict() for r in results]
    flat = [(c, i) for c, r in zip(comparisons, results) for i in range(len(r.patches))]
    for (c, i), fam in zip(flat, family([r.patches[i].diff for r in results for i in range(len(r.patches))])):
        c["patches"][i]["family"] = fam
    return {"argv": sys.argv, "store": str(store), "reference": reference, "tie_rule": TIE_RULE, "asr_note": ASR_NOTE,
            "paired_ci": PAIRED_METHOD, "family_method": FAMILY_METHOD, "stability_method": STABILITY_METHOD,
            "attribution_method": METHOD, "gate": gate.describe(),
            "comparisons": comparisons, "skipped": skipped, "across_devices": across_devices(store),
            "host": fingerprint()}


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, help="the SQLite result store of eval.on_device")
    p.add_argument("--reference", default="fakequant", help="runtime every other run is compared with")
    p.add_argument("--runs", nargs="+", default=(), help="compare only these runs (run ids or unique prefixes)")
    p.add_argument("--out", required=True, help="folder for compare.json, report.html and report.json")
    p.add_argument("--min-agree", type=float, default=Gate.min_agree, help="gate: argmax agreement (non-tie)")
    p.add_argument("--max-asr-diff", type=float, default=Gate.max_asr_diff, help="gate: largest |ASR difference|")
    p.add_argument("--max-extra-ties", type=float, default=Gate.max_extra_ties,
                   help="gate: largest fraction of samples tying on the deployed side only")
    p.add_argument("--divergence-images", type=int, default=16, help="disagreeing images rerun layer by layer")
    p.add_argument("--transfer", default=None, help="an eval.transfer transfer.json for the report's heatmap")
    p.add_argument("--patches", default=None, help="the patch folder, for the report's thumbnails")
    p.add_argument("--no-report", action="store_true", help="write compare.json only")
    p.add_argument("--strict", action="store_true", help="exit 1 when a comparison fails its gate")
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr._config import write_json

        try:
            gate = Gate(args.min_agree, args.max_asr_diff, args.max_extra_ties)
        except ValueError as e:
            raise QadtrError(str(e)) from None
        if args.divergence_images < 0:
            raise QadtrError(f"--divergence-images {args.divergence_images}: pass 0 (none) or a positive count")
        results, skipped = compare_store(args.store, reference=args.reference, runs=args.runs, gate=gate,
                                         divergence_images=args.divergence_images)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "compare.json", document(results, skipped, store=args.store, reference=args.reference,
                                                  gate=gate))
        for r in results:
            print(r)
        for s in skipped:
            print(f"skipped {s['runtime']} run {s['run'][:12]}: {s['reason']}")
        for a in across_devices(args.store):
            print(across_line(a))
        print(f"wrote {out / 'compare.json'} ({len(results)} comparisons)")
        if not args.no_report:
            from eval.report import write_report

            page = write_report(args.store, out, compare=out / "compare.json", transfer=args.transfer,
                                patches=args.patches)
            print(f"report: {page}")
        if not results:
            raise QadtrError(f"nothing to compare in {args.store}: {len(skipped)} runs without a {args.reference} "
                             "partner; run eval.on_device with fakequant among --runtimes")
        failed = [f"{r.out} ({r.info.get('model')})" for r in results if not r]
        if args.strict and failed:
            raise QadtrError(f"{len(failed)} comparisons outside the gate ({gate.describe()}): {', '.join(failed)}")

    return run_cli("eval.compare", body, argv)


if __name__ == "__main__":
    sys.exit(main())
