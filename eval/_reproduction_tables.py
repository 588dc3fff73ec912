"""The patch-ASR table eval.reproduction computes its figures from, and the number formatting its claims and
its page share: threats by name, the table per (checkpoint, bits), the common threats of a set of networks."""

from __future__ import annotations

import numpy as np

# defense.json categories that are no patch threat: clean accuracy and the L-inf attacks (their own table)
PATCH_CATEGORIES_SKIP = ("clean", "fgsm", "pgd", "pgd-transfer")
# the five recipes the papers compare, in the order the tables list them
RECIPES = ("qat", "dq", "pbat", "dwq", "qadtr")
BASELINE = "resnet20_def_qat"  # the undefended model of the same shape (zoo PLAN)


def threat_id(r: dict) -> str | None:
    """'universal 6.2% white-box' etc.; None for clean and L-inf rows."""
    if r["category"] in PATCH_CATEGORIES_SKIP:
        return None
    src, key = r["source"], r["evaluated_on"]
    if r["category"] == "transfer":
        how = "transfer (float surrogate)"
    elif r["category"].startswith("adaptive"):
        how = r["category"]
    elif src == f"self:{key}":
        how = "white-box"
    else:
        how = "made at other bits"
    return f"{r['attack']} {100 * r['size']:.1f}% {how}"


def patch_table(rows: list[dict]) -> dict:
    """{(checkpoint, bits): {threat: [ASR values]}} over patch rows (several 'other bits' sources average)."""
    out: dict = {}
    for r in rows:
        t = threat_id(r)
        if t is not None:
            out.setdefault((r["checkpoint"], r["evaluated_on"]), {}).setdefault(t, []).append(r["asr"]["value"])
    return out


def common_threats(table: dict, nets: list[tuple[str, str]]) -> list[str]:
    sets = [set(table[n]) for n in nets if n in table]
    return sorted(set.intersection(*sets)) if sets else []


def mean_asr(table: dict, net: tuple[str, str], threats: list[str]) -> float | None:
    vals = [float(np.mean(table[net][t])) for t in threats if t in table.get(net, {})]
    return float(np.mean(vals)) if vals and len(vals) == len(threats) else None


def _mean_or_none(values: list[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _verdict(ok: bool | None, partly: bool = False) -> str:
    return "not measured" if ok is None else "holds" if ok else "partly" if partly else "does not hold"


def _order(name: str) -> tuple:
    """Float, the five recipes in the issue's order, then the ablations, then anything else."""
    recipe = name.removeprefix("resnet20_def_")
    if name == "resnet20_float":
        return (0, 0, name)
    if recipe in RECIPES and name.startswith("resnet20_def_"):
        return (1, RECIPES.index(recipe), name)
    return (2 if name.startswith("resnet20_abl_") else 3, 0, name)
