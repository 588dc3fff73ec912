"""Power meters, one file each, behind the `PowerMeter` contract in `_meter.py`.

    rapl.py        Intel/AMD CPU package energy (powercap counters)
    tegrastats.py  Jetson power rails (the module input rail), sampled from tegrastats
    hwmon_ina.py   INA219/INA226/INA260 add-ons through Linux hwmon (Raspberry Pi), sampled
    nvml.py        a discrete NVIDIA GPU (NVML energy counter, or sampled power)

    meter = open_meter("rapl")        # MeterUnavailable (with the reason) when it can't read here
    meter.start(); ...; joules, seconds = meter.stop(); meter.close()

The meter files use the standard library only: devices/ssh.py pushes them to boards with the agent.

Importing this package reads no hardware.
"""

from devices.power._meter import METERS, POWER_METERS, MeterInfo, MeterUnavailable, PowerMeter, open_meter

__all__ = ["METERS", "POWER_METERS", "MeterInfo", "MeterUnavailable", "PowerMeter", "open_meter"]
