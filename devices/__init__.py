"""Devices and runtimes: one small Runner contract for every runtime, one file per backend.

    runtimes.py   the registry: probe, make_runner, prepare_feed / feed_format, read_logits
    _runner.py    the Runner contract; fakequant.py, onnxrt.py, litert.py, tensorrt.py, null.py
    _device.py    the Device contract (Batch, Availability, BatchStream); local.py, ssh.py (+ _ssh.py, the
                  transport; agent.py, what runs on the board), arm_emu.py (an ssh device on qemu-user)
    inventory.py  the TOML device inventory, open_device, describe_devices (--list-devices)
    power/        power meters behind one contract: rapl.py, tegrastats.py, hwmon_ina.py, nvml.py

Importing this package loads no runtime: each backend imports its runtime in `activate()`.
"""

from devices._device import Availability, Batch, BatchStream, Device
from devices._runner import Runner, RunnerError, TensorSpec
from devices.inventory import DeviceSpec, describe_devices, load_inventory, open_device, select_devices
from devices.runtimes import (RUNTIMES, FeedFormat, RuntimeInfo, accepts, feed_format, list_runtimes, make_runner,
                              prepare_feed, probe, read_logits)

__all__ = ["RUNTIMES", "Availability", "Batch", "BatchStream", "Device", "DeviceSpec", "FeedFormat", "Runner",
           "RunnerError", "RuntimeInfo", "TensorSpec", "accepts", "describe_devices", "feed_format", "list_runtimes",
           "load_inventory", "make_runner", "open_device", "prepare_feed", "probe", "read_logits", "select_devices"]
