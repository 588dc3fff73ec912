"""The report's tables: per-comparison summary, ASR per patch, attacks on the deployed artifact, disagreements,
first divergent layers, latency, kernel sets, definitions. Long tables fold into <details>
(eval._report_html.table); models carry one label and rows run in numeric bit-width order (eval._report_names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval._report_html import Html, badge, defined, esc, img, pct, pp, table
from eval._report_names import label_key, short_patch
from eval._report_verdict import gap_text, largest_gap, semantics_text

MAX_ROWS = 200  # disagreement rows per comparison in the page (every one of them is in compare.json)
LSB_NOTE = ("one step of the fake-quant logit grid, per class: the input scale of the last QuantLinear times its "
            "weight scale, the step of its int32 accumulator (computed once per checkpoint and bit width; each "
            "comparison in compare.json names its source). A runtime whose logits are quantized more coarsely "
            "(TFLite's int16 output) differs by up to half its own output step even when every integer agrees")


def cmp_order(c: dict) -> tuple:
    return (c["info"].get("device", ""), c["out"], label_key(c["info"].get("model", "")))


def summary(data: dict) -> str:
    rows = []
    for c in sorted(data["comparisons"], key=cmp_order):
        ties = [c[g][f"ties_{side}"] for side in ("ref", "out") for g in ("clean", "patched")]
        lsb, step = c["logits"].get("max_abs_lsb"), c["logits"].get("out_step_lsb")
        rows.append([c["out"], c["info"].get("model", ""), c["info"].get("device", ""), badge(c["passed"]),
                     pct(c["clean"]["rate"]), pct(c["patched"]["rate"]), f"{ties[0] + ties[1]} / {ties[2] + ties[3]}",
                     ("n/a" if lsb is None else f"{lsb:.3g}") + (f" (output step {step:.3g})" if step else ""),
                     gap_text(largest_gap(c)), semantics_text(c), (c.get("divergence") or {}).get("summary", ""),
                     "; ".join(c["reasons"])])
    if not rows:
        return "<p>No comparisons (run <code>python -m eval.compare</code> on the store).</p>"
    skipped = "".join(f"<li>{esc(s['runtime'])} run {esc(s['run'][:12])}: {esc(s['reason'])}</li>"
                      for s in data["skipped"])
    return (table(["runtime", "model", "device", "gate", "clean agree (non-tie)", "patched agree (non-tie)",
                   "ties ref / deployed", "max |dlogit| LSB", "largest ASR gap, deployed \u2212 fake-quant",
                   "reproduced by (integer executor semantics)", "first divergent layer", "gate failures"], rows,
                  what="comparisons")
            + (f"<p>Not compared:</p><ul>{skipped}</ul>" if skipped else ""))


def asr_table(comparisons: list[dict]) -> str:
    """Every patch x comparison: both ASRs, the paired difference, its family interval, Holm p, stability."""
    rows = []
    for c in sorted(comparisons, key=cmp_order):
        for p in c["patches"]:
            f, st = p.get("family") or {}, p.get("stability") or {}
            rows.append([c["out"], c["info"].get("model", ""), c["info"].get("device", ""), short_patch(p["name"]),
                         pct(p["asr_ref"]["asr"]), pct(p["asr_out"]["asr"]),
                         f"{pp(p['diff']['value'])} [{pp(p['diff']['ci95'][0])}, {pp(p['diff']['ci95'][1])}]"
                         if defined(p["diff"]["value"]) else "n/a",
                         f"[{pp(f['ci_family'][0])}, {pp(f['ci_family'][1])}]" if f else "n/a",
                         f"{f['p_holm']:.2g}" if f else "n/a",
                         ("yes" if f["significant"] else "no") if f else "n/a",
                         f"{st['same_sign']} of {st['measured']}" if st.get("measured") else "n/a",
                         f"{p['diff'].get('b', len(p.get('out_only', [])))} / {p['diff'].get('c', len(p.get('ref_only', [])))}"])
    return table(["runtime", "model", "device", "patch", "fake-quant ASR", "deployed ASR", "difference (95% CI)",
                  "family-wise CI", "Holm p", "significant", "same sign in image subsets",
                  "fooled on deployed only / fake-quant only"], rows, what="patch comparisons")


def run_asr_table(runs: list[dict]) -> str:
    rows = sorted([[r["runtime"], r["model"], r["device"], short_patch(a["patch"]),
                    "untargeted" if a["target"] is None else a["target"], pct(a["asr"])] for r in runs for a in r["asr"]],
                  key=lambda x: (x[0], label_key(x[1]), x[2], x[3]))
    return table(["runtime", "model", "device", "patch", "target", "ASR (95% CI)"], rows, what="runs x patches")


def _attacked(made_on: str, run: dict) -> bool:
    """Whether `run` is the runtime, artifact and device a `made_on` string names (qadtr.attacks.Patch.made_on)."""
    from qadtr.attacks.patchfile import made_on_parts  # qadtr.attacks imports torch: the page is drawn without it

    parts = made_on_parts(made_on)
    if parts is None:
        return False
    device, runtime, artifact, sha = parts
    same = run.get("artifact_sha256", "")[:16] == sha if run.get("artifact_sha256") else \
        Path(run["artifact"]).name == artifact  # a report.json from before runs kept their artifact's sha256
    return run["runtime"] == runtime and same and (run["device"] == device if device else
                                                   (run.get("device_info") or {}).get("kind", "local") == "local")


DEPLOYED_NOTE = ("Each patch's ASR (95% CI, n) on every complete run that replayed it, one table per set of runs "
                 "(a store holds one replay per model); (attacked): the runtime and artifact its file's made_on "
                 "names. A per-image patch is replayed on its own images and places, so its attacked cell repeats "
                 "the attack's own ASR when this host's kernels of that runtime are the ones it queried (ORT sums "
                 "u8 x s8 exactly with VNNI, in saturating int16 pairs on AVX2 alone: see Kernel sets)")


def deployed_attacks(runs: list[dict]) -> str:
    """One row per patch made on a deployed artifact (a non-empty `made_on`): its ASR on every complete run that
    replayed it, the run it attacked marked; one table per set of runs that replayed the same patches."""
    done = sorted((r for r in runs if r["complete"]), key=lambda r: (label_key(r["model"]), r["device"], r["runtime"]))
    found: dict[tuple, tuple[dict, dict]] = {}  # (patch, made_on) -> (its first ASR row, {run index: ASR row})
    for j, r in enumerate(done):
        for a in r["asr"]:
            if a.get("made_on"):
                found.setdefault((a["patch"], a["made_on"]), (a, {}))[1][j] = a
    if not found:
        return Html("<p>No patch in this store was made on a deployed artifact: every replayed patch file's "
                    "<code>made_on</code> is empty (fake-quant attacks).</p>")
    groups: dict[tuple, list] = {}  # the runs that replayed a patch -> its rows
    for (name, made_on), (a, by_run) in sorted(found.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        groups.setdefault(tuple(sorted(by_run)), []).append((name, made_on, a, by_run))
    devices = len({r["device"] for r in done}) > 1
    parts = [f"<p>{esc(DEPLOYED_NOTE)}.</p>"]
    for cols, entries in sorted(groups.items()):
        models = ", ".join(dict.fromkeys(done[j]["model"] for j in cols))
        head = ["patch", "attack", "made against", "target"] + [
            f"{done[j]['runtime']} \u00b7 {done[j]['model']}" + (f" \u00b7 {done[j]['device']}" if devices else "")
            for j in cols]
        rows = [[short_patch(name), a["attack"], made_on, "untargeted" if a["target"] is None else a["target"],
                 *(pct(by_run[j]["asr"]) + (" (attacked)" if _attacked(made_on, done[j]) else "") for j in cols)]
                for name, made_on, a, by_run in entries]
        parts.append(f"<h3>{esc(models)}: {len(rows)} patch{'' if len(rows) == 1 else 'es'}</h3>"
                     + table(head, rows, what="patches"))
    return Html("".join(parts))


def definitions(data: dict) -> str:
    d = data["definitions"]
    items = [("Untargeted ASR", d["untargeted"]), ("Targeted ASR", d["targeted"]), ("Per side", d.get("asr_note")),
             ("Tie rule", d.get("tie_rule")), ("ASR difference CI", d.get("paired_ci")),
             ("Many comparisons", d.get("family")), ("Stability", d.get("stability")),
             ("Reproduced by", d.get("attribution")), ("Gate", d.get("gate")), ("Latency", d["latency"])]
    if data["comparisons"]:
        items.append(("Logit LSB", LSB_NOTE))
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v) + "</dl>"


def disagreements(data: dict) -> str:
    parts = []
    for c in sorted(data["comparisons"], key=cmp_order):
        rows = [[d["sample"], d["test_index"], "clean" if d["patch"] < 0 else short_patch(c["patches"][d["patch"]]["name"]),
                 d["label"], d["pred_ref"], d["pred_out"], "yes" if d["tie_ref"] else "", "yes" if d["tie_out"] else "",
                 d["attack"], "n/a" if d["max_dlogit_lsb"] is None else f"{d['max_dlogit_lsb']:.2f}"]
                for d in c["disagreements"][:MAX_ROWS]]
        more = len(c["disagreements"]) - len(rows)
        parts.append(f"<h3>{esc(c['out'])} vs {esc(c['ref'])}, {esc(c['info'].get('model', ''))} on "
                     f"{esc(c['info'].get('device', ''))}: {len(c['disagreements']):,} samples</h3>"
                     + (table(["sample", "test image", "patch", "label", "pred ref", "pred deployed", "tie ref",
                               "tie deployed", "attack succeeds only on", "max |dlogit| LSB"], rows, what="samples")
                        if rows else "<p>None: every prediction and attack outcome agrees.</p>")
                     + (f"<p>{more:,} more rows in compare.json.</p>" if more > 0 else ""))
    return "".join(parts) or "<p>No comparisons.</p>"


def divergence(data: dict) -> str:
    parts = []
    for c in sorted(data["comparisons"], key=cmp_order):
        d = c.get("divergence") or {}
        head = f"<h3>{esc(c['out'])}, {esc(c['info'].get('model', ''))} on {esc(c['info'].get('device', ''))}</h3>"
        if d.get("skipped") or not d:
            parts.append(head + f"<p>Not computed: {esc(d.get('skipped', 'no data'))}</p>")
            continue
        rows = [[i["sample"], i.get("why", ""), i["first_layer"] or "none (identical integers)",
                 f"{i['differing']} / {i['elements']}", i["max_step"], i["layers_differing"]] for i in d["images"]]
        note = "" if d.get("outputs_identical") in (True, None) else \
            "<p><strong>The instrumented artifact's logits differ from the plain artifact's.</strong></p>"
        parts.append(head + f"<p>{esc(d['method'])}. Layers in network order: {esc(', '.join(d['layers']))}.</p>" + note
                     + table(["sample", "rerun because", "first divergent layer", "differing elements there",
                              "max step there", "layers differing"], rows, what="images"))
    return "".join(parts) or "<p>No comparisons.</p>"


def latency_table(runs: list[dict]) -> str:
    rows = []
    for r in sorted(runs, key=lambda r: (r["device"], r["runtime"], label_key(r["model"]))):
        ms = np.repeat(np.asarray(r["latency_ms"], np.float64), r["latency_n"])  # (images,)
        p = np.percentile(ms, [50, 90, 99]) if len(ms) else [float("nan")] * 3
        rows.append([r["runtime"], r["model"], r["device"] + (" (emulated)" if r["emulated"] else ""),
                     *(f"{x:.4f}" for x in p), f"{1000 / p[0]:.0f}" if len(ms) and p[0] > 0 else "n/a",
                     "not measured" if r["energy_j"] is None else f"{r['energy_j']:.3g}", pct(r["accuracy"])])
    return table(["runtime", "model", "device", "p50 ms", "p90 ms", "p99 ms", "images/s (p50)", "J per image",
                  "clean accuracy"], rows, what="runs")


def kernels(runs: list[dict]) -> str:
    return table(["run", "runtime", "device", "model", "kernels", "artifact"],
                 [[r["run_id"][:12], r["runtime"], r["device"], r["model"], r["kernels"], r["artifact"]]
                  for r in sorted(runs, key=lambda r: (r["device"], r["runtime"], label_key(r["model"])))], what="runs")


def across(data: dict) -> str:
    if not data["across"]:
        return "<p>One device only (or no runtime ran on two devices).</p>"
    return table(["runtime", "artifact", "device", "vs", "logits", "differing", "max |d|", "argmax agree"],
                 [[a["runtime"], a["artifact"], a["device"], a["reference_device"], a["logits"], a["differing"],
                   f"{a['max_abs']:.3g}", f"{100 * a['argmax_agree']:.2f}%"] for a in data["across"]], what="pairs")


def patches(data: dict) -> str:
    figs = []
    for t in data["patches"]:
        imgs = "".join(img(i["png"], i["alt"]) for i in t.get("images") or [])
        what = "untargeted" if t["target"] is None else f"target {t['target']}"
        missing = "" if t["file"] else " (patch file not given: the first patched replay image)"
        figs.append(f"<figure>{imgs}<figcaption>{esc(t['patch'])}: {esc(t['attack'])}, {esc(t['side'])} "
                    f"px, {esc(what)}{missing}{'' if imgs else ' (no image: neither file is on this machine)'}"
                    "</figcaption></figure>")
    return Html("".join(figs) or "<p>No patches.</p>")

