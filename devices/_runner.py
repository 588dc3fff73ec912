"""The Runner contract (shape borrowed from Polygraphy's BaseRunner).

    with OnnxrtRunner("m.onnx") as r:          # activate(): heavy imports, sessions, device memory
        out = r.infer({"input": x})            # validates names/dtypes/shapes, times the call
        r.last_inference_time                  # seconds of the last _infer
    # deactivate() on exit; idempotent

A backend subclasses `Runner` and implements `_activate`, `_input_spec`, `_infer` and
`_deactivate`; it never overrides `infer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from qadtr._errors import QadtrError


class RunnerError(QadtrError):
    """Bad input to a runner, or a runner used outside its active state."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None = dynamic dimension


class Runner:
    name: str = "runner"  # e.g. "onnxrt-cpu", "litert-xnnpack"; set by each backend
    kernels: str = ""  # the kernel set this runner executes (reported next to every result)

    def __init__(self) -> None:
        self.is_active = False
        self.versions: dict[str, str] = {}  # the runtime (and device) versions that ran, filled on activation
        self.last_inference_time: float | None = None
        self.inference_times: list[float] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference ---------------------------------------------------------------------------------
    def input_spec(self) -> list[TensorSpec]:
        self._require_active("input_spec")
        return self._input_spec()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Checks that `feed` matches `input_spec()` exactly, then times `_infer`."""
        self._require_active("infer")
        specs = {s.name: s for s in self._input_spec()}
        if set(feed) != set(specs):
            raise RunnerError(f"{self.name}: inputs {sorted(feed)} do not match the model's {sorted(specs)}")
        for key, spec in specs.items():
            arr = feed[key]
            if not isinstance(arr, np.ndarray):
                raise RunnerError(f"{self.name}: input {key!r} is a {type(arr).__name__}, expected a numpy array")
            if arr.dtype != spec.dtype:
                raise RunnerError(f"{self.name}: input {key!r} has dtype {arr.dtype}, expected {spec.dtype}")
            if len(arr.shape) != len(spec.shape) or any(d is not None and d != s for d, s in zip(spec.shape, arr.shape)):
                raise RunnerError(f"{self.name}: input {key!r} has shape {arr.shape}, expected {spec.shape} "
                                  "(None = any)")
        start = time.perf_counter()
        out = self._infer(feed)
        self.last_inference_time = time.perf_counter() - start
        self.inference_times.append(self.last_inference_time)
        return out

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise RunnerError(f"{self.name}: {what}() before activate(); use `with runner:` or call activate()")

    # -- backend hooks -------------------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _input_spec(self) -> list[TensorSpec]:
        raise NotImplementedError

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass
