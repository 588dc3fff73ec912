"""The reproduction report: our defence numbers side by side with the papers' claims, each with a verdict.

    python -m eval.reproduction --out eval/results/reproduction

Reads what the other commands wrote (defaults: the committed result folders) and computes every figure:
    --defense        folders of `eval.defense` runs (defense.json, searched recursively; one budget for all)
    --amplification  `eval.amplification`'s amplification.json (DQ's error amplification)
    --transfer       `eval.transfer` result folders (the undefended bit-width transfer matrices)
    --zoo            the zoo: clean accuracy (10,000 test images) and training budget of each checkpoint
    --cost           `bench/defense_cost.py` results (the newest file is used)
    --deployed       `eval.on_device` pipeline folders whose report/compare.json replays defended models
Writes OUT/reproduction.json and OUT/reproduction.md. A claim's verdict is computed by the rule printed
next to it; a missing input makes its claim "not measured", never a guess.

Patch threats are compared across recipes on the set every recipe was measured on (`common_threats`):
a threat is (attack, size, source): white-box at the evaluated bit width, made at another bit width,
adaptive (A-QAPA over all bit widths), or transfer from the undefended float surrogate. Each recipe's
own "seen" kind is in that set, so no recipe is scored on a set that favours it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from eval import _reproduction_claims as _claims
from eval._reproduction_markdown import markdown
from eval._reproduction_tables import (BASELINE, PATCH_CATEGORIES_SKIP, RECIPES, _mean_or_none, _order, _pp,
                                       common_threats, mean_asr, patch_table, threat_id)
from qadtr._errors import QadtrError

# the table helpers live in eval._reproduction_tables and the page in eval._reproduction_markdown; these names
# stay importable from here
__all__ = ["BASELINE", "PATCH_CATEGORIES_SKIP", "RECIPES", "ablation", "build", "claims", "common_threats",
           "deployed_rows", "load_defense", "main", "markdown", "masking_flags", "mean_asr", "patch_table",
           "summary", "threat_id", "zoo_rows"]


def load_defense(folders: list[Path]) -> tuple[list[dict], dict]:
    from qadtr._config import read_json

    rows, budget = [], None
    files = sorted({f for d in folders for f in Path(d).rglob("defense.json")})
    for f in files:
        d = read_json(f)
        if budget is not None and d["budget"] != budget:
            raise QadtrError(f"{f} used another budget than the other defense.json files; rerun it with the same "
                             "flags or leave it out of --defense")
        budget = d["budget"]
        rows += [{**r, "file": str(f)} for r in d["rows"]]
    return rows, (budget or {})


def claims(rows: list[dict], amp: list[dict], transfer: list[dict], *, cost: dict | None) -> list[dict]:
    """Each paper claim with our figure and a verdict (rule stated in `rule`)."""
    table = patch_table(rows)
    by_recipe = {r["recipe"]: r["checkpoint"] for r in rows if r["checkpoint"].startswith("resnet20_def_")}
    bits = sorted({r["evaluated_on"] for r in rows if r["evaluated_on"].startswith("w")})
    return [_claims.undefended_2bit(table, transfer), _claims.qadtr_vs_pbat_dwq(table, by_recipe, bits),
            _claims.pbat_unseen(table, by_recipe, bits), _claims.dq_linf(rows, by_recipe.get("dq"), bits),
            *_claims.amplification(amp, by_recipe.get("dq")), _claims.training_cost(cost)]


def masking_flags(rows: list[dict]) -> list[dict]:
    """Networks where a transfer patch from the float surrogate beats the white-box patch of the same kind.

    `significant`: the Wilson 95% intervals do not overlap (transfer above); otherwise within noise.
    """
    def key(r: dict, threat: str | None) -> tuple:
        return r["checkpoint"], r["evaluated_on"], threat

    white = {key(r, threat_id(r)): r for r in rows if (threat_id(r) or "").endswith(" white-box")}
    flags = []
    for r in rows:
        if r["category"] != "transfer":
            continue
        wb = white.get(key(r, f"{r['attack']} {100 * r['size']:.1f}% white-box"))  # same kind and size
        if wb and r["asr"]["value"] > wb["asr"]["value"]:
            t, w = r["asr"], wb["asr"]
            flags.append({"network": f"{r['checkpoint']}:{r['evaluated_on']}", "attack": r["attack"],
                          "transfer": t["value"], "white_box": w["value"], "significant": t["ci95"][0] > w["ci95"][1],
                          "text": f"{r['checkpoint']}:{r['evaluated_on']} {r['attack']}: transfer {_pp(t['value'])}% "
                                  f"[{_pp(t['ci95'][0])}, {_pp(t['ci95'][1])}] > white-box {_pp(w['value'])}% "
                                  f"[{_pp(w['ci95'][0])}, {_pp(w['ci95'][1])}]"})
    return flags


def zoo_rows(zoo: Path, names: list[str]) -> list[dict]:
    from qadtr._config import read_json

    out = []
    for name in names:
        mj, hist = zoo / name / "model.json", zoo / name / "history.json"
        if not mj.is_file():
            continue
        d = read_json(mj)["_data"]
        h = read_json(hist) if hist.is_file() else []
        train = d["train"]["_data"]
        rc = (train.get("recipe_config") or {}).get("_data", {})
        out.append({"checkpoint": name, "recipe": train["recipe"], "epochs": train["epochs"],
                    "steps": d["metrics"].get("steps"), "wall_min": round(h[-1]["elapsed_s"] / 60, 1) if h else None,
                    "off": [k for k in ("aqapa", "dbwt", "gir") if rc.get(k) is False],
                    "test_acc": {k: v["value"] for k, v in d["metrics"]["test_acc"].items()}})
    return out


def deployed_rows(folders: list[Path]) -> list[dict]:
    """Per (model, runtime) from eval.compare's compare.json: mean patch ASR on fake-quant vs deployed."""
    from qadtr._config import read_json

    out = []
    for f in sorted({f for d in folders for f in Path(d).rglob("compare.json")}):
        for c in read_json(f)["comparisons"]:
            ps = c.get("patches", [])
            if not ps:
                continue
            ref = [p["asr_ref"]["asr"]["value"] for p in ps]
            dep = [p["asr_out"]["asr"]["value"] for p in ps]
            worst = max(ps, key=lambda p: abs(p["diff"]["value"]))
            out.append({"model": c["info"]["model"], "runtime": c["out"], "patches": len(ps),
                        "clean_agree": c["clean"]["rate"]["value"], "patched_agree": c["patched"]["rate"]["value"],
                        "asr_fakequant": float(np.mean(ref)), "asr_deployed": float(np.mean(dep)),
                        "worst_diff": worst["diff"]["value"], "worst_ci95": worst["diff"]["ci95"],
                        "worst_patch": worst["name"], "passed": bool(c["passed"]), "file": str(f)})
    return out


def ablation(table: dict, zoo: list[dict]) -> list[dict]:
    """QADT-R vs QADT-R minus each component: mean ASR over the threats all of them were measured on."""
    full = "resnet20_def_qadtr"
    abl = sorted({ck for ck, _ in table if ck.startswith("resnet20_abl_")})
    acc = {z["checkpoint"]: z["test_acc"] for z in zoo}
    out = []
    for key in sorted({k for ck, k in table if ck == full}):
        nets = [(full, key)] + [(a, key) for a in abl if (a, key) in table]
        threats = common_threats(table, nets)
        base = mean_asr(table, (full, key), threats)
        for ck, _ in nets:
            m = mean_asr(table, (ck, key), threats)
            out.append({"checkpoint": ck, "bits": key, "threats": len(threats), "mean_asr": m,
                        "delta_vs_full": None if m is None or base is None or ck == full else m - base,
                        "clean": acc.get(ck, {}).get(key),
                        "white_box": _mean_or_none(table[(ck, key)].get("universal 6.2% white-box")),
                        "adaptive": _mean_or_none(table[(ck, key)].get("aqapa 6.2% adaptive"))})
    return out


def summary(rows: list[dict], table: dict, zoo: list[dict]) -> list[dict]:
    """One row per recipe (and ablation) and bit width: clean top-1, mean patch ASR over the threats every
    network at that bit width was measured on, the two white-box patch kinds and PGD-8 robust accuracy."""
    acc = {z["checkpoint"]: z["test_acc"] for z in zoo}
    top_eps = max((r.get("eps255") or 0) for r in rows)
    pgd = {(r["checkpoint"], r["evaluated_on"]): r["robust_acc"]["value"] for r in rows
           if r["category"] == "pgd" and r.get("eps255") == top_eps}
    out = []
    for key in sorted({k for _, k in table}, key=lambda k: (k == "random", k)):  # DWQ's random precision last
        nets = sorted((n for n in table if n[1] == key), key=lambda n: _order(n[0]))
        threats = common_threats(table, nets)
        for ck, _ in nets:
            t = table[(ck, key)]
            out.append({"checkpoint": ck, "bits": key, "clean": acc.get(ck, {}).get(key), "threats": len(threats),
                        "mean_asr": mean_asr(table, (ck, key), threats),
                        "universal_wb": _mean_or_none(t.get("universal 6.2% white-box")),
                        "location_wb": _mean_or_none(t.get("location 6.2% white-box")),
                        "pgd_max_eps_robust": pgd.get((ck, key))})
    return out


def build(*, defense: list[Path], amplification: Path | None, transfer: list[Path], zoo: Path,
          cost: Path | None, deployed: list[Path]) -> dict:
    from qadtr._config import read_json

    rows, budget = load_defense(defense)
    if not rows:
        raise QadtrError(f"no defense.json under {', '.join(map(str, defense))}; run python -m eval.defense first")
    amp = read_json(amplification / "amplification.json")["rows"] if amplification and \
        (amplification / "amplification.json").is_file() else []
    tr = [r for d in transfer if (d / "transfer.json").is_file() for r in read_json(d / "transfer.json")["rows"]]
    costs = sorted(cost.glob("defense_cost_*.json")) if cost else []
    cost_doc = read_json(costs[-1]) if costs else None
    names = list(dict.fromkeys(r["checkpoint"] for r in rows))
    table = patch_table(rows)
    zrows = zoo_rows(zoo, names)
    return {"claims": claims(rows, amp, tr, cost=cost_doc),
            "zoo": zrows,
            "ablation": ablation(table, zrows),
            "summary": summary(rows, table, zrows),
            "patch_asr": {f"{ck}|{key}": v for (ck, key), v in table.items()},
            "linf": [r for r in rows if r["category"] in ("fgsm", "pgd", "pgd-transfer")],
            "masking_flags": masking_flags(rows),
            "deployed": deployed_rows(deployed),
            "defense_budget": budget,
            "sources": {"defense": sorted({r["file"] for r in rows}), "cost": str(costs[-1]) if costs else None,
                        "amplification": str(amplification) if amp else None}}


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser, check_writable, run_cli  # ArgumentParser: one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.reproduction", description=__doc__.split("\n")[0])
    p.add_argument("--defense", nargs="+", default=["eval/results/defense"], help="eval.defense result folders")
    p.add_argument("--amplification", default="eval/results/amplification")
    p.add_argument("--transfer", nargs="*", default=["eval/results/transfer", "eval/results/transfer_untargeted"])
    p.add_argument("--zoo", default="zoo")
    p.add_argument("--cost", default="bench/results", help="folder of bench/defense_cost.py results")
    p.add_argument("--deployed", nargs="*", default=["eval/results/defense_deployed"],
                   help="eval.on_device pipeline folders of defended models")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    def body() -> None:
        from qadtr._config import write_json

        check_writable(args.out, "folder")  # before the result folders are read, not at reproduction.json
        rep = build(defense=[Path(d) for d in args.defense], amplification=Path(args.amplification),
                    transfer=[Path(d) for d in args.transfer], zoo=Path(args.zoo), cost=Path(args.cost),
                    deployed=[Path(d) for d in args.deployed])
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "reproduction.json", rep)
        (out / "reproduction.md").write_text(markdown(rep))
        for c in rep["claims"]:
            print(f"{c['verdict']:>13s}  {c['claim']}: {c['ours']}")
        print(f"report: {out / 'reproduction.md'}")

    return run_cli("eval.reproduction", body, argv)


if __name__ == "__main__":
    sys.exit(main())
