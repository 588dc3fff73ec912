"""devices._host: the fingerprint every result carries, parsed from /proc/cpuinfo as each kind of CPU writes it."""

from __future__ import annotations

from importlib import metadata

import pytest

from devices import _host

XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C\nflags\t\t: fpu sse4_1 avx avx2 fma avx512f " \
       "avx512bw avx512vl avx512_vnni\n\nprocessor\t: 1\nflags\t\t: other\n"
EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_1 avx avx2 fma f16c\n"
A76 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd asimddp asimdhp cpuid\nCPU implementer\t: 0x41\n" \
      "CPU part\t: 0xd0b\n"
A72 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"


@pytest.mark.parametrize("text, machine, cpu, isa, dot", [
    (XEON, "x86_64", "Intel(R) Xeon(R) Platinum 8375C", ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512f",
                                                          "avx512vl", "fma", "sse4_1"], "vnni"),
    (EPYC_AVX2, "x86_64", "AMD EPYC 7B13", ["avx", "avx2", "f16c", "fma", "sse4_1"], "pairs-int16-saturating"),
    (A76, "aarch64", "Cortex-A76", ["asimd", "asimddp", "asimdhp"], "sdot"),
    (A72, "aarch64", "Cortex-A72", ["asimd"], "neon"),
])
def test_cpuinfo_of_each_kind(tmp_path, text, machine, cpu, isa, dot):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    fields = _host.cpuinfo(str(path))
    assert _host.cpu_model(fields) == cpu
    assert _host.isa_flags(fields, machine) == isa  # the first block only: later cores' lines never leak in
    assert _host.int8_dot({"machine": machine, "isa": isa}) == dot


def test_this_host(tmp_path):
    fp = _host.fingerprint()
    assert {"machine", "cpu", "isa", "int8_dot", "cores", "os", "python", "versions"} <= set(fp)
    assert fp["versions"]["numpy"] == metadata.version("numpy")
    assert fp["int8_dot"] != "unknown" or fp["machine"] not in ("x86_64", "aarch64")
    missing = _host.fingerprint(str(tmp_path / "absent"))  # no /proc (a container, macOS): no crash, no flags
    assert missing["isa"] == [] and missing["cpu"]


def test_agent_and_local_device_report_the_same_fingerprint():
    from devices import agent
    from devices.inventory import load_inventory
    from devices.local import LocalDevice

    board = agent.info()["host"]
    local = LocalDevice(load_inventory()["local"]).describe()["host"]
    assert board["isa"] == local["isa"] and board["cpu"] == local["cpu"] and board["int8_dot"] == local["int8_dot"]
