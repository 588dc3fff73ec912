"""tests/emu: the emulated ARM board (devices/arm_emu.py). Every test here is marked `emu` (tests/conftest.py),
deselected by default; select with `-m emu` (or `make test`). Each test skips, saying why, where the board can't
run (not root, qemu-user/mmdebstrap absent, no cached image: `sudo make board` or
`sudo python -m devices.arm_emu setup --profile cortex-a72`)."""
