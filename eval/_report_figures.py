"""The report's figures, each an inline base64 PNG (matplotlib Agg), each None when it would show under 2 points.

- `fig_asr_pairs`: every patch's ASR, fake-quant (x) against deployed (y), 95% CI bars both ways, on one
  plot; beside it each comparison's ASR differences with their family-wise (Holm/Bonferroni) intervals.
- `fig_flips`: per runtime, images fooled on one side only (deployed only / fake-quant only), model x patch.
- `fig_asr_vs_bits`: one plot, ASR against bit width, only for runtimes measured at 2 or more bit widths.
- `fig_latency`: per-batch latency of every run on one plot, ms ticks written as plain numbers.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from eval._report_html import defined
from eval._report_names import bits_key, label_key, short_patch
from qadtr.bits import bits_name

MARKERS = "osD^vP"  # one per bit width; colour says the runtime


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _t(s: str) -> str:
    return s.replace("$", r"\$")  # a file name is not mathtext


def _plain_ticks(axis) -> None:
    """Ticks as plain numbers (0.5, 1, 2, 5), never 2x10^1, on a log or linear axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _runtime_colours(names) -> dict[str, str]:
    cycle = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#57606a", "#e16f24", "#1b7c83"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(sorted(set(names)))}


def _cmp_label(c: dict, devices: int) -> str:
    dev = f" @ {c['info'].get('device', '')}" if devices > 1 else ""
    return f"{c['out']} {c['info'].get('model', '')}{dev}"


def fig_asr_pairs(comparisons: list[dict]) -> str | None:
    """Fake-quant vs deployed ASR per patch (CI bars) and the paired differences with family intervals."""
    pts = [(c, p) for c in comparisons for p in c["patches"]
           if defined(p["asr_ref"]["asr"]["value"]) and defined(p["asr_out"]["asr"]["value"])]
    if len(pts) < 2:
        return None
    plt = _plt()
    devices = len({c["info"].get("device") for c in comparisons})
    colours = _runtime_colours(c["out"] for c in comparisons)
    bits = sorted({tuple(c["info"]["bits"]) if c["info"].get("bits") else None for c in comparisons}, key=bits_key)
    order = sorted(comparisons, key=lambda c: (c["out"], c["info"].get("device", ""), label_key(c["info"].get("model", ""))))
    fig, (ax, fx) = plt.subplots(1, 2, figsize=(13, max(4.2, 0.42 * len(order) + 1.6)),
                                 gridspec_kw={"width_ratios": [1, 1.25]})
    seen = set()
    for c, p in pts:
        r, o = p["asr_ref"]["asr"], p["asr_out"]["asr"]
        b = tuple(c["info"]["bits"]) if c["info"].get("bits") else None
        key = (c["out"], b)
        ax.errorbar(100 * r["value"], 100 * o["value"], markersize=5, fmt=MARKERS[bits.index(b) % len(MARKERS)],
                    xerr=[[100 * (r["value"] - r["ci95"][0])], [100 * (r["ci95"][1] - r["value"])]],
                    yerr=[[100 * (o["value"] - o["ci95"][0])], [100 * (o["ci95"][1] - o["value"])]],
                    color=colours[c["out"]], alpha=0.75, elinewidth=0.8, capsize=1.5,
                    label=None if key in seen else _t(f"{c['out']} {c['info'].get('model', '').split(' ')[-1]}"))
        seen.add(key)
    ends = [100 * v for _, p in pts for s in ("asr_ref", "asr_out") for v in (p[s]["asr"]["value"], *p[s]["asr"]["ci95"])
            if v is not None and np.isfinite(v)]
    hi = max(ends + [1.0]) * 1.05  # 1%: a plot of zeros still has an axis
    ax.plot([0, hi], [0, hi], color="#8c959f", linewidth=0.8, linestyle="--", label="deployed = fake-quant")
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="fake-quant ASR % (95% CI)", ylabel="deployed ASR % (95% CI)",
           title="ASR per patch: one point per patch and deployed run")
    ax.legend(fontsize=7, loc="upper left")
    for y, c in enumerate(order):
        ps = [p for p in c["patches"] if defined(p["diff"]["value"])]
        for k, p in enumerate(ps):
            lo, up = (p.get("family") or {}).get("ci_family") or p["diff"]["ci95"]
            yy = y + (k - (len(ps) - 1) / 2) * min(0.06, 0.7 / max(1, len(ps)))  # the patches side by side
            sig = (p.get("family") or {}).get("significant")
            fx.errorbar(100 * p["diff"]["value"], yy, xerr=[[100 * (p["diff"]["value"] - lo)], [100 * (up - p["diff"]["value"])]],
                        fmt="D" if sig else "o", markersize=6 if sig else 3.5, color=colours[c["out"]],
                        elinewidth=0.7, alpha=0.8, markerfacecolor=colours[c["out"]] if sig else "white")
    fam = any(p.get("family") for _, p in pts)
    gate = 100 * ((comparisons[0].get("gate") or {}).get("max_asr_diff") or 0.02)
    for x, style in ((0, "-"), (-gate, ":"), (gate, ":")):
        fx.axvline(x, color="#8c959f", linewidth=0.8, linestyle=style)
    fx.set_yticks(range(len(order)), [_t(_cmp_label(c, devices)) for c in order], fontsize=8)
    fx.invert_yaxis()
    fx.set_xlabel("ASR difference, deployed \u2212 fake-quant (pp)")
    fx.text(0.01, 0.99, ("bars: family-wise 95% CI\nfilled: Holm-significant" if fam else "bars: 95% paired CI")
            + f"\ndotted: gate \u00b1{gate:g} pp", transform=fx.transAxes, va="top", fontsize=7, color="#57606a")
    fx.set_title("ASR difference per patch", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def fig_flips(comparisons: list[dict]) -> str | None:
    """Per runtime (and device): images fooled on the deployed side only / on fake-quant only, model x patch."""
    groups: dict[str, list[dict]] = {}
    devices = len({c["info"].get("device") for c in comparisons})
    for c in comparisons:
        groups.setdefault(c["out"] + (f" on {c['info'].get('device', '')}" if devices > 1 else ""), []).append(c)
    cells = sum(len(c["patches"]) for c in comparisons)
    if cells < 2:
        return None
    plt = _plt()
    patches = sorted({p["name"] for c in comparisons for p in c["patches"]}, key=label_key)
    cols = 1 if len(patches) > 6 else min(2, len(groups))
    nrows = -(-len(groups) // cols)
    per = max(len(g) for g in groups.values())
    fig, axes = plt.subplots(nrows, cols, squeeze=False, figsize=(max(7.0, 0.75 * len(patches) + 3) * cols,
                                                                     (1.0 + 0.45 * per) * nrows + 1.4))
    vmax = max([1] + [p["diff"].get("b", 0) + p["diff"].get("c", 0) for c in comparisons for p in c["patches"]])
    for ax, (title, group) in zip(axes.flat, sorted(groups.items())):
        group = sorted(group, key=lambda c: label_key(c["info"].get("model", "")))
        grid = np.full((len(group), len(patches)), np.nan)  # (models, patches): images fooled on one side only
        for i, c in enumerate(group):
            for p in c["patches"]:
                b, cc = p["diff"].get("b", len(p.get("out_only", []))), p["diff"].get("c", len(p.get("ref_only", [])))
                j = patches.index(p["name"])
                grid[i, j] = b + cc
                ax.text(j, i, f"{b} / {cc}" if b + cc else "\u00b7", ha="center", va="center", fontsize=7,
                        color="white" if b + cc > 0.6 * vmax else "black")
        ax.imshow(grid, cmap="Oranges", vmin=0, vmax=vmax, aspect="auto")
        ax.set_yticks(range(len(group)), [_t(c["info"].get("model", "")) for c in group], fontsize=8)
        ax.set_xticks(range(len(patches)), [_t(short_patch(p)) for p in patches], rotation=35, ha="right", fontsize=7)
        ax.set_title(_t(f"{title}: images fooled on deployed only / on fake-quant only (\u00b7 = none)"), fontsize=9)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def fig_asr_vs_bits(runs: list[dict], reference: str = "fakequant") -> str | None:
    """One plot: ASR against bit width; a line per patch for the reference runtime, markers for the others.

    Only runtimes measured at 2 or more bit widths are drawn (one bit width is no trend); None when none is."""
    series: dict[tuple[str, str], dict] = {}  # (runtime label, patch) -> {bits: asr %}
    devices = len({r["device"] for r in runs})
    for r in runs:
        name = r["runtime"] if devices == 1 else f"{r['runtime']}@{r['device']}"
        for a in r["asr"]:
            if defined(a["asr"]["value"]):
                series.setdefault((name, a["patch"]), {})[None if r["bits"] is None else tuple(r["bits"])] = 100 * a["asr"]["value"]
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return None
    plt = _plt()
    xs = sorted({b for v in series.values() for b in v}, key=bits_key)
    names = sorted({n for n, _ in series}, key=lambda n: (not n.startswith(reference), n))
    patches = sorted({p for _, p in series}, key=label_key)
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    for (name, patch), v in sorted(series.items()):
        pos = sorted(v, key=bits_key)
        off = (names.index(name) - (len(names) - 1) / 2) * 0.06  # runtimes side by side at each bit width
        x = [xs.index(b) + off for b in pos]
        colour = cmap(patches.index(patch) % 20)
        ref = name == names[0]
        ax.plot(x, [v[b] for b in pos], color=colour, linewidth=1.4 if ref else 0, alpha=0.85,
                marker=MARKERS[names.index(name) % len(MARKERS)], markersize=5 if ref else 4,
                markerfacecolor=colour if ref else "none",
                label=_t(short_patch(patch)) if ref else None)
    for i, name in enumerate(names):
        ax.plot([], [], linestyle="-" if i == 0 else "none", marker=MARKERS[i % len(MARKERS)], color="#57606a",
                markerfacecolor="#57606a" if i == 0 else "none", label=_t(f"runtime: {name}"))
    ax.set_xticks(range(len(xs)), [bits_name(b) for b in xs])
    ax.set(xlabel="bit width of the model (weights, activations)", ylabel="ASR %",
           title=f"ASR against bit width (lines: {names[0]}; open markers: the other runtimes)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _png(fig)


def fig_latency(runs: list[dict]) -> str | None:
    """Per-image latency of every run (one value per batch), one row per run, on one plot; None under 2 values."""
    timed = [r for r in runs if r["latency_ms"]]
    if sum(len(r["latency_ms"]) for r in timed) < 2:
        return None
    plt = _plt()
    timed.sort(key=lambda r: (r["device"], r["runtime"], label_key(r["model"])))
    colours = _runtime_colours(r["runtime"] for r in timed)
    fig, ax = plt.subplots(figsize=(9.5, 0.32 * len(timed) + 1.6))
    data = [np.asarray(r["latency_ms"], np.float64) for r in timed]
    box = ax.boxplot(data, orientation="horizontal", widths=0.6, patch_artist=True, showfliers=True,
                     flierprops={"markersize": 2, "alpha": 0.5})
    for b, r in zip(box["boxes"], timed):
        b.set_facecolor(colours[r["runtime"]])
        b.set_alpha(0.55)
    ax.set_yticks(range(1, len(timed) + 1), [_t(f"{r['runtime']} \u00b7 {r['model']} \u00b7 {r['device']}"
                                              + (" (emulated)" if r["emulated"] else "")) for r in timed], fontsize=8)
    ax.invert_yaxis()
    lo, hi = min(float(d.min()) for d in data), max(float(d.max()) for d in data)
    if lo > 0 and hi / lo > 10:  # runtimes differ by orders of magnitude: log axis, plain-number ticks
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis)
    ax.set_xlabel("ms per image (one value per timed batch)")
    ax.set_title("Latency per run", fontsize=10)
    ax.grid(axis="x", color="#d0d7de", linewidth=0.6)
    fig.tight_layout()
    return _png(fig)


def fig_transfer(rows: list[dict]) -> list[str]:
    from eval.transfer import write_heatmaps
    from qadtr._scratch import scratch

    _plt()
    with scratch("report") as tmp:
        return [base64.b64encode(p.read_bytes()).decode() for p in write_heatmaps(rows, Path(tmp))]


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


def patch_images(t: dict, replay_images: np.ndarray | None) -> list[dict]:
    """[{alt, png}]: the patch file's thumbnail (when found) and its first replay image (when the replay is)."""
    from qadtr.attacks import load_patch

    out = []
    if t["file"] and Path(t["file"]).is_file():
        values = load_patch(t["file"]).values
        out.append({"alt": f"patch {t['patch']}", "png": thumbnail(values[0] if t["per_image"] else values)})
    if replay_images is not None:
        out.append({"alt": f"{t['patch']} in place", "png": thumbnail(replay_images[t["row"]])})
    return out
