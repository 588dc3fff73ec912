"""The PowerMeter contract, the sampled-meter machinery and the meter registry.

A meter integrates energy over a window: `start()`, the work, `stop() -> (joules, seconds)`. What it
covers is stated in `scope` (a CPU package counter includes every process on that package), so a
result can say what its joules are. Meters that can't be read raise `MeterUnavailable` with the
reason when opened; callers report that reason instead of a number (never an estimate).

Two kinds of meter:
  counters  (RAPL, NVML total energy): joules = counter after - counter before.
  sampled   (tegrastats, INA2xx via hwmon, NVML power): a thread records (time, watts) samples; the
            window's joules integrate them with a zero-order hold (a reading holds until the next),
            so a window shorter than the sampling interval still gets its share of energy.
Idle baseline (optional): `measure_idle(seconds)` first; `stop()` then returns the joules above idle
(joules - idle_w * seconds), which can be slightly negative for a window at idle.

This file and the meter files use the standard library only and run unchanged on a board: the SSH
device pushes them there with the rest of the runner layer (devices/ssh.py, BOARD_FILES).
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

from qadtr._errors import QadtrError
from qadtr._registry import Registry, resolve


class MeterUnavailable(QadtrError):
    """The meter cannot be read here; the message says why and, where possible, how to fix it."""


class PowerMeter:
    name: str = "meter"
    scope: str = ""  # what the joules cover, e.g. "CPU package energy (all processes), RAPL package-0"
    idle_w: float | None = None  # idle power from measure_idle(); stop() subtracts idle_w * seconds when set

    def start(self) -> None:
        self._start()

    def stop(self) -> tuple[float, float]:
        """(joules, seconds) since the last `start()`, above the idle baseline when one was measured."""
        joules, seconds = self._stop()
        if self.idle_w is not None:
            joules -= self.idle_w * seconds
        return joules, seconds

    def measure_idle(self, seconds: float) -> float:
        """Measure and keep the idle power (W) over `seconds` of doing nothing; later windows subtract it."""
        self.idle_w = None
        self.start()
        time.sleep(seconds)
        joules, elapsed = self.stop()
        self.idle_w = joules / elapsed if elapsed > 0 else 0.0
        return self.idle_w

    def close(self) -> None:
        pass

    # -- backend hooks ---------------------------------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> tuple[float, float]:
        raise NotImplementedError


def integrate_zoh(times: list[float], watts: list[float], t0: float, *, t1: float) -> float:
    """Joules over [t0, t1] from samples (times ascending): each reading holds until the next one.

    Before the first sample the first reading holds (a meter is opened only once it has one).
    """
    if not times:
        raise ValueError("integrate_zoh needs at least one sample")
    i = max(bisect.bisect_right(times, t0) - 1, 0)  # the reading in force at t0
    joules, t, w = 0.0, t0, watts[i]
    for ts, ws in zip(times[i + 1:], watts[i + 1:]):
        if ts >= t1:
            break
        joules += w * (ts - t)
        t, w = ts, ws
    return joules + w * max(t1 - t, 0.0)


class SampledMeter(PowerMeter):
    """Base of meters that read instantaneous power. A subclass calls `_begin_sampling()` at the end of
    its `__init__`, and implements `_read_watts()` (polled every `interval` s) or overrides `_sample_loop`
    (e.g. reading lines a tool prints) calling `_record(watts)` for each reading."""

    interval: float = 0.02  # seconds between polls
    first_timeout: float = 5.0  # seconds to wait for the first reading when opening

    def _begin_sampling(self) -> None:
        self._times: list[float] = []  # perf_counter() of each reading, ascending
        self._watts: list[float] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._error: str | None = None  # why the sampling thread stopped, if it did
        self._window: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-sampler", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.first_timeout
        while not self._times and time.monotonic() < deadline and self._error is None:
            time.sleep(0.005)
        if not self._times:
            self.close()
            raise MeterUnavailable(f"power meter {self.name!r} gave no reading within {self.first_timeout:g} s"
                                   + (f" ({self._error})" if self._error else ""))

    def _run(self) -> None:
        try:
            self._sample_loop()
        except Exception as e:  # noqa: BLE001 - any failure ends sampling; stop() reports it
            self._error = f"{type(e).__name__}: {e}"
        else:
            if not self._closed.is_set():
                self._error = "the sampling source ended"

    def _sample_loop(self) -> None:
        while not self._closed.is_set():
            self._record(self._read_watts())
            self._closed.wait(self.interval)

    def _read_watts(self) -> float:
        raise NotImplementedError

    def _record(self, watts: float) -> None:
        with self._lock:
            self._times.append(time.perf_counter())
            self._watts.append(float(watts))

    def _start(self) -> None:
        t0 = time.perf_counter()
        with self._lock:  # keep the reading in force at t0 and later ones: memory stays bounded over long runs
            keep = max(bisect.bisect_right(self._times, t0) - 1, 0)
            del self._times[:keep], self._watts[:keep]
        self._window = t0

    def _stop(self) -> tuple[float, float]:
        t1 = time.perf_counter()
        if self._window is None:
            raise RuntimeError(f"{type(self).__name__}.stop() before start()")
        if self._error is not None:
            raise MeterUnavailable(f"power meter {self.name!r} stopped sampling: {self._error}")
        t0, self._window = self._window, None
        with self._lock:
            joules = integrate_zoh(self._times, self._watts, t0, t1=t1)
        return joules, t1 - t0

    def close(self) -> None:
        self._closed.set()


@dataclass(frozen=True)
class MeterInfo:
    name: str  # what an inventory's `power = ` takes
    meter: str  # "module:Class" of the PowerMeter, imported on first use (on a board: the same pushed files)
    doc: str = ""


POWER_METERS: Registry[MeterInfo] = Registry("power meter")
for _row in (MeterInfo("rapl", "devices.power.rapl:RaplMeter", "CPU package energy (powercap counters)"),
             MeterInfo("tegrastats", "devices.power.tegrastats:TegrastatsMeter", "Jetson rails, from tegrastats"),
             MeterInfo("ina", "devices.power.hwmon_ina:InaMeter", "INA219/INA226/INA260 through Linux hwmon"),
             MeterInfo("nvml", "devices.power.nvml:NvmlMeter", "an NVIDIA GPU (NVML energy counter or power)")):
    POWER_METERS.register(_row)
METERS = POWER_METERS.view("meter")  # name -> "module:Class", the older shape


def open_meter(name: str, **kwargs) -> PowerMeter:
    """A ready meter by name.

    Raises:
        QadtrError: unknown name.
        MeterUnavailable: the meter cannot be read here (the reason).
    """
    return resolve(POWER_METERS.get(name).meter)(**kwargs)
