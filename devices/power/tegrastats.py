"""Jetson power rails from `tegrastats` (JetPack's /usr/bin/tegrastats), sampled in a thread.

tegrastats prints one line per interval; its power rails are `NAME now/avg` in mW, with or without
the unit, and with a third (max) value on newer JetPacks:

    Orin Nano (JetPack 6):  ... VDD_IN 5704mW/5704mW VDD_CPU_GPU_CV 831mW/831mW VDD_SOC 1624mW/1624mW
    Nano, TX1 (JetPack 4):  ... POM_5V_IN 1388/1388 POM_5V_GPU 122/122 POM_5V_CPU 163/163
    TX2 (JetPack 4):        ... VDD_SYS_GPU 152/152 VDD_SYS_SOC 687/687 ... VDD_IN 3056/3056 ...
    AGX Orin/Thor (JP 7):   ... VDD_GPU_SOC 4385mW/3787mW/4385mW VDD_CPU_CV 1196mW/897mW/1196mW VIN_SYS_5V0 ...

The meter reads the instantaneous (first) value of the module's input rail (VDD_IN, or POM_5V_IN on
the Nano), which covers the whole module: CPU, GPU, memory, everything. Boards whose tegrastats has
no input rail (AGX Orin, AGX Xavier) get the sum of every reported rail, and the scope says so.
Pass `rail=` to pick one rail instead. Some images need root for the rails: run the agent as root,
or `sudo` tegrastats via `command=`.

Example:
    >>> m = TegrastatsMeter(interval_ms=50)   # MeterUnavailable("no tegrastats ...") off a Jetson
    >>> m.start(); work(); joules, seconds = m.stop(); m.close()
"""

from __future__ import annotations

import re
import shutil
import subprocess

from devices.power._meter import MeterUnavailable, SampledMeter

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # the module's input rail, by JetPack generation
# NAME, a space (or @), the instantaneous value, optional mW, then /avg[/max]; at least a unit or a "/"
# must be there, so clock or size fields (APE 150, RAM 2448/7772MB, VIC_FREQ 601) never match.
_RAIL = re.compile(r"(?:^|\s)([A-Z][A-Z0-9_]*)(?:\s+|@)(\d+)(mW)?((?:/\d+(?:mW)?)*)(?=\s|$)")


def parse_rails(line: str) -> dict[str, float]:
    """Rail name -> instantaneous power in watts, from one tegrastats line ({} when it has none)."""
    rails = {}
    for name, now, unit, rest in _RAIL.findall(line):
        if unit or rest:
            rails[name] = int(now) / 1000.0
    return rails


def pick_watts(rails: dict[str, float], rail: str | None = None) -> tuple[float, str]:
    """(watts, what they are) from parsed rails: `rail`, else the input rail, else the sum of all."""
    if rail is not None:
        if rail not in rails:
            raise MeterUnavailable(f"tegrastats reports no rail {rail!r}; it reports {', '.join(rails)}")
        return rails[rail], f"rail {rail}"
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name], f"module input rail {name}"
    return sum(rails.values()), f"sum of rails {'+'.join(rails)} (this tegrastats reports no input rail)"


class TegrastatsMeter(SampledMeter):
    name = "tegrastats"

    def __init__(self, *, interval_ms: int = 50, rail: str | None = None, command: tuple[str, ...] = ("tegrastats",)):
        """Args:
            interval_ms: tegrastats' sampling interval (its --interval).
            rail: a rail name to read instead of the module input rail.
            command: how to start tegrastats (tests pass a recorded-output player).
        """
        if shutil.which(command[0]) is None:
            raise MeterUnavailable(f"no {command[0]} on PATH (not a Jetson, or JetPack's /usr/bin/tegrastats "
                                   "is missing)")
        self.rail, self.interval = rail, interval_ms / 1000.0
        self.first_timeout = max(self.first_timeout, 4 * self.interval)
        try:
            self._proc = subprocess.Popen([*command, "--interval", str(int(interval_ms))], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        except OSError as e:
            raise MeterUnavailable(f"cannot start {command[0]}: {e}") from None
        self.scope = "tegrastats (waiting for its first line)"
        self._begin_sampling()

    def _sample_loop(self) -> None:
        for line in self._proc.stdout:  # one line per interval
            if self._closed.is_set():
                return
            rails = parse_rails(line)
            if not rails:
                continue  # a line without rails (e.g. a header) is skipped; no rails at all never opens
            watts, what = pick_watts(rails, self.rail)
            self.scope = f"Jetson {what}, tegrastats every {self.interval * 1000:g} ms (whole module, all processes)"
            self._record(watts)

    def close(self) -> None:
        super().close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
