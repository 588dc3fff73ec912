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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eval._compare_model import (ASR_NOTE, TIE_RULE, Agreement, Comparison, Disagreement, Gate, PatchComparison,
                                 compare_outputs, ties)
from qadtr._errors import QadtrError
from qadtr.progress import stage
from qadtr._stats import FAMILY_METHOD, PAIRED_METHOD, STABILITY_METHOD, family

if TYPE_CHECKING:
    from eval._runs import ModelKey

# the result types and the pure comparison live in eval._compare_model; these names stay importable from here
__all__ = ["ASR_NOTE", "ATTRIBUTED", "TIE_RULE", "Agreement", "Comparison", "Disagreement", "Gate", "PatchComparison",
           "across_devices", "across_line", "compare_outputs", "compare_runs", "compare_store", "document", "main",
           "ties"]


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


def _lsb(key: ModelKey, replay) -> tuple[np.ndarray | None, str]:
    """(the fake-quant logit grid's LSB per logit, where it came from); None without bits or a source checkpoint."""
    from eval._runs import LSB_SOURCE, logit_lsb

    lsb, source = None, ""
    if key.bits is not None and key.checkpoint:
        lsb = logit_lsb(key.checkpoint, key.bits, replay.info.hw)
        source = LSB_SOURCE.format(checkpoint=key.checkpoint, w=key.bits[0], a=key.bits[1])
    elif key.bits is not None:
        source = "unknown: source checkpoint not found, differences in raw units"
    return lsb, source


def _divergence(run, key: ModelKey, replay, *, out_logits: np.ndarray, why: dict[int, str], changed: str,
                semantics: str | None, divergence_images: int) -> dict:
    """The first layer whose integers differ on the `why` rows (eval._divergence), or why it was skipped."""
    from eval._divergence import Divergence, first_divergence
    from eval._runs import deploy_cached

    rows = list(why)
    if not divergence_images:
        div = Divergence(run.runtime, "", (), (), None, "not requested (divergence_images=0)")
    elif key.bits is None or not key.checkpoint:
        div = Divergence(run.runtime, "", (), (), None, "no integer activations (float model or checkpoint not found)")
    elif changed:
        div = Divergence(run.runtime, "", (), (), None, changed)
    else:
        net = deploy_cached(key.checkpoint, key.bits)
        div = first_divergence(net, run.runtime, run.artifact, images=replay.images[rows], samples=rows,
                               semantics=semantics, deployed=out_logits[rows] if semantics else None)
    divergence = div.to_dict()
    # the rerun uses this host's runtime, not the board's kernels
    if run.device != "local" and not div.skipped and not semantics:
        divergence["method"] += f"; rerun on this host ({platform.machine()}), the run was on device {run.device!r}"
    for image in divergence["images"]:
        image["why"] = why[image["sample"]]
    return divergence


def compare_runs(store, ref_run, run, *, gate: Gate = Gate(), divergence_images: int = 16) -> Comparison:
    """Compare deployed `run` with the fake-quant `ref_run` (RunRecords of `store`, same replay).

    Raises:
        QadtrError: different replays, incomplete or damaged runs, a replay or source checkpoint that changed
            since the runs (eval._integrity); a replaced artifact is not rerun (divergence, attribution skipped).
    """
    from eval._integrity import artifact_change, check_source, replay_of
    from eval._runs import model_key, output_step
    from qadtr.bits import bits_name

    if ref_run.replay_sha256 != run.replay_sha256:
        raise QadtrError(f"runs {ref_run.run_id[:12]} and {run.run_id[:12]} replayed different files; compare runs "
                         "of one replay")
    replay, key = replay_of(run), model_key(ref_run)
    stage(f"eval.compare: {run.device} {run.runtime} vs {ref_run.runtime} on {len(replay)} images (agreement, "
          "attribution, divergence)")
    check_source(key, ref_run)  # before its LSB grid or deploy net is computed
    ref_logits, out_logits = store.logits(ref_run.run_id), store.logits(run.run_id)
    changed = artifact_change(run)  # before anything reads or reruns the artifact
    lsb, source = _lsb(key, replay)
    res = compare_outputs(ref_logits, out_logits, replay.labels, patch=replay.patch,
                          test_index=replay.test_index, targets=[p.target for p in replay.info.patches], lsb=lsb,
                          patch_names=[p.file for p in replay.info.patches], gate=gate, ref_name=ref_run.runtime,
                          out_name=run.runtime, lsb_source=source)
    step = None if changed else output_step(run.artifact)
    if step is not None:
        res.logits["out_step"] = step
        res.logits["out_step_lsb"] = None if lsb is None else float(step / np.min(lsb))
    delta = None if lsb is None else (np.abs(out_logits.astype(np.float64) - ref_logits) / lsb).max(1)  # (M,)
    why = _divergence_rows(res, delta, divergence_images)
    attribution = _attribute(run, replay, out_logits, changed=changed)
    divergence = _divergence(run, key, replay, out_logits=out_logits, why=why, changed=changed,
                             semantics=attribution.get("explained_by"), divergence_images=divergence_images)
    info = {"model": f"{Path(key.checkpoint).parent.name or '?'} {bits_name(key.bits)}", "bits": key.bits,
            "checkpoint": key.checkpoint, "source_sha256": key.source_sha256, "artifact": run.artifact,
            "device": run.device, "ref_device": ref_run.device, "emulated": run.emulated, "replay": run.replay,
            "replay_sha256": run.replay_sha256, "divergence_images": len(why)}
    return dataclasses.replace(res, kernels={"ref": ref_run.kernels, "out": run.kernels},
                               runs={"ref": ref_run.run_id, "out": run.run_id}, info=info, divergence=divergence,
                               attribution=attribution)


ATTRIBUTED = ("onnxrt", "litert-xnnpack", "litert-builtin", "litert-ref")  # runtimes the executor has semantics for


def _attribute(run, replay, logits: np.ndarray, *, changed: str) -> dict:
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
    with Store(store_path, readonly=True) as store:
        pairs, skipped = pair_runs(store.runs(), reference=reference, only=runs)
        return [compare_runs(store, ref, run, gate=gate, divergence_images=divergence_images)
                for ref, run in pairs], skipped


def across_devices(store_path: str | Path, reference_device: str = "local") -> list[dict]:
    """The same runtime and artifact on other devices vs `reference_device`, logit by logit (identical bytes
    in, so identical integer kernels give identical logits): one row per (runtime, artifact, device)."""
    from eval.store import IncompleteRun, Store

    rows = []
    with Store(store_path, readonly=True) as store:
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
    from qadtr._cli import ArgumentParser, check_writable, run_cli  # ArgumentParser: one line and exit 1 for a bad flag

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

        check_writable(args.out, "folder")  # before the store is read and the runs rerun, not at compare.json
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
