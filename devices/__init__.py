"""Devices and runtimes: one small Runner contract for every runtime, one file per backend.

Importing this package loads no runtime: each backend imports its runtime in `activate()`.
"""

from devices._runner import Runner, RunnerError

__all__ = ["Runner", "RunnerError"]
