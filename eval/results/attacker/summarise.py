"""The attacker matrix's table from its result files: `python eval/results/attacker/summarise.py > SUMMARY.md`.

Reads every OUT/result.json that run.sh wrote beside this file and prints one Markdown row per (model, runtime):
(a) the replayed fake-quant universal patch, (b) the per-image query attack, (c) transfer-then-refine, on the
attacked images and on held-out ones, (d) the white-box patch on the exact arithmetic, (e) the decision-based
universal patch (top-1 labels only), attacked / held-out; each ASR with its n and Wilson 95% CI, the budget and the
queries-to-success median.
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
    per, ref, ex, dec = (load(f"{model}_{runtime}_{s}") for s in ("perimage", "refine", "exact", "decision"))
    a = f"{100 * ref['refine']['replayed_asr']:.1f}% (n {ref['n']})" if ref else "not run"
    a_held = rate(ref["holdout"]["start_asr"]) if ref and ref.get("holdout") else "not run"
    b = rate(per["asr"]) if per else "not run"
    b_q = per["queries"]["to_success"]["p50"] if per else None
    c = rate(ref["asr"]) if ref else "not run"
    c_held = rate(ref["holdout"]["asr"]) if ref and ref.get("holdout") else "not run"
    d = d_cmp = "not run"
    if ex:
        rep = ex["replays"][runtime]
        d, d_cmp = rate(rep["exact"]), rate(rep["compare"])
        diff = rep["exact_minus_compare"]
        d += f"; minus (a): {100 * diff['value']:+.1f} pp [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]" \
            if diff else ""
        d += f" ({ex['semantics']})"
    e = f"{rate(dec['asr'])} / {rate(dec['holdout']['asr'])}" if dec and dec.get("holdout") else "not run"
    return (f"| {model} | {runtime} | {a} / {a_held} | {b} (median {b_q} queries) | {c} / {c_held} | {d_cmp} | "
            f"{d} | {e} |")


def same_patch(a: str, b: str) -> str:
    """'yes' when two runs wrote the same patch values and places, else 'no'."""
    import numpy as np

    pa, pb = (np.load(HERE / n / "patch.npz", allow_pickle=False) for n in (a, b))
    same = set(pa.files) == set(pb.files) and all(np.array_equal(pa[k], pb[k]) for k in pa.files
                                                  if k not in ("meta", "log"))
    return "yes" if same else "no"


def board_rows() -> list[str]:
    """The emulated-board cell (board.sh): each query attack on rpi4-emu beside the same flags on this host."""
    rows = ["| setting | device | ASR (attacked) | held out | median queries to success | query sessions (ssh starts) "
            "| same patch as this host |", "|---|---|---|---|---|---|---|"]
    for setting in ("perimage", "refine", "decision"):
        for dev in ("rpi4-emu", "local"):
            r = load(f"{dev}_w2a2_litert-xnnpack_{setting}")
            if r is None:
                rows.append(f"| {setting} | {dev} | not run | | | | |")
                continue
            held = rate(r["holdout"]["asr"]) if r.get("holdout") else "n/a"
            sess = (r.get("device") or {}).get("session")
            s_text = f"{sess['sessions']} ({sess['ssh_starts']}), {sess['requests']} requests" if sess else "in-process"
            same = same_patch(f"rpi4-emu_w2a2_litert-xnnpack_{setting}", f"local_w2a2_litert-xnnpack_{setting}") \
                if dev == "rpi4-emu" and load(f"local_w2a2_litert-xnnpack_{setting}") else ""
            rows.append(f"| {setting} | {dev} | {rate(r['asr'])} | {held} | {r['queries']['to_success']['p50']} | "
                        f"{s_text} | {same} |")
    return rows


def board_replay() -> list[str]:
    """(a) and (d) replayed on the board and on this host (board.sh's eval.on_device): clean top-1 and each ASR."""
    p = HERE / "rpi4-emu_replay" / "on_device.json"
    if not p.is_file():
        return ["(a) and (d) on the board: not run"]
    rows = ["| device | runtime | clean top-1 | (a) fake-quant patch | (d) exact-arithmetic patch (xnnpack) |",
            "|---|---|---|---|---|"]
    for r in json.loads(p.read_text())["runs"]:
        asr = {a["patch"]: a for a in r["asr"]}
        rows.append(f"| {r['device']} | {r['runtime']} | {rate(r['clean_accuracy'])} | "
                    f"{rate(asr['w2a2_universal_s10_t3.npz'])} | {rate(asr['w2a2_exact_xnnpack_s10_t3.npz'])} |")
    return rows


def main() -> int:
    print("| model | runtime | (a) replayed fake-quant patch: attacked / held-out images | (b) per-image query attack, "
          "budget 250 | (c) refine, budget 250: attacked / held-out | (a) on the exact attack's replay images | "
          "(d) white-box on the exact arithmetic | (e) decision-based universal, budget 250: attacked / held-out |")
    print("|---|---|---|---|---|---|---|---|")
    for model in ("w2a2", "w4a4", "def_qadtr_w4a4", "def_qat_w4a4"):  # defended.sh: QADT-R and its QAT baseline
        for runtime in ("onnxrt", "litert-xnnpack", "litert-builtin"):
            print(row(model, runtime))
    print("\nThe emulated board (board.sh): w2a2 on rpi4-emu's LiteRT XNNPACK (aarch64, Cortex-A72 under qemu-user), "
          "40 images, budget 50, beside the same attacks on this host's XNNPACK.\n")
    print("\n".join(board_rows()))
    print("\n(a) and (d) replayed on the board and on this host (300 test images, 278 not of class 3):\n")
    print("\n".join(board_replay()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
