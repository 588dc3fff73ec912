"""The host fingerprint stored with every result: CPU, the ISA features integer kernels dispatch on, versions.

Standard library only, Python >= 3.8: devices/ssh.py ships this file to every board with the rest of the
runner layer, so a board describes itself with the same code as the host.

    >>> fingerprint()["isa"]
    ['avx2', 'avx512bw', 'avx512f', 'avx512_vnni']
    >>> int8_dot(fingerprint())
    'vnni'

Why the flags matter: ONNX Runtime's u8s8 integer kernels (MLAS QGEMM) use
VPDPBUSD where the CPU has AVX-512 VNNI or AVX-VNNI (exact int32 sums), and VPMADDUBSW where it has only
AVX2 / AVX-512BW, which sums each pair of u8 x s8 products into int16 with saturation. On ARM the int8
kernels differ by `asimddp` (SDOT), `i8mm` (SMMLA) and `sve`.
"""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata

# /proc/cpuinfo flags that select integer kernels, per architecture (everything else is left out: the
# fingerprint names what decides the arithmetic, not the whole flag list)
ISA_FLAGS = {
    "x86_64": ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
               "avx512_bf16", "amx_tile", "amx_int8"),
    "aarch64": ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2", "sme"),
}
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
             "0xd09": "Cortex-A73", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd41": "Cortex-A78",
             "0xd42": "Cortex-A78AE", "0xd4b": "Cortex-A78C", "0x004": "NVIDIA Carmel"}
# A one-node MatMulInteger model (uint8 a (1, 64) x int8 b = 127 (64, 1) -> int32), serialized once with onnx.helper
# so that a board without the onnx package can run it: 255 * 127 * 64 = 2072640 exactly; a kernel that sums u8 x s8
# pairs into int16 with saturation gives 32 * 32767 = 1048544 (README, "Why a deployed model differs").
_ORT_PROBE = ("CAgSBXFhZHRyOpgBChgKAWEKAWISAXkiDU1hdE11bEludGVnZXISBXByb2JlKksIQAgBEANCAWJKQH9/f39/f39/f39/f39/f39/"
              "f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39aEwoBYRIOCgwIAhIICgIIAQoCCEBiEwoBeRIOCgwIBhIICgIIAQoCCAFCBAoAEA0=")
_PROBE_RESULT = {2072640: "exact", 1048544: "pairs-int16-saturating"}
# distributions whose version decides an integer result (the runtimes and what feeds them)
VERSIONED = ("onnxruntime", "ai-edge-litert", "numpy", "brevitas", "onnx", "torch", "tensorrt")


def cpuinfo(path: str = "/proc/cpuinfo") -> dict:
    """The first processor block of /proc/cpuinfo as {key: value} (empty where the file is unreadable)."""
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip() and fields:
                    break  # one block is enough: every core of these machines reports the same features
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model(fields: dict | None = None) -> str:
    fields = cpuinfo() if fields is None else fields
    if "model name" in fields:
        return fields["model name"]
    part = fields.get("CPU part", "")
    return ARM_PARTS.get(part, f"ARM part {part}" if part else platform.processor() or platform.machine())


def isa_flags(fields: dict | None = None, machine: str | None = None) -> list:
    """The kernel-deciding ISA features this CPU reports, sorted (x86 `flags`, ARM `Features`)."""
    fields = cpuinfo() if fields is None else fields
    have = set((fields.get("flags") or fields.get("Features") or "").split())
    return sorted(f for f in ISA_FLAGS.get(machine or platform.machine(), ()) if f in have)


def versions(dists: tuple = VERSIONED) -> dict:
    out = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass  # absent: not part of this host's stack
    return out


@functools.lru_cache(maxsize=None)  # once per process: the CPU and the installed ORT do not change under it
def ort_u8s8() -> str:
    """How this process's ONNX Runtime really sums u8 x s8 products, asked of ORT itself with _ORT_PROBE:
    "exact", "pairs-int16-saturating", "other: <value>", or "unavailable: <why>". Checked, not read off
    /proc/cpuinfo: MLAS dispatches on CPUID, which an emulator or a hypervisor may report differently."""
    try:
        import base64

        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(base64.b64decode(_ORT_PROBE), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
        value = int(session.run(None, {"a": np.full((1, 64), 255, np.uint8)})[0][0, 0])
        return _PROBE_RESULT.get(value, f"other: {value}")
    except Exception as e:  # noqa: BLE001 - no ORT here, or one that cannot run the probe: say which
        return f"unavailable: {type(e).__name__}: {str(e)[:120]}"


# -- the kernel lines every run records (host runners and the board agent alike) --------------------------
def ort_kernels(version: str, provider: str, level: str) -> str:
    """ONNX Runtime's kernel line: version, provider, optimisation level and how it sums u8 x s8 here."""
    return f"ORT {version} {provider}, {level}, u8s8 sums {ort_u8s8()}"


def litert_kernels(interp, kernel_set: str, version: str | None) -> tuple[str, int]:
    """(kernel line, nodes in a delegate) of an allocated LiteRT interpreter. A DELEGATE node in the execution
    plan is an XNNPACK partition: counted, not assumed (a builtin or reference run must have none)."""
    ops = interp._get_ops_details()  # noqa: SLF001 - LiteRT's only view of the execution plan
    delegated = sum(o["op_name"] == "DELEGATE" for o in ops)
    return f"{kernel_set} (ai-edge-litert {version}; {delegated} of {len(ops)} nodes delegated to XNNPACK)", delegated


def fingerprint(path: str = "/proc/cpuinfo") -> dict:
    """{machine, cpu, isa, int8_dot, ort_u8s8, cores, os, python, versions}: JSON-able, stored with every result."""
    fields = cpuinfo(path)
    fp = {"machine": platform.machine(), "cpu": cpu_model(fields), "isa": isa_flags(fields),
          "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
          "versions": versions()}
    fp["int8_dot"] = int8_dot(fp)
    fp["ort_u8s8"] = ort_u8s8()
    return fp


def int8_dot(fp: dict) -> str:
    """How this CPU's fastest u8 x s8 dot product sums, as MLAS / XNNPACK choose kernels by it:
    "vnni" (exact int32), "pairs-int16-saturating" (x86 without VNNI: VPMADDUBSW), "sdot" / "i8mm" (ARM,
    exact), "neon" (ARM without dot product: widening multiplies, exact), or "unknown"."""
    isa = set(fp.get("isa") or ())
    machine = fp.get("machine", "")
    if machine in ("x86_64", "AMD64"):
        if isa & {"avx512_vnni", "avx_vnni", "amx_int8"}:
            return "vnni"
        return "pairs-int16-saturating" if isa & {"avx2", "avx512bw"} else "unknown"
    if machine in ("aarch64", "arm64"):
        return "i8mm" if "i8mm" in isa else "sdot" if "asimddp" in isa else "neon" if "asimd" in isa else "unknown"
    return "unknown"
