"""HTML pieces of eval.report: escaping, tables that collapse into <details>, status badges, the stylesheet.

Every string that reaches the page goes through `esc`, except `Html` values this module's own helpers built.
"""

from __future__ import annotations

import html

SHOW_ROWS = 8  # rows of a long table shown above its <details>: enough to see what the table holds
COLLAPSE_AT = 12  # a table of at most this many rows is shown whole (folding it would hide little)
# status -> (CSS class, symbol, word): the word and the symbol carry the verdict without colour (accessibility)
STATUS = {"agrees": ("pass", "\u2713", "AGREES"), "differs": ("warn", "!", "DIFFERS"),
          "diverges": ("fail", "\u2717", "DIVERGES"), "unknown": ("none", "?", "NOT COMPARED")}


class Html(str):
    """Markup built here from escaped parts: `table` inserts it as is."""


def defined(v) -> bool:
    """A stored rate or difference that has a value (n = 0 is stored as null, an empty difference as NaN)."""
    return v is not None and v == v


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def cell(c) -> str:
    return c if isinstance(c, Html) else esc(c)


def _plain(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def table(head: list[str], rows: list[list], *, what: str = "rows", show: int = SHOW_ROWS,
          collapse_at: int = COLLAPSE_AT) -> Html:
    """A table; one longer than `collapse_at` rows shows its first `show` and folds the rest into <details>."""
    if len(rows) <= collapse_at:
        return Html(_plain(head, rows))
    rest = len(rows) - show
    return Html(_plain(head, rows[:show]) + f'<details class="more"><summary>Show the other {rest} of {len(rows)} '
                f"{esc(what)}</summary>{_plain(head, rows[show:])}</details>")


def badge(ok: bool) -> Html:
    """A gate verdict: colour, symbol and word."""
    return Html('<span class="badge pass">\u2713 PASSED</span>' if ok else '<span class="badge fail">\u2717 FAILED</span>')


def status_badge(status: str) -> Html:
    cls, sym, word = STATUS[status]
    return Html(f'<span class="badge {cls}">{sym} {word}</span>')


def img(b64: str, alt: str, width: int | None = None) -> Html:
    w = f' width="{width}"' if width else ""
    return Html(f'<img alt="{esc(alt)}"{w} src="data:image/png;base64,{b64}">')


def pct(d: dict | None) -> str:
    """A rate with its 95% CI and n: "87.20% [84.99, 89.13] (n=1,000)"; "n/a" when n = 0."""
    if not d or d.get("n", 0) == 0 or not defined(d.get("value")):
        return "n/a"
    lo, hi = d["ci95"]
    return f"{100 * d['value']:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={d['n']:,})"


def num(v: float | None, sign: str = "") -> str:
    """A rate as a percentage with one decimal; "n/a" where it is undefined (n = 0 is stored as null)."""
    return "n/a" if not defined(v) else f"{100 * v:{sign}.1f}"


def pp(v: float | None) -> str:
    """A difference of rates in percentage points with its sign (U+2212 minus: reads as minus, not as a hyphen)."""
    return "n/a" if not defined(v) else f"{100 * v:+.1f}".replace("-", "\u2212") + " pp"


CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em 2em;max-width:1400px;color:#1b1f24;line-height:1.35}"
       "h1{margin:.2em 0}h2{border-bottom:2px solid #d0d7de;padding-bottom:.15em;margin-top:1.6em}"
       "table{border-collapse:collapse;font-size:12px;margin:.5em 0}"
       "td,th{border:1px solid #d0d7de;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f6f8fa}"
       "figure{display:inline-block;margin:.5em}figcaption{font-size:11px;max-width:300px}dt{font-weight:bold}"
       "figure.wide{display:block;margin:.8em 0}figure.wide figcaption{max-width:none;font-size:12px}img{max-width:100%}"
       "pre{font-size:11px;background:#f6f8fa;padding:.5em;overflow-x:auto}"
       "nav{font-size:13px;margin:.6em 0}details.more summary{cursor:pointer;color:#0550ae;font-size:12px}"
       ".badge{display:inline-block;padding:1px 7px;border-radius:9px;font-weight:bold;font-size:12px;"
       "white-space:nowrap;border:1px solid}"
       ".pass{background:#dafbe1;color:#116329;border-color:#4ac26b}"
       ".warn{background:#fff8c5;color:#7d4e00;border-color:#d4a72c}"
       ".fail{background:#ffebe9;color:#a40e26;border-color:#ff8182}"
       ".none{background:#f6f8fa;color:#57606a;border-color:#d0d7de}"
       "table.verdict{font-size:13px}table.verdict td{min-width:16em;max-width:26em}table.verdict tbody th{max-width:15em}"
       "table.verdict td.pass{border-left:6px solid #1a7f37}table.verdict td.warn{border-left:6px solid #bf8700}"
       "table.verdict td.fail{border-left:6px solid #cf222e}table.verdict td.none{border-left:6px solid #8c959f}"
       "table.verdict td p{margin:.25em 0}.lead{font-size:15px}.findings li{margin:.3em 0}"
       ".host{font-size:12px;color:#57606a;font-weight:normal}.small{font-size:12px;color:#57606a}")
