"""One static HTML page (plus report.json) about a result store: `python -m eval.report --store S --out DIR`.

The page leads with its verdict: per device x runtime x bit width, whether the deployed model behaves
like its fake-quant simulation, the largest ASR gap with its family-corrected interval, the semantics
that reproduces the deployed integers, and the findings that matter (eval._report_verdict). Then the
comparison table, fake-quant vs deployed ASR per patch and the flip matrix (eval._report_figures), the
patches an attack made on a deployed artifact (their `made_on`) with their ASR on every run, the
patch transfer heatmap (an eval.transfer transfer.json), latency, patch thumbnails, the disagreements
and first divergent layers (long tables folded into <details>), the kernel set of every run and the
devices with their host fingerprint (eval._report_host). The page is self-contained: plots are inline
base64 PNGs (matplotlib Agg), no scripts, no external files; every string read from a file or the store
is HTML-escaped.

report.json holds everything the page shows (thumbnails included), so `--from-report DIR/report.json`
renders the page again without the store, e.g. after a change to the page:

    python -m eval.report --from-report eval/results/on_device/report/report.json \\
        --compare eval/results/on_device/report/compare.json --out eval/results/on_device/report
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from eval import _report_sections as sec
from eval._report_figures import fig_asr_pairs, fig_asr_vs_bits, fig_flips, fig_latency, fig_transfer, patch_images
from eval._report_host import devices_section
from eval._report_html import CSS, esc, img
from eval._report_names import checkpoint_name, name_models
from eval._report_verdict import verdict_block
from qadtr._errors import QadtrError

SECTIONS = (("verdict", "Verdict: deployed vs simulation"), ("summary", "Fake-quant vs deployed"),
            ("asr", "ASR: fake-quant vs deployed"), ("deployed-attacks", "Attacks on the deployed artifact"),
            ("transfer", "Patch transfer"), ("latency", "Latency"),
            ("patches", "Patches"), ("disagreements", "Disagreements"), ("divergence", "First divergent layer"),
            ("across", "Same runtime, other devices"), ("kernels", "Kernel sets"), ("devices", "Devices"),
            ("definitions", "Definitions"))
LATENCY_NOTE = ("per-image latency = a batch's pure inference time (the runner's timed call, after warm-up) / its "
                "images; percentiles over images, the plot one value per batch; emulated devices' latency says "
                "nothing about a real board")


def _from_compare(cmp: dict) -> dict:
    """The parts of `collect`'s data that come from compare.json."""
    from qadtr.attacks.asr import TARGETED, UNTARGETED

    return {"comparisons": cmp.get("comparisons", []), "skipped": cmp.get("skipped", []),
            "across": cmp.get("across_devices", []), "reference": cmp.get("reference", "fakequant"),
            "host": cmp.get("host"),
            "definitions": {"untargeted": UNTARGETED, "targeted": TARGETED, "tie_rule": cmp.get("tie_rule"),
                            "paired_ci": cmp.get("paired_ci"), "gate": cmp.get("gate"), "asr_note": cmp.get("asr_note"),
                            "family": cmp.get("family_method"), "stability": cmp.get("stability_method"),
                            "attribution": cmp.get("attribution_method"), "latency": LATENCY_NOTE}}


# -- data -------------------------------------------------------------------------------------------------
def collect(store_path: str | Path, *, compare: str | Path | dict | None = None, transfer: str | Path | None = None,
            patches: str | Path | None = None) -> dict:
    """Everything the page shows, as JSON-able data (written as report.json)."""
    from eval._runs import model_key
    from qadtr.bits import bits_name
    from eval.replay import load_replay
    from eval.store import Store
    from eval._configs import register_eval_configs
    from qadtr._config import read_json, sha256_file

    if not Path(store_path).is_file():
        raise QadtrError(f"{store_path} not found; make it with `python -m eval.on_device ... --store {store_path}`")
    register_eval_configs()  # the thumbnails read patch files of eval's own attacks too
    cmp = read_json(compare) if isinstance(compare, (str, Path)) else (compare or {})
    replays, runs = {}, []
    with Store(store_path, readonly=True) as store:
        for r in store.runs():
            key = model_key(r)
            row = {"run_id": r.run_id, "device": r.device, "runtime": r.runtime, "kernels": r.kernels,
                   "artifact": r.artifact, "artifact_sha256": r.artifact_sha256, "emulated": r.emulated,
                   "complete": r.complete, "samples": r.samples,
                   "bits": key.bits, "model": f"{checkpoint_name(key.checkpoint)} {bits_name(key.bits)}",
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
                    row["asr"] = [{"patch": p.file, "attack": p.attack, "target": p.target, "made_on": p.made_on,
                                   **a.to_dict()}
                                  for p, a in rep.asr(pred)]
            runs.append(row)
    thumbs = []
    for path, rep in replays.items():
        if isinstance(rep, str):
            continue
        for k, p in enumerate(rep.info.patches):
            f = Path(patches) / p.file if patches else None
            found = f is not None and f.is_file() and sha256_file(f) == p.sha256
            t = {"replay": path, "patch": p.file, "attack": p.attack, "size": p.size, "side": p.side,
                 "target": p.target, "bits": [list(b) for b in p.bits], "per_image": p.per_image, "made_on": p.made_on,
                 "file": str(f) if found else None, "row": p.first}
            thumbs.append({**t, "images": patch_images(t, rep.images)})  # in report.json: --from-report needs no replay
    rows = read_json(transfer).get("rows", []) if transfer else []
    return {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "store": str(store_path),
            "runs": runs, **_from_compare(cmp),
            "transfer": rows, "transfer_source": str(transfer) if transfer else None, "patches": thumbs}


# -- page -------------------------------------------------------------------------------------------------
def _figure(png: str | None, alt: str, caption: str) -> str:
    return f"<figure class=\"wide\">{img(png, alt)}<figcaption>{esc(caption)}</figcaption></figure>" if png else ""


def render(data: dict) -> str:
    """The HTML page for `collect`'s data."""
    data = name_models(data)
    runs, comparisons = data["runs"], data["comparisons"]
    pairs, flips = fig_asr_pairs(comparisons), fig_flips(comparisons)
    trend, lat = fig_asr_vs_bits(runs, data.get("reference") or "fakequant"), fig_latency(runs)
    asr = (_figure(pairs, "fake-quant vs deployed ASR per patch", "Left: each patch's ASR on fake-quant (x) and on "
                   "the deployed runtime (y), 95% CIs; points off the dashed line moved. Right: the paired "
                   "differences per comparison.")
           + _figure(flips, "flip matrix", "Images on which the attack succeeds on one side only: deployed only / "
                     "fake-quant only, per model and patch (darker = more flips).")
           + (sec.asr_table(comparisons) if comparisons else "<p>No comparisons: nothing to set side by side.</p>")
           + _figure(trend, "ASR vs bit width", "ASR per patch against the model's bit width (runtimes with two or "
                     "more bit widths only).")
           + "<h3>ASR of every run</h3>" + (sec.run_asr_table(runs) if any(r["asr"] for r in runs)
                                             else "<p>No complete runs with a replay.</p>"))
    transfer = fig_transfer(data["transfer"]) if data["transfer"] else []
    body = {
        "verdict": verdict_block(comparisons, runs),
        "summary": sec.summary(data),
        "asr": asr,
        "deployed-attacks": sec.deployed_attacks(runs),
        "transfer": "".join(img(b, "transfer heatmap", width=460) for b in transfer) + (
            f"<p>From {esc(data['transfer_source'])}.</p>" if transfer else
            "<p>No transfer.json given (pass <code>--transfer</code>, from <code>python -m eval.transfer</code>).</p>"),
        "latency": (_figure(lat, "latency per run", LATENCY_NOTE) or "<p>No timed batches.</p>") + sec.latency_table(runs),
        "patches": sec.patches(data),
        "disagreements": sec.disagreements(data),
        "divergence": sec.divergence(data),
        "across": sec.across(data),
        "kernels": sec.kernels(runs),
        "devices": devices_section(runs, data.get("host")),
        "definitions": sec.definitions(data),
    }
    nav = " \u00b7 ".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{body[sid]}</section>' for sid, title in SECTIONS)
    rendered = f", page rendered {esc(data['rendered'])} from report.json" if data.get("rendered") else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>qadtr-edge report: fake-quant vs '
            f"deployed</title><style>{CSS}</style></head><body><h1>qadtr-edge: fake-quant vs deployed</h1>"
            f"<p class=\"small\">Store {esc(data['store'])}, collected {esc(data['generated'])}{rendered}.</p>"
            f"<nav>{nav}</nav>{sections}</body></html>\n")


def _write(data: dict, out: str | Path) -> Path:
    from qadtr._config import atomic_write_bytes, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    page = render(data)
    write_json(out / "report.json", data)
    atomic_write_bytes(out / "report.html", page.encode())
    return out / "report.html"


def write_report(store_path: str | Path, out: str | Path, *, compare: str | Path | dict | None = None,
                 transfer: str | Path | None = None, patches: str | Path | None = None) -> Path:
    """Write OUT/report.html and OUT/report.json; returns the HTML path.

    Example:
        >>> write_report("results/results.sqlite", "results/report", compare="results/report/compare.json")
    """
    return _write(collect(store_path, compare=compare, transfer=transfer, patches=patches), out)


def rerender(report_json: str | Path, out: str | Path, *, compare: str | Path | None = None) -> Path:
    """Render a saved report.json again (the store is not needed); `compare` replaces its comparisons.

    A report.json written before thumbnails were kept in it gets them from the patch and replay files where
    those are on this machine; otherwise the patch's caption says so.

    Example:
        >>> rerender("results/report/report.json", "results/report", compare="results/report/compare.json")
    """
    from eval.replay import load_replay
    from qadtr._config import read_json

    data = read_json(report_json)
    if not isinstance(data, dict) or not {"runs", "patches", "store", "generated"} <= set(data):
        raise QadtrError(f"{report_json} is not a report.json of eval.report; make one with "
                         "`python -m eval.report --store S --out DIR`")
    if compare is not None:
        data = {**data, **_from_compare(read_json(compare))}
    replays, thumbs = {}, []
    for t in data["patches"]:
        if "images" not in t:
            if t["replay"] not in replays:
                replays[t["replay"]] = load_replay(t["replay"], verify=False).images if Path(t["replay"]).is_file() else None
            t = {**t, "images": patch_images(t, replays[t["replay"]])}
        thumbs.append(t)
    rendered = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _write({**data, "patches": thumbs, "rendered": rendered}, out)


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser, check_writable, run_cli  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="the SQLite result store of eval.on_device")
    src.add_argument("--from-report", default=None,
                     help="a report.json of eval.report: render its page again without the store")
    p.add_argument("--out", required=True, help="folder for report.html and report.json")
    p.add_argument("--compare", default=None, help="compare.json of eval.compare (verdict, summary, disagreements)")
    p.add_argument("--transfer", default=None, help="transfer.json of eval.transfer (heatmap; with --store)")
    p.add_argument("--patches", default=None, help="the patch folder (thumbnails of the patch files; with --store)")
    args = p.parse_args(argv)

    def body() -> None:
        check_writable(args.out, "folder")  # before the store is read and the figures drawn
        if args.from_report:
            if args.transfer or args.patches:
                raise QadtrError("--transfer and --patches go with --store; --from-report reuses what report.json holds")
            page = rerender(args.from_report, args.out, compare=args.compare)
        else:
            page = write_report(args.store, args.out, compare=args.compare, transfer=args.transfer,
                                patches=args.patches)
        print(f"wrote {page}")

    return run_cli("eval.report", body, argv)


if __name__ == "__main__":
    sys.exit(main())
