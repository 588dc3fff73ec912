"""A discrete NVIDIA GPU's energy through NVML (`pip install nvidia-ml-py`, module `pynvml`).

Volta and later GPUs keep a total-energy counter (nvmlDeviceGetTotalEnergyConsumption, millijoules):
the window's joules are its increase. Older GPUs (NotSupported) are sampled instead: a thread reads
nvmlDeviceGetPowerUsage (milliwatts) every `interval` seconds. Either way the joules are the GPU
board's alone (not the CPU, not the host). Jetsons have no NVML: use tegrastats there.

pynvml is imported when the meter is opened, never at import time.

Example:
    >>> m = NvmlMeter(index=0)      # MeterUnavailable("pynvml not installed ...") without it
    >>> m.start(); work(); joules, seconds = m.stop(); m.close()
"""

from __future__ import annotations

import time

from devices.power._meter import MeterUnavailable, SampledMeter


class NvmlMeter(SampledMeter):
    name = "nvml"

    def __init__(self, *, index: int = 0, interval: float = 0.02):
        try:
            import pynvml
        except ImportError:
            raise MeterUnavailable("pynvml not installed: `pip install nvidia-ml-py` (discrete NVIDIA GPUs; "
                                   "Jetsons use tegrastats)") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise MeterUnavailable(f"NVML cannot start ({e}): no NVIDIA driver or GPU here") from None
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpu = pynvml.nvmlDeviceGetName(self._handle)
        except pynvml.NVMLError as e:
            pynvml.nvmlShutdown()
            raise MeterUnavailable(f"NVML has no GPU {index} ({e})") from None
        gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
        self.interval = interval
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self._counter = True
            self.scope = f"GPU board energy of {gpu} (NVML total-energy counter)"
        except pynvml.NVMLError:  # NotSupported before Volta: sample the power instead
            self._counter = False
            self.scope = f"GPU board power of {gpu} (NVML power readings every {interval * 1000:g} ms)"
            self._begin_sampling()
        self._begun: tuple[float, int] | None = None  # counter mode: (perf_counter, millijoules) at start()

    def _read_watts(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0  # milliwatts

    def _start(self) -> None:
        if not self._counter:
            return super()._start()
        self._begun = (time.perf_counter(), self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def _stop(self) -> tuple[float, float]:
        if not self._counter:
            return super()._stop()
        if self._begun is None:
            raise RuntimeError("NvmlMeter.stop() before start()")
        after, end = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle), time.perf_counter()
        (t0, before), self._begun = self._begun, None
        return (after - before) / 1000.0, end - t0

    def close(self) -> None:
        if not self._counter:
            super().close()
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass
