"""The emulated board's image: CPU profiles, the host checks, and the cached aarch64 Debian root filesystem.

    <cache>/images/debian-bookworm-arm64-<key>.tar.zst    built once by `build_image`, keyed by its recipe

The image is mmdebstrap's minimal arm64 bookworm (python3, openssh-server) with the pinned aarch64 wheels
installed by the host's pip (`--platform`, so no pip runs under emulation) and a login user; host keys are
removed, each board makes its own (`devices._emu_board`). Every command is an argument list: no value from
the user or from a file is ever interpolated into a shell string.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qadtr._errors import QadtrError
from qadtr._pins import BOARD, pinned
from qadtr._scratch import make_scratch

SUITE, ARCH = "bookworm", "arm64"  # Debian 12, as on Raspberry Pi OS 12 and close to JetPack 6's Ubuntu 22.04
PACKAGES = ("python3", "openssh-server", "libstdc++6")  # libstdc++6: the runtime wheels' C++ code needs it
MIRRORS = ("deb http://deb.debian.org/debian bookworm main", "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main")
# The host's pinned versions (pyproject.toml via qadtr._pins), so that any difference between the two is the CPU's,
# not a version's.
WHEELS = pinned(BOARD)
SITE = "usr/local/lib/python3.11/dist-packages"  # bookworm's python3 is 3.11: cp311 wheels
# pip resolves for the board's platform on the host (fast, native TLS, the host's pip config); wheels only.
PIP_PLATFORM = ("--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_27_aarch64",
                "--platform", "manylinux2014_aarch64", "--python-version", "3.11", "--implementation", "cp",
                "--abi", "cp311", "--abi", "abi3", "--abi", "none")
USER = "qadtr"  # the login on every board; never root (a root login could leave the chroot)
IMAGE_VERSION = 1  # bump when the image recipe below changes: the cache key changes with it
TOOLS = {"mmdebstrap": "mmdebstrap", "qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support",
         "unshare": "util-linux", "chroot": "coreutils", "tar": "tar", "zstd": "zstd", "ssh": "openssh-client",
         "ssh-keygen": "openssh-client"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# AT_HWCAP bits 0..31 of Linux arm64 (arch/arm64/include/uapi/asm/hwcap.h), in order: how the board shows its core
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
               "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()


@dataclass(frozen=True)
class Profile:
    cpu: str  # the QEMU_CPU model (a core qemu-aarch64 7.2 emulates)
    approximates: str  # the real board it stands in for
    port: int  # its default sshd port on 127.0.0.1
    part: str  # MIDR part number, for the ARM-format /proc/cpuinfo
    variant: str
    revision: int
    features: str  # the HWCAP features qemu gives this core (checked against the board in tests/emu)

    def cpuinfo(self, cores: int) -> str:
        """/proc/cpuinfo as an arm64 kernel prints it: onnxruntime's cpuinfo library parses this file, and
        the host's x86 one makes it crash under qemu-user."""
        block = (f"BogoMIPS\t: 108.00\nFeatures\t: {self.features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
                 f"CPU variant\t: {self.variant}\nCPU part\t: {self.part}\nCPU revision\t: {self.revision}\n\n")
        return "".join(f"processor\t: {i}\n{block}" for i in range(cores))


_A76_FEATURES = "fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
PROFILES = {  # the default `max` core (SVE, SME) put LiteRT/XNNPACK int8 off by up to 93 steps: always pin one
    "cortex-a72": Profile("cortex-a72", "Raspberry Pi 4", 2222, "0xd08", "0x0", 3,
                          "fp asimd aes pmull sha1 sha2 crc32 cpuid"),
    "neoverse-n1": Profile("neoverse-n1", "Jetson Orin CPU (closest to its Cortex-A78AE)", 2223, "0xd0c", "0x3", 1,
                           _A76_FEATURES),
    "cortex-a76": Profile("cortex-a76", "Raspberry Pi 5", 2224, "0xd0b", "0x4", 1, _A76_FEATURES),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise QadtrError(f"profile {name!r} is unknown; use one of {', '.join(PROFILES)}")
    return PROFILES[name]


def cache_dir(cache: str | Path | None = None) -> Path:
    """--cache, else $QADTR_CACHE/arm-emu, else ~/.cache/qadtr/arm-emu (the data caches' rule)."""
    path = Path(cache).expanduser() if cache else Path(os.environ.get("QADTR_CACHE") or Path.home() / ".cache/qadtr")
    path = path if cache else path / "arm-emu"
    if any(c.isspace() or c in "\"'\\" for c in str(path.resolve())):  # ssh -o values cannot carry them
        raise QadtrError(f"cache folder {path} has spaces or quotes, which ssh options cannot carry; pick another --cache")
    return path.resolve()


def image_path(cache: Path) -> Path:
    recipe = json.dumps([IMAGE_VERSION, SUITE, ARCH, PACKAGES, WHEELS, SITE, USER])
    return cache / "images" / f"debian-{SUITE}-{ARCH}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.tar.zst"


def run(argv: list, *, timeout: float, what: str, **kw) -> subprocess.CompletedProcess:
    """Run an argument list; a failure raises QadtrError with the command's last output lines."""
    argv = [str(a) for a in argv]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise QadtrError(f"{what} took over {timeout:.0f}s ({argv[0]}); check the network and re-run") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise QadtrError(f"{what} failed ({argv[0]} exit {done.returncode}: {tail})")
    return done


def check_host(*, build: bool) -> None:
    """Root, the tools, and qemu-aarch64 registered with binfmt (registered here if it is not yet)."""
    if os.geteuid() != 0:
        raise QadtrError("the emulated board needs root (mmdebstrap, chroot and mounts); run it with sudo")
    need = [t for t in TOOLS if (build or t != "mmdebstrap") and shutil.which(t) is None]
    if need:
        packages = " ".join(sorted({TOOLS[t] for t in need}))
        raise QadtrError(f"{', '.join(need)} not found; install them: apt-get install {packages}")
    if not (BINFMT / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], timeout=30, what="mounting binfmt_misc")
    entry = BINFMT / "qemu-aarch64"
    if not entry.is_file() or "enabled" not in entry.read_text():
        run(["update-binfmts", "--enable", "qemu-aarch64"], timeout=30, what="registering qemu-aarch64 with binfmt")
    # F: the kernel opens qemu once, at registration, so that binaries inside the chroot still find it
    if "flags: " not in entry.read_text() or "F" not in entry.read_text().split("flags: ")[1].split()[0]:
        raise QadtrError(f"{entry} lacks the F flag (chroots can't reach qemu); reinstall qemu-user-static from Debian")


def _refuse_if_mounted(path: Path) -> None:
    """Never delete a tree something is mounted in (a leftover bind of /sys or /proc)."""
    prefix = str(path.resolve()) + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if (line.split()[4] + "/").startswith(prefix):
            raise QadtrError(f"{line.split()[4]} is still mounted; unmount it (umount -R) before re-running")


def remove_tree(path: Path) -> None:
    if path.exists():
        _refuse_if_mounted(path)
        shutil.rmtree(path)


def build_image(cache: Path, *, mirrors: tuple[str, ...] = MIRRORS, log=print) -> Path:
    """Debian arm64 (python3, sshd) + the pinned aarch64 wheels + the board user, as one cached tarball."""
    out = image_path(cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    # beside the image, not in /tmp (often a small tmpfs); one a kill -9 left is swept, unless something is mounted in it
    work = make_scratch("emu-build", dir=out.parent, remove=remove_tree)
    root = work / "root"
    try:
        t0 = time.perf_counter()
        log(f"building the {SUITE} {ARCH} root filesystem with mmdebstrap (a few minutes under emulation)")
        run(["mmdebstrap", "--mode=root", f"--arch={ARCH}", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, root, *mirrors], timeout=3600, what="mmdebstrap")
        log(f"  {time.perf_counter() - t0:.0f}s; installing {', '.join(WHEELS)} (aarch64 wheels) into the image")
        run([sys.executable, "-m", "pip", "install", "--quiet", "--root-user-action=ignore", "--target", root / SITE,
             *PIP_PLATFORM, *WHEELS], timeout=1800, what="pip install (aarch64 wheels)")
        # the host compiles the .pyc files: the bytecode of CPython 3.11.x is the same on every 3.11 and every CPU
        shutil.rmtree(root / SITE / "bin", ignore_errors=True)  # console scripts, with the host's shebang
        run(["chroot", root, "/usr/sbin/useradd", "--create-home", "--shell", "/bin/bash", USER], timeout=120,
            what="adding the board user")
        run(["chroot", root, "/usr/sbin/usermod", "--password", "*", USER], timeout=120,  # '*': no password, not locked
            what="setting the board user's password to none")
        for key in (root / "etc/ssh").glob("ssh_host_*"):  # each board gets its own host key at setup
            key.unlink()
        tmp = out.with_name(out.name + ".tmp")
        run(["tar", "--create", "--zstd", "--numeric-owner", "-f", tmp, "-C", root, "."], timeout=1800,
            what="packing the image")
        tmp.rename(out)  # atomic: a cache file is always a finished image
        log(f"  image cached: {out} ({out.stat().st_size / 2**20:.0f} MB, {time.perf_counter() - t0:.0f}s in all)")
        return out
    finally:
        remove_tree(work)
