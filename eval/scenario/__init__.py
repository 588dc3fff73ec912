"""Scenarios: one attack story end to end from committed models and patches, by name.

    python -m eval.on_device --device local --scenario gtsrb-stop       # this host's runtimes
    python -m eval.on_device --device local,rpi4-emu --scenario gtsrb-stop   # and an emulated board

A scenario is a row of SCENARIOS (qadtr._registry's shape): its name, its frozen config class and its
`run(cfg, *, device, out, ...) -> dict` function, imported only when the scenario runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qadtr._registry import Registry, resolve


@dataclass(frozen=True)
class ScenarioInfo:
    name: str  # what --scenario takes
    config: str  # "module:Class" of its frozen config (the defaults are the committed run's)
    function: str | Callable  # `run(cfg, *, device, out, data_dir, runtimes, inventory, remake, progress) -> dict`
    doc: str = ""


SCENARIOS: Registry[ScenarioInfo] = Registry("scenario")
SCENARIOS.register(ScenarioInfo("gtsrb-stop", "eval.scenario._stop_config:StopSignConfig",
                                "eval.scenario.gtsrb_stop:run",
                                "a targeted sticker on GTSRB stop signs through a camera, on every runtime"))


def run_scenario(name: str, *, device: str = "local", out: str | Path | None = None, data_dir: str | None = None,
                 runtimes: list[str] | None = None, inventory: str | None = None, remake: bool = False,
                 progress: bool = False) -> dict:
    """Run the scenario `name` with its default config; returns its summary (also written into `out`)."""
    row = SCENARIOS.get(name)  # an unknown name: one line listing the known ones
    cfg = resolve(row.config, what=f"scenario {name!r}")()
    return resolve(row.function, what=f"scenario {name!r}")(
        cfg, device=device, out=Path(out) if out else Path("runs") / name, data_dir=data_dir, runtimes=runtimes,
        inventory=inventory, remake=remake, progress=progress)
