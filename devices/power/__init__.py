"""Power meters, one file each, behind the `PowerMeter` contract in `_meter.py`.

    meter = open_meter("rapl")        # MeterUnavailable (with the reason) when it can't read here
    meter.start(); ...; joules, seconds = meter.stop()

Importing this package reads no hardware.
"""

from devices.power._meter import METERS, MeterUnavailable, PowerMeter, open_meter

__all__ = ["METERS", "MeterUnavailable", "PowerMeter", "open_meter"]
