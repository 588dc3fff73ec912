"""The host fingerprint of a run's device (devices._host.fingerprint, saved in the run's device_info["host"]):
CPU, ISA flags, the int8 dot-product kind and runtime versions, as the report's Devices section shows them."""

from __future__ import annotations

import json

from eval._report_html import Html, esc, table

# the ISA flags that decide which int8 kernels run: x86 VNNI/AMX vs AVX2-only, ARM dot product / i8mm
DECIDING = {"x86_64": ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"),
            "aarch64": ("asimd", "asimddp", "i8mm", "sve")}


def fingerprint(info: dict) -> dict:
    """The fields of a device_info that say which kernels could run there (None where the run did not record it)."""
    info = info if isinstance(info, dict) else {}
    host = info.get("host") if isinstance(info.get("host"), dict) else {}
    return {"cpu": host.get("cpu") or info.get("cpu"), "machine": host.get("machine") or info.get("machine"),
            "cores": host.get("cores") or info.get("cores"), "isa": host.get("isa"), "int8_dot": host.get("int8_dot"),
            "ort_u8s8": host.get("ort_u8s8"), "versions": host.get("versions") or info.get("runtimes"),
            "os": host.get("os") or info.get("os"), "python": host.get("python") or info.get("python"),
            "emulator": info.get("emulator"), "approximates": info.get("approximates")}


def _flags(fp: dict) -> str:
    if not fp["isa"]:
        return "not recorded (the run predates the host fingerprint)"
    have = set(fp["isa"])
    deciding = DECIDING.get(fp["machine"] or "", ())
    marks = ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in deciding)
    return (marks + "; all: " if marks else "") + ", ".join(fp["isa"])


def host_line(info: dict) -> str:
    """One line: "AMD EPYC, x86_64; avx2 yes, avx512_vnni yes, ...; int8 dot product: vnni; ORT u8s8: exact"."""
    fp = fingerprint(info)
    parts = [", ".join(str(x) for x in (fp["cpu"], fp["machine"]) if x)]
    if fp["isa"]:
        have = set(fp["isa"])
        parts.append(", ".join(f"{f} {'yes' if f in have else 'no'}" for f in DECIDING.get(fp["machine"] or "", ())))
    if fp["int8_dot"]:
        parts.append(f"int8 dot product: {fp['int8_dot']}")
    if fp["ort_u8s8"]:
        parts.append(f"ORT u8s8 sums: {fp['ort_u8s8']}")
    if fp["emulator"]:
        parts.append("emulated")
    return "; ".join(p for p in parts if p) or "no fingerprint recorded"


def devices_section(runs: list[dict], compare_host: dict | None) -> str:
    """Per device: its fingerprint as a table, the whole device_info in a <details>; then the comparing host."""
    parts = []
    infos = {}
    for r in runs:
        infos.setdefault(r["device"], r["device_info"])
    for dev, info in sorted(infos.items()):
        fp = fingerprint(info)
        versions = fp["versions"] if isinstance(fp["versions"], dict) else {}
        rows = [["CPU", f"{fp['cpu'] or 'not recorded'}" + (f" ({fp['cores']} cores)" if fp["cores"] else "")],
                ["machine", fp["machine"] or "not recorded"], ["ISA flags", _flags(fp)],
                ["int8 dot-product kind", fp["int8_dot"] or "not recorded"],
                ["ORT u8s8 sums", fp["ort_u8s8"] or "not recorded"],
                ["runtime versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v) or "not recorded"],
                ["OS, Python", ", ".join(str(x) for x in (fp["os"], fp["python"]) if x) or "not recorded"]]
        if fp["emulator"]:
            rows.append(["emulator", f"{fp['emulator']} (approximates {fp['approximates'] or '?'})"])
        parts.append(f"<h3>{esc(dev)}</h3>" + table(["", "recorded in the run's device_info"], rows)
                     + f"<details class=\"more\"><summary>device_info of {esc(dev)} as recorded</summary>"
                     f"<pre>{esc(json.dumps(info, indent=2, sort_keys=True))}</pre></details>")
    if compare_host:
        parts.append("<h3>Host that ran eval.compare (integer executor attribution)</h3>"
                     + f"<p>{esc(host_line({'host': compare_host}))}</p>")
    return Html("".join(parts) or "<p>No runs.</p>")
