"""The attacker matrix's table from its result files: `python eval/results/attacker/summarise.py > SUMMARY.md`.

Reads every OUT/result.json that run.sh wrote beside this file and prints one Markdown row per (model, runtime):
(a) the replayed fake-quant universal patch, (b) the per-image query attack, (c) transfer-then-refine, on the
attacked images and on held-out ones, (d) the white-box patch on the exact arithmetic; each ASR with its n and
Wilson 95% CI, the budget and the queries-to-success median.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name: str) -> dict | None:
    p = HERE / name / "result.json"
    return json.loads(p.read_text())["_data"] if p.is_file() else None


def rate(d: dict | None) -> str:
    """'48.8% [45.5, 52.1] (n 886)' from an ASR dict ({'asr': {value, ci95, n}} or {value, ci95, n})."""
    if d is None:
        return "not run"
    r = d.get("asr", d)
    lo, hi = r["ci95"]
    return f"{100 * r['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n {r['n']})"


def row(model: str, runtime: str) -> str:
    per, ref, ex = (load(f"{model}_{runtime}_{s}") for s in ("perimage", "refine", "exact"))
    a = f"{100 * ref['refine']['replayed_asr']:.1f}% (n {ref['n']})" if ref else "not run"
    a_held = rate(ref["holdout"]["start_asr"]) if ref and ref.get("holdout") else "not run"
    b = rate(per["asr"]) if per else "not run"
    b_q = per["queries"]["to_success"]["p50"] if per else None
    c = rate(ref["asr"]) if ref else "not run"
    c_held = rate(ref["holdout"]["asr"]) if ref and ref.get("holdout") else "not run"
    d = d_cmp = "n/a (no exact torch forward for .onnx)" if runtime == "onnxrt" else "not run"
    if ex:
        rep = ex["replays"][runtime]
        d, d_cmp = rate(rep["exact"]), rate(rep["compare"])
        diff = rep["exact_minus_compare"]
        d += f"; minus (a): {100 * diff['value']:+.1f} pp [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]" \
            if diff else ""
        d += f" ({ex['semantics']})"
    return (f"| {model} | {runtime} | {a} / {a_held} | {b} (median {b_q} queries) | {c} / {c_held} | {d_cmp} | "
            f"{d} |")


def main() -> int:
    print("| model | runtime | (a) replayed fake-quant patch: attacked / held-out images | (b) per-image query attack, "
          "budget 250 | (c) refine, budget 250: attacked / held-out | (a) on the exact attack's replay images | "
          "(d) white-box on the exact arithmetic |")
    print("|---|---|---|---|---|---|---|")
    for model in ("w2a2", "w4a4"):
        for runtime in ("onnxrt", "litert-xnnpack", "litert-builtin"):
            print(row(model, runtime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
