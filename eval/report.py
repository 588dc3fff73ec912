"""One static HTML page (plus report.json) about a result store: `python -m eval.report --store S --out DIR`.

Sections: the fake-quant vs deployed summary (from eval.compare's compare.json), definitions (ASR, tie
rule, paired CI, gate), ASR vs bit width per runtime, the patch transfer heatmap (an eval.transfer
transfer.json), latency histograms per run, patch thumbnails, the disagreement table, the first
divergent layers, the kernel set of every run and the devices. The page is self-contained: plots are
inline base64 PNGs (matplotlib Agg), no scripts, no external files; every string read from a file or
the store is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from qadtr._errors import QadtrError

SECTIONS = (("summary", "Fake-quant vs deployed"), ("definitions", "Definitions"), ("asr-vs-bits", "ASR vs bit width"),
            ("transfer", "Patch transfer"), ("latency", "Latency"), ("patches", "Patches"),
            ("disagreements", "Disagreements"), ("divergence", "First divergent layer"),
            ("across", "Same runtime, other devices"), ("kernels", "Kernel sets"), ("devices", "Devices"))
MAX_ROWS = 200  # disagreement rows shown per comparison (all of them are in compare.json)
LSB_NOTE = ("one step of the fake-quant logit grid, per class: the input scale of the last QuantLinear times its "
            "weight scale, the step of its int32 accumulator (computed once per checkpoint and bit width; each "
            "comparison in compare.json names its source). A runtime whose logits are quantized more coarsely "
            "(TFLite's int16 output) differs by up to half its own output step even when every integer agrees")
LATENCY_NOTE = ("per-image latency = a batch's pure inference time (the runner's timed call, after warm-up) / its "
                "images; percentiles over images, histograms one value per batch; emulated devices' latency says "
                "nothing about a real board")


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{esc(alt)}"{w} src="data:image/png;base64,{b64}">'


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _pct(d: dict | None) -> str:
    if not d or d.get("n", 0) == 0:
        return "n/a"
    lo, hi = d["ci95"]
    return f"{100 * d['value']:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={d['n']})"


# -- data -------------------------------------------------------------------------------------------------
def collect(store_path: str | Path, *, compare: str | Path | dict | None = None, transfer: str | Path | None = None,
            patches: str | Path | None = None) -> dict:
    """Everything the page shows, as JSON-able data (written as report.json)."""
    from eval._runs import bits_name, model_key
    from eval.replay import load_replay
    from eval.store import Store
    from qadtr._config import read_json, sha256_file
    from qadtr.attacks.asr import TARGETED, UNTARGETED

    if not Path(store_path).is_file():
        raise QadtrError(f"{store_path} not found; make it with `python -m eval.on_device ... --store {store_path}`")
    cmp = read_json(compare) if isinstance(compare, (str, Path)) else (compare or {})
    replays, runs = {}, []
    with Store(store_path) as store:
        for r in store.runs():
            key = model_key(r)
            row = {"run_id": r.run_id, "device": r.device, "runtime": r.runtime, "kernels": r.kernels,
                   "artifact": r.artifact, "emulated": r.emulated, "complete": r.complete, "samples": r.samples,
                   "bits": key.bits, "model": f"{Path(key.checkpoint).parent.name or '?'} {bits_name(key.bits)}",
                   "source_sha256": key.source_sha256, "device_info": r.device_info, "replay": r.replay,
                   "accuracy": None, "asr": [], "latency_ms": [], "latency_n": [], "energy_j": None}
            batches = store.batches(r.run_id)
            row["latency_ms"] = [1000 * b.seconds / b.n for b in batches]  # per image, one value per batch
            row["latency_n"] = [b.n for b in batches]  # images per batch: percentiles are over images
            energy = [b.energy_j / b.n for b in batches if b.energy_j is not None]
            row["energy_j"] = float(np.mean(energy)) if energy and len(energy) == len(batches) else None
            if r.complete:
                if r.replay not in replays:
                    try:
                        replays[r.replay] = load_replay(r.replay)
                    except QadtrError as e:
                        replays[r.replay] = str(e)
                rep = replays[r.replay]
                if isinstance(rep, str) or rep.sha256 != r.replay_sha256:  # edited or rebuilt since the run
                    row["replay_error"] = rep if isinstance(rep, str) else f"{r.replay} changed; re-run eval.on_device"
                else:
                    pred = store.preds(r.run_id)
                    row["accuracy"] = rep.clean_accuracy(pred).to_dict()
                    row["asr"] = [{"patch": p.file, "attack": p.attack, "target": p.target, **a.to_dict()}
                                  for p, a in rep.asr(pred)]
            runs.append(row)
    thumbs = []
    for path, rep in replays.items():
        if isinstance(rep, str):
            continue
        for k, p in enumerate(rep.info.patches):
            f = Path(patches) / p.file if patches else None
            found = f is not None and f.is_file() and sha256_file(f) == p.sha256
            thumbs.append({"replay": path, "patch": p.file, "attack": p.attack, "size": p.size, "side": p.side,
                           "target": p.target, "bits": [list(b) for b in p.bits], "per_image": p.per_image,
                           "file": str(f) if found else None, "row": p.first})
    rows = read_json(transfer).get("rows", []) if transfer else []
    return {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "store": str(store_path),
            "runs": runs, "comparisons": cmp.get("comparisons", []), "skipped": cmp.get("skipped", []),
            "across": cmp.get("across_devices", []),
            "transfer": rows, "transfer_source": str(transfer) if transfer else None, "patches": thumbs,
            "definitions": {"untargeted": UNTARGETED, "targeted": TARGETED, "tie_rule": cmp.get("tie_rule"),
                            "paired_ci": cmp.get("paired_ci"), "gate": cmp.get("gate"), "asr_note": cmp.get("asr_note"),
                            "family": cmp.get("family_method"), "stability": cmp.get("stability_method"),
                            "attribution": cmp.get("attribution_method"),
                            "latency": LATENCY_NOTE}}


# -- figures ----------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mpl_text(s: str) -> str:
    return s.replace("$", r"\$")  # a file name is not mathtext


def _num(v: float | None, sign: str = "") -> str:
    """A rate as a percentage with one decimal; "n/a" where it is undefined (n = 0 is stored as null)."""
    return "n/a" if v is None else f"{100 * v:{sign}.1f}"


def fig_asr_vs_bits(runs: list[dict]) -> str | None:
    """One panel per patch: ASR (%) against the model's bit width, one line per runtime (and device)."""
    points: dict[str, dict[str, dict]] = {}  # patch -> series -> {bits w: asr %}
    for r in runs:
        series = r["runtime"] if len({x["device"] for x in runs}) == 1 else f"{r['runtime']}@{r['device']}"
        for a in r["asr"]:
            w = 32 if r["bits"] is None else r["bits"][0]  # float plotted at 32
            if a["asr"]["value"] is not None:  # n = 0: no eligible image, nothing to plot
                points.setdefault(a["patch"], {}).setdefault(series, {})[w] = 100 * a["asr"]["value"]
    if not points:
        return None
    plt = _plt()
    cols = min(3, len(points))
    nrows = -(-len(points) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, (patch, series) in zip(axes.flat, sorted(points.items())):
        for i, (name, by_bits) in enumerate(sorted(series.items())):
            xs = sorted(by_bits)  # equal series overlap: shrinking markers keep every one visible
            ax.plot(xs, [by_bits[x] for x in xs], marker="osD^vx"[i % 6], markersize=max(3, 10 - 2 * i),
                    linewidth=max(0.8, 3 - 0.6 * i), label=_mpl_text(name))
        ax.set_xscale("log", base=2)
        ticks = sorted({x for s in series.values() for x in s})
        ax.set_xticks(ticks, [("float" if t == 32 else f"{t}") for t in ticks])
        ax.set_ylim(-2, 102)
        ax.set_xlabel("weight bits")
        ax.set_ylabel("ASR %")
        ax.set_title(_mpl_text(patch if len(patch) < 40 else patch[:37] + "..."), fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(points):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def fig_transfer(rows: list[dict]) -> list[str]:
    import tempfile

    from eval.transfer import write_heatmaps

    _plt()
    with tempfile.TemporaryDirectory(prefix="qadtr-report-") as tmp:
        return [base64.b64encode(p.read_bytes()).decode() for p in write_heatmaps(rows, Path(tmp))]


def fig_latency(runs: list[dict]) -> str | None:
    """One panel per runtime (and device): per-image latency histograms of its runs, one colour per model."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if r["latency_ms"]:
            emu = " (EMULATED)" if r["emulated"] else ""
            groups.setdefault(f"{r['runtime']} on {r['device']}{emu}", []).append(r)
    if not groups:
        return None
    plt = _plt()
    cols = min(2, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 3.0 * nrows), squeeze=False)
    for ax, (title, group) in zip(axes.flat, sorted(groups.items())):
        ms = np.concatenate([r["latency_ms"] for r in group])
        lo, hi = max(float(ms.min()), 1e-6), max(float(ms.max()), 2e-6)
        bins = np.geomspace(lo / 1.05, hi * 1.05, 30)  # log bins: runtimes differ by orders of magnitude
        for r in sorted(group, key=lambda r: r["model"]):
            ax.hist(r["latency_ms"], bins=bins, alpha=0.6, label=_mpl_text(r["model"]))
        ax.set_xscale("log")
        ax.set_title(_mpl_text(title[:70]), fontsize=9)
        ax.set_xlabel("ms per image (one value per batch)")
        ax.set_ylabel("batches")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def thumbnail(values: np.ndarray, side: int = 128) -> str:
    """(3, s, s) float in [0, 1] or (H, W, 3) uint8 -> base64 PNG, nearest-neighbour upscaled to ~`side` px."""
    from PIL import Image

    a = np.asarray(values)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)  # (s, s, 3)
    scale = max(1, side // max(a.shape[:2]))
    a = a.repeat(scale, 0).repeat(scale, 1)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# -- page -------------------------------------------------------------------------------------------------
def _summary(data: dict) -> str:
    rows = []
    for c in data["comparisons"]:
        asr = "; ".join(f"{p['name']}: {_num(p['asr_ref']['asr']['value'])}% -> {_num(p['asr_out']['asr']['value'])}% "
                        f"({_num(p['diff']['value'], '+')} pp [{_num(p['diff']['ci95'][0], '+')}, "
                        f"{_num(p['diff']['ci95'][1], '+')}]{_family(p)})" for p in c["patches"])
        ties = [c[g][f"ties_{side}"] for side in ("ref", "out") for g in ("clean", "patched")]
        lsb, step = c["logits"].get("max_abs_lsb"), c["logits"].get("out_step_lsb")
        rows.append([c["out"], c["info"].get("model", ""), c["info"].get("device", ""),
                     "PASSED" if c["passed"] else "FAILED", _pct(c["clean"]["rate"]), _pct(c["patched"]["rate"]),
                     f"{ties[0] + ties[1]} / {ties[2] + ties[3]}",
                     ("n/a" if lsb is None else f"{lsb:.3g}") + (f" (output step {step:.3g})" if step else ""), asr,
                     (c.get("attribution") or {}).get("summary", "") or "not attributed",
                     (c.get("divergence") or {}).get("summary", ""),
                     "; ".join(c["reasons"])])
    if not rows:
        return "<p>No comparisons (run <code>python -m eval.compare</code> on the store).</p>"
    skipped = "".join(f"<li>{esc(s['runtime'])} run {esc(s['run'][:12])}: {esc(s['reason'])}</li>"
                      for s in data["skipped"])
    return (_table(["runtime", "model", "device", "gate", "clean agree (non-tie)", "patched agree (non-tie)",
                    "ties ref / deployed", "max |dlogit| LSB", "ASR ref -> deployed (diff, 95% CI; family CI, Holm)",
                    "reproduced by (integer executor semantics)", "first divergent layer", "gate failures"], rows)
            + (f"<p>Not compared:</p><ul>{skipped}</ul>" if skipped else ""))


def _family(p: dict) -> str:
    """The difference's place in its family (eval.compare.document): simultaneous CI and Holm's verdict."""
    f = p.get("family")
    if not f:
        return ""
    lo, hi = f["ci_family"]
    verdict = "significant" if f["significant"] else "not significant"
    st = p.get("stability") or {}
    stable = f"; same sign in {st['same_sign']} of {st['measured']} image subsets" if st.get("measured") else ""
    return (f"; family of {f['family_size']}: [{_num(lo, '+')}, {_num(hi, '+')}], Holm p {f['p_holm']:.3g}, "
            f"{verdict}{stable}")


def _definitions(data: dict) -> str:
    d = data["definitions"]
    items = [("Untargeted ASR", d["untargeted"]), ("Targeted ASR", d["targeted"]), ("Per side", d.get("asr_note")),
             ("Tie rule", d.get("tie_rule")), ("ASR difference CI", d.get("paired_ci")),
             ("Many comparisons", d.get("family")), ("Stability", d.get("stability")), ("Reproduced by", d.get("attribution")), ("Gate", d.get("gate")),
             ("Latency", d["latency"])]
    if data["comparisons"]:
        items.append(("Logit LSB", LSB_NOTE))
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v) + "</dl>"


def _disagreements(data: dict) -> str:
    parts = []
    for c in data["comparisons"]:
        rows = [[d["sample"], d["test_index"], "clean" if d["patch"] < 0 else c["patches"][d["patch"]]["name"],
                 d["label"], d["pred_ref"], d["pred_out"], "yes" if d["tie_ref"] else "", "yes" if d["tie_out"] else "",
                 d["attack"], "n/a" if d["max_dlogit_lsb"] is None else f"{d['max_dlogit_lsb']:.2f}"]
                for d in c["disagreements"][:MAX_ROWS]]
        more = len(c["disagreements"]) - len(rows)
        parts.append(f"<h3>{esc(c['out'])} vs {esc(c['ref'])}, {esc(c['info'].get('model', ''))}: "
                     f"{len(c['disagreements'])} samples</h3>"
                     + (_table(["sample", "test image", "patch", "label", "pred ref", "pred deployed", "tie ref",
                                "tie deployed", "attack succeeds only on", "max |dlogit| LSB"], rows) if rows else
                        "<p>None: every prediction and attack outcome agrees.</p>")
                     + (f"<p>{more} more rows in compare.json.</p>" if more > 0 else ""))
    return "".join(parts) or "<p>No comparisons.</p>"


def _divergence(data: dict) -> str:
    parts = []
    for c in data["comparisons"]:
        d = c.get("divergence") or {}
        head = f"<h3>{esc(c['out'])}, {esc(c['info'].get('model', ''))}</h3>"
        if d.get("skipped") or not d:
            parts.append(head + f"<p>Not computed: {esc(d.get('skipped', 'no data'))}</p>")
            continue
        rows = [[i["sample"], i.get("why", ""), i["first_layer"] or "none (identical integers)",
                 f"{i['differing']} / {i['elements']}", i["max_step"], i["layers_differing"]] for i in d["images"]]
        note = "" if d.get("outputs_identical") in (True, None) else \
            "<p><strong>The instrumented artifact's logits differ from the plain artifact's.</strong></p>"
        parts.append(head + f"<p>{esc(d['method'])}. Layers in network order: {esc(', '.join(d['layers']))}.</p>" + note
                     + _table(["sample", "rerun because", "first divergent layer", "differing elements there",
                               "max step there", "layers differing"], rows))
    return "".join(parts) or "<p>No comparisons.</p>"


def render(data: dict) -> str:
    """The HTML page for `collect`'s data."""
    runs = data["runs"]
    asr_png, lat_png = fig_asr_vs_bits(runs), fig_latency(runs)
    asr_rows = sorted([a["patch"], r["model"], r["runtime"], r["device"],
                       "untargeted" if a["target"] is None else a["target"], _pct(a["asr"])]
                      for r in runs for a in r["asr"])
    lat_rows = []
    for r in sorted(runs, key=lambda r: (r["runtime"], r["model"], r["device"])):
        ms = np.repeat(np.asarray(r["latency_ms"], np.float64), r["latency_n"])  # (images,)
        p = np.percentile(ms, [50, 90, 99]) if len(ms) else [float("nan")] * 3
        lat_rows.append([r["runtime"], r["model"], r["device"] + (" (emulated)" if r["emulated"] else ""),
                         *(f"{x:.4f}" for x in p), f"{1000 / p[0]:.0f}" if len(ms) and p[0] > 0 else "n/a",
                         "not measured" if r["energy_j"] is None else f"{r['energy_j']:.3g}", _pct(r["accuracy"])])
    thumbs, replays = [], {}
    for t in data["patches"]:
        from eval.replay import load_replay
        from qadtr.attacks import load_patch

        imgs = ""
        if t["file"]:
            values = load_patch(t["file"]).values
            imgs += _img(thumbnail(values[0] if t["per_image"] else values), f"patch {t['patch']}")
        if t["replay"] not in replays:
            replays[t["replay"]] = load_replay(t["replay"], verify=False).images
        imgs += _img(thumbnail(replays[t["replay"]][t["row"]]), f"{t['patch']} in place")
        what = "untargeted" if t["target"] is None else f"target {t['target']}"
        thumbs.append(f"<figure>{imgs}<figcaption>{esc(t['patch'])}: {esc(t['attack'])}, {esc(t['side'])} px, "
                      f"{esc(what)}{'' if t['file'] else ' (patch file not given: the first patched replay image)'}"
                      "</figcaption></figure>")
    transfer = fig_transfer(data["transfer"]) if data["transfer"] else []
    body = {
        "summary": _summary(data),
        "definitions": _definitions(data),
        "asr-vs-bits": (_img(asr_png, "ASR vs bit width") if asr_png else "<p>No complete runs with a replay.</p>")
        + _table(["patch", "model", "runtime", "device", "target", "ASR (95% CI)"], asr_rows),
        "transfer": "".join(_img(b, "transfer heatmap") for b in transfer) + (
            f"<p>From {esc(data['transfer_source'])}.</p>" if transfer else
            "<p>No transfer.json given (pass <code>--transfer</code>, from <code>python -m eval.transfer</code>).</p>"),
        "latency": (_img(lat_png, "latency histograms") if lat_png else "<p>No timed batches.</p>")
        + _table(["runtime", "model", "device", "p50 ms", "p90 ms", "p99 ms", "images/s (p50)", "J per image",
                  "clean accuracy"], lat_rows),
        "patches": "".join(thumbs) or "<p>No patches.</p>",
        "disagreements": _disagreements(data),
        "divergence": _divergence(data),
        "across": _table(["runtime", "artifact", "device", "vs", "logits", "differing", "max |d|", "argmax agree"],
                         [[a["runtime"], a["artifact"], a["device"], a["reference_device"], a["logits"], a["differing"],
                           f"{a['max_abs']:.3g}", f"{100 * a['argmax_agree']:.2f}%"] for a in data["across"]])
        if data["across"] else "<p>One device only (or no runtime ran on two devices).</p>",
        "kernels": _table(["run", "runtime", "device", "model", "kernels", "artifact"],
                          [[r["run_id"][:12], r["runtime"], r["device"], r["model"], r["kernels"], r["artifact"]]
                           for r in runs]),
        "devices": "".join(f"<h3>{esc(dev)}</h3><pre>{esc(json.dumps(info, indent=2, sort_keys=True))}</pre>"
                           for dev, info in sorted({r["device"]: r["device_info"] for r in runs}.items())),
    }
    nav = " · ".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{body[sid]}</section>' for sid, title in SECTIONS)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>qadtr-edge report: fake-quant vs '
            f"deployed</title><style>{CSS}</style></head><body><h1>qadtr-edge: fake-quant vs deployed</h1>"
            f"<p>Store {esc(data['store'])}, generated {esc(data['generated'])}.</p><nav>{nav}</nav>{sections}"
            "</body></html>\n")


CSS = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px;"
       "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
       "figure{display:inline-block;margin:.5em}figcaption{font-size:11px;max-width:300px}dt{font-weight:bold}"
       "pre{font-size:11px;background:#f6f6f6;padding:.5em}")


def write_report(store_path: str | Path, out: str | Path, *, compare: str | Path | dict | None = None,
                 transfer: str | Path | None = None, patches: str | Path | None = None) -> Path:
    """Write OUT/report.html and OUT/report.json; returns the HTML path.

    Example:
        >>> write_report("results/results.sqlite", "results/report", compare="results/report/compare.json")
    """
    from qadtr._config import atomic_write_bytes, write_json

    data = collect(store_path, compare=compare, transfer=transfer, patches=patches)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    page = render(data)
    write_json(out / "report.json", data)
    atomic_write_bytes(out / "report.html", page.encode())
    return out / "report.html"


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, help="the SQLite result store of eval.on_device")
    p.add_argument("--out", required=True, help="folder for report.html and report.json")
    p.add_argument("--compare", default=None, help="compare.json of eval.compare (summary, disagreements)")
    p.add_argument("--transfer", default=None, help="transfer.json of eval.transfer (heatmap)")
    p.add_argument("--patches", default=None, help="the patch folder (thumbnails of the patch files)")
    args = p.parse_args(argv)

    def body() -> None:
        page = write_report(args.store, args.out, compare=args.compare, transfer=args.transfer, patches=args.patches)
        print(f"wrote {page}")

    return run_cli("eval.report", body, argv)


if __name__ == "__main__":
    sys.exit(main())
