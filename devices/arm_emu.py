"""The emulated ARM board: a real aarch64 Debian with the real aarch64 runtimes, under qemu-user, over SSH.

    sudo python -m devices.arm_emu setup --profile cortex-a72      # from scratch 5-9 min on 2 cores; cached: ~15 s
    python -m eval.on_device --device rpi4-emu ...                 # then replay on it like on any board
    sudo python -m devices.arm_emu status | stop --profile P | start --profile P

Profiles pin the emulated core (QEMU_CPU), because qemu's default `max` core (SVE, SME) changes what
the integer kernels compute: cortex-a72 ~ Raspberry Pi 4, neoverse-n1 ~ Jetson Orin CPU (closest to
its Cortex-A78AE), cortex-a76 ~ Raspberry Pi 5. `setup` builds (once) and caches the root filesystem
under --cache (default $QADTR_CACHE/arm-emu, else ~/.cache/qadtr/arm-emu), unpacks a board from it,
gives it a fresh host key (written to the board's known_hosts: verified, never auto-accepted) and a
login key, starts its sshd on 127.0.0.1 only and logs in to check the pinned core and the runtimes.

`ArmEmuDevice` is `devices.ssh.SshDevice` pointed at that board: the same push, checksum, agent and
stream code as a real board. What differs is only what an emulator cannot give: latency is qemu's
(labelled emulated wherever it appears, 100-1000x slower than the real core) and energy is null.
It finds the board in $QADTR_CACHE/arm-emu (else ~/.cache/qadtr/arm-emu); for a board set up with
another --cache, name its `key` and `known_hosts` (DIR/boards/PROFILE/ssh/) in the inventory entry.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time

from devices._device import Availability
from devices._emu_board import Board, install, listening, probe, start, stop
from devices._emu_image import PROFILES, USER, build_image, cache_dir, check_host, get_profile, image_path
from devices._ssh import Limits
from devices.ssh import SshDevice
from qadtr._errors import QadtrError

NO_ENERGY = "emulated board: no power observable"


class ArmEmuDevice(SshDevice):
    """An SshDevice whose user, key and known_hosts default to the board `setup` made for the profile."""

    kind = "arm-emu"
    # every login starts an emulated sshd and an emulated Python (importing a runtime takes seconds)
    limits = Limits(connect=30.0, step=180.0, first=900.0, line=600.0)

    def __init__(self, spec):
        self.board = Board.at(cache_dir(), spec.profile)
        if not spec.key and not self.board.key.is_file():
            raise QadtrError(f"device {spec.name!r}: the emulated {spec.profile} board is not set up in "
                             f"{self.board.dir}; run `sudo python -m devices.arm_emu setup --profile {spec.profile}`")
        spec = dataclasses.replace(spec, user=spec.user or USER, key=spec.key or str(self.board.key),
                                   known_hosts=spec.known_hosts or str(self.board.known_hosts))
        super().__init__(spec)
        self.emulated = True

    def _down(self) -> str | None:
        """Why the board can't be reached (cheaply, without an ssh login), or None."""
        if self.board.port not in (None, self.spec.port):
            return (f"the {self.spec.profile} board listens on port {self.board.port}, {self.spec.source} says "
                    f"{self.spec.port}; set port = {self.board.port} or re-run setup with --port {self.spec.port}")
        if not listening(self.spec.port):
            return (f"the board is not running on 127.0.0.1:{self.spec.port}; start it: "
                    f"`sudo python -m devices.arm_emu start --profile {self.spec.profile}`")
        return None

    def status(self) -> list[Availability]:
        down = self._down()
        if down is None:
            return super().status()
        return [Availability("runtime", r, False, down) for r in self.spec.runtimes] + self._power_rows({})

    def _power_rows(self, info: dict) -> list[Availability]:
        return [Availability("power", "none", False, NO_ENERGY)]

    def board_info(self) -> dict:
        down = self._down()
        if down is not None:
            raise QadtrError(f"device {self.name!r}: {down}")
        return super().board_info()

    def describe(self) -> dict:
        profile = get_profile(self.spec.profile)
        return {**super().describe(), "emulated": True, "profile": profile.cpu, "approximates": profile.approximates,
                "emulator": f"{qemu_version()}, QEMU_CPU={profile.cpu}",
                "latency": "emulated (qemu-user): says nothing about the real board", "energy": NO_ENERGY}


def qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "qemu-user"
    return out.splitlines()[0].replace("qemu-aarch64 version", "qemu-user").strip() if out else "qemu-user"


# -- the command -------------------------------------------------------------------------------------------
def setup(profile: str, *, cache: str | None = None, port: int | None = None, rebuild: bool = False,
          log=print) -> dict:
    """Build or reuse the cached image, make the profile's board from it, start it and check it by logging in.

    Returns the board's answer to the probe (machine, QEMU_CPU, HWCAP features, runtime versions).

    Raises:
        QadtrError: not root, a tool missing, the build failing, or a board that does not run the pinned core.
    """
    prof, root = get_profile(profile), cache_dir(cache)
    image = image_path(root)
    check_host(build=rebuild or not image.is_file())
    if rebuild or not image.is_file():
        build_image(root, log=log)
    else:
        log(f"using the cached image {image}")
    board = Board.at(root, profile)
    install(board, image, port or prof.port, log=log)
    t0 = time.perf_counter()
    pid = start(board)
    info = probe(board)
    log(f"sshd up (pid {pid}) and probed in {time.perf_counter() - t0:.1f}s")
    wrong = [f"{k} {info[k]!r}, expected {v!r}" for k, v in (("machine", "aarch64"), ("qemu_cpu", prof.cpu))
             if info[k] != v] + (["SVE present (qemu's `max` core)"] if "sve" in info["features"] else [])
    if wrong:
        stop(board)
        raise QadtrError(f"board {profile} does not run the pinned core ({'; '.join(wrong)}); re-run setup with "
                         "--rebuild, and check that qemu-user-static is Debian's 7.2")
    v = info["versions"]
    log(f"board {profile} (~ {prof.approximates}): {info['machine']}, Python {info['python']}, onnxruntime "
        f"{v['onnxruntime']}, ai-edge-litert {v['ai-edge-litert']}, numpy {v['numpy']}; "
        f"features {' '.join(info['features'])}")
    log(f"login: {' '.join(board.ssh_argv()[:-2])}")
    return info


def status(cache: str | None = None) -> str:
    root = cache_dir(cache)
    image = image_path(root)
    lines = [f"image: {image} ({'cached' if image.is_file() else 'not built yet: run setup'})"]
    for name, prof in PROFILES.items():
        board = Board.at(root, name)
        if board.port is None:
            state = "not set up"
        elif board.pid() is not None:
            state = f"running (pid {board.pid()}) on 127.0.0.1:{board.port}"
        else:
            state = f"stopped (port {board.port})"
        lines.append(f"{name:12s} ~ {prof.approximates}: {state}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import run_cli

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m devices.arm_emu", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("action", choices=("setup", "start", "stop", "status"))
    p.add_argument("--profile", choices=list(PROFILES), help="the emulated core (setup/start/stop)")
    p.add_argument("--cache", default=None, help="where the image and boards live (default $QADTR_CACHE/arm-emu, "
                   "else ~/.cache/qadtr/arm-emu)")
    p.add_argument("--port", type=int, default=None, help="setup: the sshd port on 127.0.0.1 (default: the profile's, "
                   + ", ".join(f"{n} {p.port}" for n, p in PROFILES.items()) + ")")
    p.add_argument("--rebuild", action="store_true", help="setup: build the image again even if it is cached")
    args = p.parse_args(argv)

    def body() -> None:
        if args.action == "status":
            print(status(args.cache))
            return
        if args.profile is None:
            raise QadtrError(f"{args.action} needs --profile ({', '.join(PROFILES)})")
        if args.action != "setup" and (args.port is not None or args.rebuild):
            raise QadtrError("--port and --rebuild are setup options; re-run setup to change them")
        if args.action == "setup":
            setup(args.profile, cache=args.cache, port=args.port, rebuild=args.rebuild)
            return
        check_host(build=False)
        board = Board.at(cache_dir(args.cache), args.profile)
        if args.action == "start":
            print(f"board {args.profile}: sshd pid {start(board)} on 127.0.0.1:{board.port}")
        else:
            print(f"board {args.profile}: {'stopped' if stop(board) else 'was not running'}")

    return run_cli("devices.arm_emu", body, argv)


if __name__ == "__main__":
    sys.exit(main())
