"""The local device: this machine, every runtime in-process.

Replay runs `make_runner` + `feed_format` here; each batch's `seconds` is the runner's own timed call
(`last_inference_time`: inference only, no feed preparation), and `energy_j` is the power meter's
reading over that call when the inventory's `power` gives one (RAPL on Linux), else None; with
`power_idle_s` the idle power is measured first and subtracted.

Example:
    >>> with LocalDevice(load_inventory()["local"]).replay("onnxrt", Path("w4.onnx"), images) as batches:
    ...     logits = np.concatenate([b.logits for b in batches])  # (N, K)
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

from devices._host import cpu_model, fingerprint
from devices._device import Availability, Batch, BatchStream, Device, check_replay_args
from devices.power import MeterUnavailable, PowerMeter, open_meter
from devices.runtimes import feed_format, get_runtime, make_runner, probe, read_logits
from qadtr._errors import QadtrError

AUTO_METERS = ("rapl",)  # what power = "auto" tries on this kind of device


def module_versions(modules: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each top-level module's distribution, without importing it (None = absent)."""
    dists = metadata.packages_distributions()
    out = {}
    for m in modules:
        try:
            out[m] = metadata.version(dists.get(m, [m])[0])
        except metadata.PackageNotFoundError:
            out[m] = None
    return out


class LocalDevice(Device):
    kind = "local"
    emulated = False

    def _meters(self) -> tuple[PowerMeter | None, list[Availability]]:
        """The first readable meter the spec allows, and an Availability line for each one tried."""
        if self.spec.power == "none":
            return None, [Availability("power", "none", False, "disabled in the inventory (power = \"none\")")]
        names = AUTO_METERS if self.spec.power == "auto" else (self.spec.power,)
        chosen, lines = None, []
        for name in names:
            try:
                meter = open_meter(name)
            except MeterUnavailable as e:
                lines.append(Availability("power", name, False, str(e)))
                continue
            lines.append(Availability("power", name, True, meter.scope))
            if chosen is None:
                chosen = meter
            else:
                meter.close()
        return chosen, lines

    def power_meter(self) -> PowerMeter | None:
        """An open meter (the caller closes it: a sampled meter runs a thread), or None."""
        return self._meters()[0]

    def status(self) -> list[Availability]:
        rows = []
        for name in self.spec.runtimes:
            reason = probe(name)
            rows.append(Availability("runtime", name, reason is None, reason or get_runtime(name).doc))
        meter, lines = self._meters()
        if meter is not None:
            meter.close()
        return rows + lines

    def describe(self) -> dict:
        modules = tuple(dict.fromkeys(m for r in self.spec.runtimes for m in get_runtime(r).requires))
        return {"name": self.name, "kind": self.kind, "emulated": self.emulated, "cpu": cpu_model(),
                "machine": platform.machine(), "cores": os.cpu_count(), "os": platform.platform(),
                "python": platform.python_version(), "numpy": np.__version__, "runtimes": module_versions(modules),
                "host": fingerprint()}

    def replay(self, runtime: str, artifact: Path, images: np.ndarray, *, batch_size: int = 100, warmup: int = 3,
               start: int = 0, options: dict | None = None) -> BatchStream:
        """Batches of `images[start:]` through `runtime`; see `devices._device.Device.replay`.

        A model with a fixed batch (e.g. MLPerf Tiny's 1) runs at that batch; a short last batch is padded
        with copies of its last image and only the real rows are returned.
        """
        check_replay_args(images, batch_size, warmup, start=start)
        get_runtime(runtime)  # an unknown name says so first
        if runtime not in self.spec.runtimes:
            raise QadtrError(f"device {self.name!r} does not offer runtime {runtime!r} (its inventory entry lists "
                             f"{', '.join(self.spec.runtimes)}); add it to `runtimes` or pick one of those")
        runner = make_runner(runtime, artifact, **(options or {}))  # errors now, not at the first batch
        return BatchStream(lambda rep: self._batches(rep, runner, images, batch_size=batch_size, warmup=warmup,
                                                     start=start))

    def _batches(self, rep: BatchStream, runner, images: np.ndarray, *, batch_size: int, warmup: int,
                 start: int) -> Iterator[Batch]:
        if start == len(images):
            return
        with runner:
            fmt = feed_format(runner)
            rep.runner, rep.kernels, rep.feed = runner.name, runner.kernels, str(fmt)
            step = fmt.batch or batch_size

            def feed(first: int) -> tuple[dict[str, np.ndarray], int]:
                chunk = images[first:first + step]  # (B, H, W, 3)
                real = len(chunk)
                if real < step and fmt.batch is not None:  # a fixed-batch model: pad, keep the real rows
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - real, axis=0)])
                return fmt.feed(chunk), real

            x, _ = feed(start)
            for _ in range(warmup):  # caches, lazy allocations, XNNPACK packing: run, never yield
                runner.infer(x)
            meter = self.power_meter()
            try:
                if meter is not None and self.spec.power_idle_s:
                    meter.measure_idle(self.spec.power_idle_s)  # stop() then returns the joules above idle
                for first in range(start, len(images), step):
                    x, real = feed(first)
                    if meter is not None:
                        meter.start()
                    out = runner.infer(x)
                    energy = meter.stop()[0] if meter is not None else None
                    yield Batch(first, read_logits(runner, out)[:real], runner.last_inference_time, energy)
            finally:
                if meter is not None:
                    meter.close()

