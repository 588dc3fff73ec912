"""The PowerMeter contract and the meter registry.

A meter integrates energy over a window: `start()`, the work, `stop() -> (joules, seconds)`. What it
covers is stated in `scope` (a CPU package counter includes every process on that package), so a
result can say what its joules are. Meters that this machine can't read raise `MeterUnavailable`
with the reason when opened; callers report that reason instead of a number (never an estimate).
"""

from __future__ import annotations

import importlib

from qadtr._errors import QadtrError


class MeterUnavailable(QadtrError):
    """The meter cannot be read here; the message says why and, where possible, how to fix it."""


class PowerMeter:
    name: str = "meter"
    scope: str = ""  # what the joules cover, e.g. "CPU package energy (all processes), RAPL package-0"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> tuple[float, float]:
        """(joules, seconds) since the last `start()`."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# name -> "module:Class" (None: planned, arrives with issue 6: Jetson tegrastats, INA2xx via hwmon, NVML)
METERS: dict[str, str | None] = {
    "rapl": "devices.power.rapl:RaplMeter",
    "tegrastats": None,
    "ina": None,
    "nvml": None,
}


def open_meter(name: str, **kwargs) -> PowerMeter:
    """A ready meter by name.

    Raises:
        QadtrError: unknown name.
        MeterUnavailable: the meter is not implemented yet or cannot be read here (the reason).
    """
    if name not in METERS:
        raise QadtrError(f"unknown power meter {name!r}; known: {', '.join(METERS)}")
    if METERS[name] is None:
        raise MeterUnavailable(f"power meter {name!r} arrives with issue 6 (hardware in the loop)")
    module, cls = METERS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)
