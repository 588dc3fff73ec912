"""The Device contract: where runners run. One file per kind: local.py, ssh.py, arm_emu.py.

    device = open_device(load_inventory()["local"])
    device.status()          # [Availability("runtime", "onnxrt", True, ""), Availability("power", "rapl", False, why)]
    with device.replay("onnxrt", Path("w4.onnx"), images, batch_size=100, warmup=3, start=0) as batches:
        for b in batches:    # Batch(first, logits (B, K), seconds, energy_j); warm-up calls are never yielded
            ...
        batches.kernels      # the runner's kernel set, known once the runtime is up

A remote device streams the same Batches back from a board agent, so the result store, the resume
logic and the report never know where a batch was computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qadtr._errors import QadtrError

if TYPE_CHECKING:
    from devices.inventory import DeviceSpec
    from devices.power import PowerMeter


@dataclass(frozen=True)
class Batch:
    first: int  # index of its first image in the replayed array
    logits: np.ndarray  # (B, K) float32
    seconds: float  # pure inference time of the batch (the runner's timed call, no feed preparation)
    energy_j: float | None = None  # the device's power meter over the batch; None = no meter (never estimated)

    def __post_init__(self) -> None:
        if self.logits.ndim != 2 or self.logits.dtype != np.float32:
            raise ValueError(f"Batch.logits must be float32 (B, K), got {self.logits.dtype} {self.logits.shape}")
        if self.first < 0 or self.seconds < 0:
            raise ValueError(f"Batch(first={self.first}, seconds={self.seconds}): both must be >= 0")


@dataclass(frozen=True)
class Availability:
    kind: str  # "runtime" | "power"
    name: str
    available: bool
    reason: str = ""  # why not; for an available item, an optional detail (e.g. what a meter covers)

    def __post_init__(self) -> None:
        if self.kind not in ("runtime", "power"):
            raise ValueError(f"Availability.kind={self.kind!r}; use 'runtime' or 'power'")
        if not self.available and not self.reason:
            raise ValueError(f"{self.kind} {self.name!r} is unavailable: say why in `reason`")

    def line(self) -> str:
        return f"{'✓' if self.available else '✗'} {self.kind:7s} {self.name:15s} {self.reason}".rstrip()


class BatchStream(Iterator[Batch]):
    """The batches of one replay, with what ran them; a context manager that releases the runtime.

    `runner`, `kernels` and `feed` are filled when the runtime is up, before the first batch.
    """

    def __init__(self, produce: Callable[[BatchStream], Iterator[Batch]]):
        self.runner = ""  # the runner's name, e.g. "onnxrt-cpu"
        self.kernels = ""  # the kernel set it executed
        self.feed = ""  # the bytes the model received, e.g. "input: NCHW float32 = pixel / 255"
        self._batches = produce(self)

    def __next__(self) -> Batch:
        return next(self._batches)

    def close(self) -> None:
        self._batches.close()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_replay_args(images: np.ndarray, batch_size: int, warmup: int, *, start: int) -> None:
    """The argument checks every device kind shares (raised before any runtime starts)."""
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[3] == 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise QadtrError(f"replay takes uint8 (N, H, W, 3) images (a replay file's `images`), got {got}")
    if batch_size < 1:
        raise QadtrError(f"batch_size={batch_size}; pass a positive number")
    if warmup < 0:
        raise QadtrError(f"warmup={warmup}; pass 0 or more warm-up calls")
    if not 0 <= start <= len(images):
        raise QadtrError(f"start={start} is outside the {len(images)} replayed images; resume from 0..{len(images)}")


class Device:
    """Base of every device kind. Subclasses set `kind` and implement the four methods below."""

    kind: str = ""
    emulated: bool = False  # latency from an emulator says nothing about the real board

    def __init__(self, spec: DeviceSpec):
        self.spec = spec
        self.name = spec.name

    def status(self) -> list[Availability]:
        """Each configured runtime and power meter, available or not, with the reason."""
        raise NotImplementedError

    def describe(self) -> dict:
        """CPU model, OS, Python and runtime versions: stored with every run."""
        raise NotImplementedError

    def replay(self, runtime: str, artifact: Path, images: np.ndarray, *, batch_size: int = 100, warmup: int = 3,
               start: int = 0, options: dict | None = None) -> BatchStream:
        """Run `images[start:]` through `runtime` on `artifact`, in batches; `options` go to the runner."""
        raise NotImplementedError

    def power_meter(self) -> PowerMeter | None:
        raise NotImplementedError

    def runtimes(self) -> list[str]:
        """The configured runtimes that are available on this device."""
        return [a.name for a in self.status() if a.kind == "runtime" and a.available]

    def close(self) -> None:
        pass

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
