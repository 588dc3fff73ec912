"""tests/emu: the emulated ARM board (devices/arm_emu.py). Select with `-m emu`; each test skips, saying
why, where the board can't run (not root, qemu-user/mmdebstrap absent, no cached image)."""

from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "emu: needs root, qemu-user + binfmt and the cached arm-emu image "
                            "(sudo python -m devices.arm_emu setup --profile cortex-a72)")
