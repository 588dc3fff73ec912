"""The report's first block: per device x runtime x bit width, does the deployed model behave like its
fake-quant simulation, and if not, by how much and why (from compare.json's gate, family-corrected ASR
differences, subset stability and integer-executor attribution), stated in words and in colour.

Status of one comparison:
- agrees: its gate passed.
- differs: the gate failed (agreement or an ASR gap beyond the gate), but no ASR difference is significant
  after the family correction: predictions move, the measured robustness does not (detectably).
- diverges: the gate failed and an ASR difference is significant in its family, or compare.json has no
  family correction to tell.
"""

from __future__ import annotations

import re

from eval._report_host import host_line
from eval._report_html import STATUS, Html, defined, esc, pp, status_badge
from eval._report_names import bits_key, label_key, short_patch
from qadtr.bits import bits_name

PHRASE = {"agrees": "behaves like its simulation", "differs": "predictions differ; no ASR gap significant",
          "diverges": "diverges from its simulation"}
WORST = ("agrees", "differs", "diverges")  # a cell holding several models takes the worst status's colour


def status(c: dict) -> str:
    if c.get("passed"):
        return "agrees"
    fam = [p.get("family") for p in c.get("patches", [])]
    if any(f and f.get("significant") for f in fam):
        return "diverges"
    return "differs" if fam and all(fam) else "diverges"


def largest_gap(c: dict) -> dict | None:
    ps = [p for p in c.get("patches", []) if defined(p["diff"]["value"])]
    return max(ps, key=lambda p: (abs(p["diff"]["value"]), -p["index"] if "index" in p else 0), default=None)


def _p(v: float) -> str:
    return f"{v:.2g}"


def gap_text(p: dict | None, *, where: str = "") -> str:
    """"+3.2 pp on w2a2_universal_s10_t3 (95% CI [+1.0, +5.5]; family of 108: [-0.4, +6.9], Holm p 0.07,
    not significant; same sign in 4 of 5 image subsets)"."""
    if p is None:
        return "no patch with eligible images"
    d = p["diff"]
    text = f"{pp(d['value'])} on {short_patch(p['name'])}{where} (95% CI [{pp(d['ci95'][0])}, {pp(d['ci95'][1])}]"
    f = p.get("family")
    if f:
        lo, hi = f["ci_family"]
        text += (f"; family of {f['family_size']}: [{pp(lo)}, {pp(hi)}], Holm p {_p(f['p_holm'])}, "
                 f"{'significant' if f['significant'] else 'not significant'}")
    else:
        text += "; not corrected for the other comparisons"
    st = p.get("stability") or {}
    if st.get("measured"):
        text += f"; same sign in {st['same_sign']} of {st['measured']} image subsets"
    return text + ")"


def _candidate(a: dict, semantics: str | None) -> dict | None:
    rows = a.get("candidates") or []
    if semantics is not None:
        return next((r for r in rows if r.get("semantics") == semantics), None)
    return max(rows, key=lambda r: r.get("exact", 0) / max(1, r.get("images", 1)), default=None)


def semantics_text(c: dict, *, rounding: bool = False) -> str:
    """"litert-builtin = double-ruy: 13,000 of 13,000 images bit-exact" (from compare.json's attribution)."""
    a = c.get("attribution") or {}
    if not a or a.get("skipped") or not a.get("candidates"):
        return a.get("summary") or a.get("skipped") or "not attributed (no integer-executor attribution in compare.json)"
    sem = a.get("explained_by")
    r = _candidate(a, sem)
    if sem and r:
        how = ""
        if rounding and r.get("rounding"):
            base = re.match(r"as (\S+),", r["rounding"])  # "as double, but ...": say what double is
            ref = _candidate(a, base[1]) if base else None
            how = f" ({ref['rounding']}; {sem}: {r['rounding']})" if ref else f" ({r['rounding']})"
        exp = f"; expected {a['expected']}" if a.get("expected") and a["expected"] != sem else ""
        return f"{c['out']} = {sem}{how}: {r['exact']:,} of {r['images']:,} images bit-exact{exp}"
    if r:
        return (f"no modelled semantics reproduces every image; closest {r['semantics']} "
                f"({r['exact']:,} of {r['images']:,} images bit-exact)")
    return a.get("summary") or "not attributed"


def _agreement(c: dict) -> str:
    cl, pa = c["clean"], c["patched"]
    if not defined(cl["rate"]["value"]):
        return "No non-tie clean images to compare."
    patched = f", patched {100 * pa['rate']['value']:.2f}%" if defined(pa["rate"]["value"]) else ""
    return (f"Predictions agree: clean {100 * cl['rate']['value']:.1f}%{patched} "
            f"(n = {cl['n_nontie']:,} / {pa['n_nontie']:,}).")


def _cell_gap(c: dict) -> str:
    """The cell's ASR sentence: identical, or the largest gap with its family-wise interval and Holm p."""
    ps = [p for p in c.get("patches", []) if defined(p["diff"]["value"])]
    if ps and all(p["diff"].get("b", 1) == 0 and p["diff"].get("c", 1) == 0 for p in ps):
        return f"ASR identical on all {len(ps)} patches: no image is fooled on one side only."
    p = largest_gap(c)
    if p is None:
        return "No patch with eligible images."
    f, st = p.get("family"), p.get("stability") or {}
    text = f"Largest ASR gap {pp(p['diff']['value'])} ({short_patch(p['name'])})"
    if f:
        lo, hi = f["ci_family"]
        text += (f": family-wise CI [{pp(lo)}, {pp(hi)}] over {f['family_size']}, Holm p {_p(f['p_holm'])}, "
                 f"{'significant' if f['significant'] else 'not significant'}")
    else:
        lo, hi = p["diff"]["ci95"]
        text += f": 95% CI [{pp(lo)}, {pp(hi)}], not corrected for the other comparisons"
    if st.get("measured"):
        text += f"; same sign in {st['same_sign']} of {st['measured']} subsets"
    return text + "."


def _card(c: dict) -> str:
    s = status(c)
    gate = "" if c.get("passed") else (f"<p>Gate failed: {esc(c['reasons'][0])}"
                                       + (f" (and {len(c['reasons']) - 1} more)" if len(c["reasons"]) > 1 else "")
                                       + ".</p>" if c.get("reasons") else "")
    return (f"<div><p><strong>{esc(c['info'].get('model', ''))}</strong> {status_badge(s)} {esc(PHRASE[s])}</p>"
            f"<p>{esc(_agreement(c))}</p><p>{esc(_cell_gap(c))}</p>"
            f"<p>Integer executor: {esc(semantics_text(c))}.</p>{gate}</div>")


def _bits(c: dict):
    b = c["info"].get("bits")
    return tuple(b) if b else None


def findings(comparisons: list[dict]) -> list[str]:
    """The two or three sentences that matter: what diverges and why, how far ASR moves, what agrees."""
    out = []
    bad: dict[tuple, list[dict]] = {}
    for c in comparisons:
        if status(c) != "agrees":
            bad.setdefault((c["out"], c["info"].get("device", "")), []).append(c)
    for (rt, dev), cs in sorted(bad.items()):
        cs.sort(key=lambda c: label_key(c["info"].get("model", "")))
        models = ", ".join(c["info"].get("model", "") for c in cs)
        agree = ", ".join(f"{100 * c['clean']['rate']['value']:.1f}%" for c in cs if defined(c["clean"]["rate"]["value"]))
        sems = sorted({semantics_text(c, rounding=True) for c in cs})
        out.append(f"{rt} on {dev} does not behave like fake-quant for {models} (clean agreement {agree}). "
                   f"Integer executor: {'; '.join(sems)}.")
    pts = [(c, p) for c in comparisons for p in c["patches"] if defined(p["diff"]["value"])]
    if pts:
        c, p = max(pts, key=lambda cp: abs(cp[1]["diff"]["value"]))
        where = f" ({c['out']}, {c['info'].get('model', '')}, {c['info'].get('device', '')})"
        sig = [x for x in pts if (x[1].get("family") or {}).get("significant")]
        if all(x[1].get("family") for x in pts):
            head = (f"{len(sig)} of {len(pts)} ASR differences are significant after Holm's correction"
                    if sig else f"No ASR difference is significant after Holm's correction over all {len(pts)}")
            out.append(f"{head}; the largest is {gap_text(p, where=where)}.")
        else:
            out.append(f"The largest of the {len(pts)} ASR differences is {gap_text(p, where=where)}.")
    good = [c for c in comparisons if status(c) == "agrees"]
    if good:
        rts = sorted({c["out"] for c in good})
        bits = sorted({_bits(c) for c in good}, key=bits_key)
        names = ", ".join(bits_name(b) for b in bits)
        sems = sorted({(c.get("attribution") or {}).get("explained_by") for c in good} - {None})
        out.append(f"{', '.join(rts)} behave{'s' if len(rts) == 1 else ''} like the simulation in {len(good)} of "
                   f"{len(comparisons)} comparisons ({names}"
                   + (f"; reproduced by {', '.join(sems)}" if sems else "") + ").")
    for c in comparisons:  # a deployed run no modelled semantics reproduces: its cause is still open
        a = c.get("attribution") or {}
        if a.get("candidates") and not a.get("explained_by"):
            out.append(f"{c['out']} on {c['info'].get('device', '')}, {c['info'].get('model', '')}: "
                       f"{semantics_text(c)}.")
    return out


def verdict_block(comparisons: list[dict], runs: list[dict]) -> str:
    """The lead sentence, the device x runtime x bit width grid, the findings."""
    if not comparisons:
        return ("<p class=\"lead\">No comparisons: run <code>python -m eval.compare</code> on the store and pass its "
                "compare.json with <code>--compare</code>.</p>")
    counts = {s: sum(status(c) == s for c in comparisons) for s in WORST}
    lead = (f"<p class=\"lead\"><strong>Does the deployed model behave like its fake-quant simulation?</strong> "
            + ", ".join(f"{status_badge(s)} {n} of {len(comparisons)}" for s, n in counts.items() if n) + ".</p>")
    info = {r["device"]: r["device_info"] for r in runs}
    bits = sorted({_bits(c) for c in comparisons}, key=bits_key)
    rows: dict[tuple[str, str], dict] = {}
    for c in comparisons:
        rows.setdefault((c["info"].get("device", ""), c["out"]), {}).setdefault(_bits(c), []).append(c)
    head = "".join(f"<th>{bits_name(b)}</th>" for b in bits)
    body = ""
    for (dev, rt), by_bits in sorted(rows.items()):
        tds = ""
        for b in bits:
            cs = sorted(by_bits.get(b, []), key=lambda c: label_key(c["info"].get("model", "")))
            worst = max((status(c) for c in cs), key=WORST.index, default="unknown")
            tds += (f'<td class="{STATUS[worst][0]}">' + "".join(_card(c) for c in cs)
                    + ("" if cs else "<p>not run</p>") + "</td>")
        body += (f"<tr><th>{esc(rt)}<br>on {esc(dev)}<br><span class=\"host\">{esc(host_line(info.get(dev, {})))}"
                 f"</span></th>{tds}</tr>")
    grid = (f'<table class="verdict"><thead><tr><th>runtime, device (host)</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")
    legend = ("<p class=\"small\">" + " ".join(f"{status_badge(s)} {esc(PHRASE[s])}" for s in WORST)
              + ". ASR gap = deployed \u2212 fake-quant; see Definitions for the gate, the family correction and "
              "the attribution.</p>")
    facts = "".join(f"<li>{esc(s)}</li>" for s in findings(comparisons))
    return Html(lead + f'<ul class="findings">{facts}</ul>' + grid + legend)
