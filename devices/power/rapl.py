"""Intel/AMD RAPL energy counters through Linux powercap (/sys/class/powercap/intel-rapl:N).

Each package zone `intel-rapl:N` has `energy_uj` (a free-running counter, microjoules) and
`max_energy_range_uj` (where it wraps to 0). The meter sums the package zones only: their
subzones (core, uncore, dram: `intel-rapl:N:M`) are parts of the package and would be counted twice.
AMD CPUs expose the same interface under the same name (Linux >= 5.8 for Zen).

What the joules are: the whole CPU package, every process on it, over the window; the counter
updates about every millisecond, so windows of a few milliseconds are coarse. A window can contain
at most one wrap (hours at package power, e.g. 2^38 uJ / 100 W ~ 45 min).

Example:
    >>> m = RaplMeter()            # MeterUnavailable("... readable by root only ...") on Linux >= 5.10
    >>> m.start(); work(); joules, seconds = m.stop()
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from devices.power._meter import MeterUnavailable, PowerMeter

POWERCAP = Path("/sys/class/powercap")  # tests point this at a fake tree


@dataclass(frozen=True)
class Zone:
    name: str  # e.g. "package-0"
    energy: Path  # .../energy_uj
    max_range_uj: int  # the counter wraps to 0 after this


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError:
        raise MeterUnavailable(f"{path} is readable by root only (Linux >= 5.10 restricts RAPL); run as root or "
                               f"`sudo chmod a+r {path.parent.parent}/intel-rapl:*/energy_uj`") from None
    except FileNotFoundError:
        raise MeterUnavailable(f"{path} is missing; the powercap driver exposes no RAPL counter there") from None
    except ValueError:
        raise MeterUnavailable(f"{path} does not hold an integer; not a RAPL counter") from None


def find_zones(root: Path) -> list[Zone]:
    """The readable package zones under a powercap root (MeterUnavailable with the reason otherwise)."""
    if not root.is_dir():
        raise MeterUnavailable(f"no {root} (not Linux, a container without /sys/class/powercap, or no RAPL driver: "
                               "`modprobe intel_rapl_common`)")
    dirs = sorted(d for d in root.iterdir() if re.fullmatch(r"intel-rapl:\d+", d.name))
    if not dirs:
        raise MeterUnavailable(f"no intel-rapl:N package zone under {root} (CPU without RAPL, or its driver is "
                               "not loaded: `modprobe intel_rapl_common`)")
    zones = []
    for d in dirs:
        name = (d / "name").read_text().strip() if (d / "name").is_file() else d.name
        zone = Zone(name, d / "energy_uj", _read_int(d / "max_energy_range_uj"))
        _read_int(zone.energy)  # readable now, not only at the first start()
        zones.append(zone)
    return zones


def delta_uj(before: int, after: int, max_range_uj: int) -> int:
    """Counter increase, across at most one wrap to 0."""
    return after - before if after >= before else after + max_range_uj - before


class RaplMeter(PowerMeter):
    name = "rapl"

    def __init__(self, root: str | Path | None = None):
        self.zones = find_zones(Path(POWERCAP if root is None else root))
        self.scope = f"CPU package energy (all processes), RAPL {', '.join(z.name for z in self.zones)}"
        self._begun: tuple[float, list[int]] | None = None  # (perf_counter, counters) at start()

    def _read(self) -> list[int]:
        return [_read_int(z.energy) for z in self.zones]

    def _start(self) -> None:
        self._begun = (time.perf_counter(), self._read())

    def _stop(self) -> tuple[float, float]:
        if self._begun is None:
            raise RuntimeError("RaplMeter.stop() before start()")
        after, end = self._read(), time.perf_counter()
        t0, before = self._begun
        self._begun = None
        uj = sum(delta_uj(b, a, z.max_range_uj) for b, a, z in zip(before, after, self.zones))
        return uj * 1e-6, end - t0
