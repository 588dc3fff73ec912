"""INA219 / INA226 / INA260 (and the rest of the INA2xx family) through Linux hwmon, sampled in a thread.

The Raspberry Pi add-on boards carry these I2C power monitors on the supply line; with the kernel's
`ina2xx` driver loaded (device-tree overlay, e.g. `dtoverlay=ina219` or an `ina226` entry) each one is
a hwmon device `/sys/class/hwmon/hwmonN` whose `name` file says the chip. Per reading:

    power1_input   power in microwatts (preferred: the chip's own V*I)
    in1_input      bus voltage in mV, and curr1_input current in mA: P = in1 * curr1 when there is no
                   power1_input. (in0_input is the shunt *drop*, a few mV, not the supply voltage.)

What the joules cover is what the sensor sits on: usually the board's whole supply. Several INA chips
on one board (e.g. one per rail) are ambiguous: pass `device="hwmon3"` to pick one.

Example:
    >>> m = InaMeter()              # MeterUnavailable("no INA2xx hwmon device ...") without one
    >>> m.start(); work(); joules, seconds = m.stop(); m.close()
"""

from __future__ import annotations

import re
from pathlib import Path

from devices.power._meter import MeterUnavailable, SampledMeter

HWMON = Path("/sys/class/hwmon")  # tests point this at a fake tree
_CHIP = re.compile(r"ina2\d\d")  # ina209, ina219, ina220, ina226, ina230, ina231, ina238, ina260, ...


def find_ina(root: Path, device: str | None = None) -> tuple[Path, str]:
    """(hwmon directory, chip name) of the INA sensor to read; MeterUnavailable with the reason otherwise."""
    if not root.is_dir():
        raise MeterUnavailable(f"no {root} (not Linux, or sysfs is not mounted)")
    found = []
    for d in sorted(root.iterdir(), key=lambda p: (len(p.name), p.name)):
        try:
            chip = (d / "name").read_text().strip()
        except OSError:
            continue
        if _CHIP.fullmatch(chip):
            found.append((d, chip))
    if device is not None:
        found = [(d, c) for d, c in found if device in (d.name, c)]
        if not found:
            raise MeterUnavailable(f"no INA2xx hwmon device {device!r} under {root}")
    if not found:
        raise MeterUnavailable(f"no INA2xx hwmon device under {root} (no INA219/226/260 board, or its driver is not "
                               "loaded: add its device-tree overlay, e.g. `dtoverlay=ina219` in /boot/config.txt)")
    if len(found) > 1:
        listed = ", ".join(f"{d.name} ({c})" for d, c in found)
        raise MeterUnavailable(f"several INA sensors ({listed}) and nothing says which one is the supply; "
                               "open the meter with device=\"hwmonN\"")
    return found[0]


def _read(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError:
        raise MeterUnavailable(f"{path} is not readable by this user; run as root or add a udev rule") from None
    except (OSError, ValueError) as e:
        raise MeterUnavailable(f"cannot read {path}: {e}") from None


class InaMeter(SampledMeter):
    name = "ina"

    def __init__(self, *, root: str | Path | None = None, device: str | None = None, interval: float = 0.01):
        """Args:
            root: the hwmon class directory (default /sys/class/hwmon).
            device: "hwmonN" or a chip name, when the board has several INA sensors.
            interval: seconds between readings (each is an I2C transfer, ~1 ms).
        """
        self.dir, chip = find_ina(Path(HWMON if root is None else root), device)
        self.interval = interval
        if (self.dir / "power1_input").is_file():
            self._files, how = (self.dir / "power1_input",), "power1_input"
        elif (self.dir / "in1_input").is_file() and (self.dir / "curr1_input").is_file():
            self._files, how = (self.dir / "in1_input", self.dir / "curr1_input"), "in1_input x curr1_input"
        else:
            raise MeterUnavailable(f"{self.dir} ({chip}) has neither power1_input nor in1_input + curr1_input")
        self._read_watts()  # readable now, not only in the sampling thread
        self.scope = (f"{chip} at {self.dir.name} ({how}) every {interval * 1000:g} ms: whatever its shunt sits on, "
                      "usually the board's whole supply")
        self._begin_sampling()

    def _read_watts(self) -> float:
        if len(self._files) == 1:
            return _read(self._files[0]) * 1e-6  # microwatts
        millivolts, milliamps = (_read(f) for f in self._files)
        return millivolts * milliamps * 1e-6
