"""The stop-sign scenario's numbers per run (`summarise`) and its page with before/after grids (`write_page`).

Per complete run of the scene replay (one runtime on one device): the share of test stop signs read as
stop before (camera only) and after (camera + sticker, camera + control), the targeted ASR of sticker
and control (share read as the target, Wilson 95% CI), and, against the fake-quant run, on how many images
the runtime's prediction differs (the report beside it says why, image by image).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eval._report_html import CSS as REPORT_CSS
from qadtr._stats import Proportion
from qadtr.bits import bits_name

GRID = 16  # signs per grid: the first test stop signs, the same for every runtime (enough to see a pattern)


def _name(run) -> str:
    bits = run.options.get("bits")
    width = f" {bits_name(tuple(bits))}" if isinstance(bits, (list, tuple)) and len(bits) == 2 else ""
    return f"{run.device}/{run.runtime}{width}"


def predictions(store_path: str | Path, replay) -> list[tuple]:
    """(run, (M,) predictions) of every complete run of `replay` in the store, fake-quant first: read once, for
    `summarise` and `write_page`."""
    from eval.store import Store

    with Store(store_path, readonly=True) as store:
        runs = [r for r in store.runs(replay_sha256=replay.sha256) if r.complete]
        runs.sort(key=lambda r: (r.runtime != "fakequant", r.device, r.runtime))
        return [(run, store.preds(run.run_id)) for run in runs]


def _reference(preds: list[tuple]) -> np.ndarray | None:
    """The fake-quant run's predictions (first when present), else None."""
    return preds[0][1] if preds and preds[0][0].runtime == "fakequant" else None


def summarise(replay, preds: list[tuple], *, source: int, target: int) -> dict:
    """{source, target, n, scene, runs: [...]}: each complete run's rates (module docstring); `preds` from
    `predictions`."""
    n = replay.info.n_subset
    ref, out = _reference(preds), []
    for run, pred in preds:  # pred (M,): clean block, then one block per sticker
        row = {"run": _name(run), "run_id": run.run_id, "device": run.device, "runtime": run.runtime,
               "kernels": run.kernels, "emulated": run.emulated,
               "stop_before": Proportion(int((pred[:n] == source).sum()), n).to_dict(), "patches": {}}
        for ref_patch, asr in replay.asr(pred):
            rows = pred[ref_patch.first:ref_patch.first + ref_patch.n]
            row["patches"][Path(ref_patch.file).stem] = {
                "attack": ref_patch.attack, "asr_target": asr.rate.to_dict(), "definition": asr.definition,
                "stop_after": Proportion(int((rows == source).sum()), n).to_dict()}
        if ref is not None:
            differs = np.flatnonzero(pred != ref)
            row["vs_fakequant"] = {"rows": int(len(pred)), "differ": int(len(differs)),
                                   "differ_rows": differs[:50].tolist()}
        out.append(row)
    return {"source": source, "target": target, "n": n, "replay": str(replay.path),
            "scene": json.loads(replay.info.scene), "runs": out}


def _pct(p: dict) -> str:
    lo, hi = p["ci95"]
    return f"{100 * p['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _table(summary: dict) -> str:
    from eval._report_html import table

    head = ["run", "kernels", "stop read as stop, camera only", "with sticker", "with control",
            f"targeted ASR (-> {summary['target_name']}), sticker", "control", "predictions differing from fake-quant"]
    rows = []
    for r in summary["runs"]:
        s, c = r["patches"].get("sticker"), r["patches"].get("control")
        vs = r.get("vs_fakequant")
        rows.append([r["run"], r["kernels"] or "-", _pct(r["stop_before"]), _pct(s["stop_after"]) if s else "-",
                     _pct(c["stop_after"]) if c else "-", _pct(s["asr_target"]) if s else "-",
                     _pct(c["asr_target"]) if c else "-", f"{vs['differ']} of {vs['rows']}" if vs else "-"])
    return table(head, rows, what="runs", show=len(rows))


def _grid(images: np.ndarray, pred: np.ndarray, signs, *, n: int, classes: tuple, source: int, target: int) -> str:
    """Before/after pairs of the `signs` (indices into the n signs): the picture and what this run read, coloured."""
    from eval._report_figures import thumbnail
    from eval._report_html import esc, img

    cells = []
    for i in signs:
        pair = []
        for row, when in ((i, "before"), (n + i, "after")):
            p = int(pred[row])
            kind = "fail" if p == target else ("pass" if p == source else "warn")
            pair.append(f'<figure>{img(thumbnail(images[row], side=96), f"sign {i} {when}")}'
                        f'<figcaption class="{kind}">{esc(when)}: {esc(classes[p])}</figcaption></figure>')
        cells.append(f'<div class="pair">{"".join(pair)}</div>')
    return f'<div class="grid">{"".join(cells)}</div>'


# the report's stylesheet (eval._report_html) plus the grids: before/after pairs side by side, wrapping
CSS = REPORT_CSS + (".grid{display:flex;flex-wrap:wrap;gap:8px}.pair{display:flex;gap:2px;border:1px solid #ddd;"
                    "padding:2px}.pair figure{margin:0;text-align:center}")


def write_page(summary: dict, replay, preds: list[tuple], *, out: Path) -> Path:
    """Write the scenario page: the table of every run, then each run's before/after grid (`preds` from
    `predictions`)."""
    from eval._report_html import esc
    from qadtr._config import atomic_write_bytes
    from qadtr.data import DATASETS

    source, target = summary["source"], summary["target"]
    known = DATASETS.get(replay.info.dataset)
    classes = known.classes if known and len(known.classes) == replay.info.num_classes else \
        tuple(str(k) for k in range(replay.info.num_classes))
    summary = {**summary, "target_name": classes[target]}
    n = summary["n"]
    parts = [f"<h1>{esc(classes[source])} -> {esc(classes[target])}: a sticker through a camera, on every runtime</h1>",
             f"<p>{n} {esc(replay.info.dataset)} test images of {esc(classes[source])}, each through one camera "
             f"view (drawn once, the same bytes for every runtime): "
             f"<code>{esc(json.dumps(summary['scene']['camera']['_data']))}</code>. Before = the view "
             "without a sticker; after = the same view with the sticker on the sign's centre. Red: read as the "
             "target; green: still a stop sign; amber: another sign. The comparison report beside this page "
             "(report.html) gives the cause of every image a runtime reads differently from fake-quant.</p>",
             _table(summary)]
    ref, grid = _reference(preds), dict(n=n, classes=classes, source=source, target=target)
    for k, (run, pred) in enumerate(preds):
        parts.append(f"<h2>{esc(_name(run))}</h2>" + _grid(replay.images, pred, range(min(GRID, n)), **grid))
        differs = [] if ref is None or k == 0 else \
            sorted({int(r) % n for r in np.flatnonzero(pred[:2 * n] != ref[:2 * n])})[:GRID]  # sign indices
        if differs:
            parts.append(f"<h3>Signs {esc(_name(run))} reads differently from fake-quant (before or after, "
                         f"first {len(differs)})</h3>" + _grid(replay.images, pred, differs, **grid))
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>stop-sign scenario</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    atomic_write_bytes(out, page.encode())
    return out
