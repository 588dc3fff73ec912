"""One name per model on every side of the report ("resnet20 w4a4"), and bit widths in numeric order.

A fake-quant run names its model after its checkpoint folder, a deployed run after what its export record
points at, and compare.json after the checkpoint: three labels for one model ("resnet20_w4a4 w4a4",
"zoo w4a4"). `name_models` gives every run and comparison the label of its source checkpoint (runs are
matched by the checkpoint's sha256), with the bit width said once.
"""

from __future__ import annotations

import re
from pathlib import Path

from qadtr.bits import bits_name

_BITS = re.compile(r"w(\d+)a(\d+)")


def bits_key(bits) -> tuple:
    """Sort key of a (w, a) pair: numeric (w2a2 < w4a4 < w8a8 < w16a16), float (None) last."""
    return (1, 0, 0) if bits is None else (0, int(bits[0]), int(bits[1]))


def label_key(label: str) -> tuple:
    """Sort key of a label that ends in a bit width ("resnet20 w4a4", "m:float"): its model, then numeric bits."""
    m = _BITS.search(label.rsplit(" ", 1)[-1].rsplit(":", 1)[-1])
    base = label.rsplit(" ", 1)[0] if " " in label else label.rsplit(":", 1)[0]
    if m:
        return (base, 0, int(m[1]), int(m[2]), label)
    return (base, 1 if label.endswith("float") else 2, 0, 0, label)


def short_patch(name: str) -> str:
    """A patch file's name without ".npz" (labels on plots and in sentences)."""
    return name[:-4] if name.endswith(".npz") else name


def checkpoint_name(path: str) -> str:
    """The model's name from its checkpoint path: the folder of a file (zoo/resnet20_w4a4/model.pt), else itself."""
    p = Path(path)
    return (p.parent.name if p.suffix else p.name) or "?"


def model_label(base: str, bits) -> str:
    """"resnet20_w4a4", (4, 4) -> "resnet20 w4a4": the bit width once, at the end."""
    b = bits_name(bits)
    return f"{base[:-len(b) - 1] if base.endswith('_' + b) and len(base) > len(b) + 1 else base} {b}"


def _relabel(label: str) -> str:
    base, _, b = label.rpartition(" ")
    return label if not base else f"{base[:-len(b) - 1] if base.endswith('_' + b) else base} {b}"


def name_models(data: dict) -> dict:
    """`data` (eval.report.collect's) with one label per model on every run, comparison and transfer row."""
    base: dict[str, str] = {}  # source checkpoint sha256 -> model name
    for c in data["comparisons"]:
        info = c.get("info") or {}
        if info.get("source_sha256") and info.get("checkpoint"):
            base.setdefault(info["source_sha256"], checkpoint_name(info["checkpoint"]))
    ref = data.get("reference") or "fakequant"
    for r in sorted(data["runs"], key=lambda r: r["runtime"] != ref):  # the fake-quant run ran the checkpoint itself
        if r.get("source_sha256"):
            base.setdefault(r["source_sha256"], r["model"].rsplit(" ", 1)[0])
    runs = [{**r, "model": model_label(base[r["source_sha256"]], r["bits"]) if base.get(r.get("source_sha256"))
             else _relabel(r["model"])} for r in data["runs"]]
    comparisons = []
    for c in data["comparisons"]:
        info = dict(c.get("info") or {})
        sha = info.get("source_sha256")
        if sha in base and "bits" in info:
            info["model"] = model_label(base[sha], info["bits"])
        elif info.get("model"):
            info["model"] = _relabel(info["model"])
        comparisons.append({**c, "info": info})
    transfer = [{**t, **{k: _transfer_label(t[k]) for k in ("source", "evaluated_on") if isinstance(t.get(k), str)}}
                for t in data.get("transfer") or []]
    return {**data, "runs": runs, "comparisons": comparisons, "transfer": transfer}


def _transfer_label(label: str) -> str:
    """eval.transfer's "resnet20_w4a4:w4a4" -> "resnet20 w4a4" (the report's scheme)."""
    name, sep, b = label.rpartition(":")
    return _relabel(f"{name} {b}") if sep else label
