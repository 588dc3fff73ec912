"""One emulated board: extracted from the cached image, given its keys, its sshd started, probed and stopped.

    <cache>/boards/<profile>/   root/ (the extracted image)   ssh/id_ed25519, ssh/known_hosts (the login)
                                cpuinfo   board.json (port, pid)   sshd.log

The sshd is the image's own aarch64 sshd, run through binfmt by qemu-user with QEMU_CPU pinned, chrooted
into root/ inside a private mount namespace (`unshare --mount`): its /proc, /sys and cpuinfo mounts vanish
with it and never show on the host. sshd clears the environment of each login, so QEMU_CPU reaches the
login's processes through `SetEnv` (and /etc/environment): every process on the board runs the pinned core.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devices._emu_image import HWCAP_NAMES, USER, Profile, get_profile, remove_tree, run
from qadtr._errors import QadtrError

HOST = "127.0.0.1"  # loopback only: the board is never reachable from another machine
_CHILDREN: dict[int, subprocess.Popen] = {}  # sshds this process started, so stop() can reap them
PROBE = r"""
import json, os, platform, struct
from importlib import metadata
aux = dict(struct.iter_unpack("<QQ", open("/proc/self/auxv", "rb").read()))  # qemu's view of the core
import onnxruntime, ai_edge_litert.interpreter  # loading them proves their aarch64 code runs on this core
print(json.dumps({"machine": platform.machine(), "qemu_cpu": os.environ.get("QEMU_CPU"), "hwcap": aux.get(16, 0),
                  "python": platform.python_version(), "user": os.environ.get("USER"),
                  "versions": {d: metadata.version(d) for d in ("onnxruntime", "ai-edge-litert", "numpy")}}))
"""


@dataclass(frozen=True)
class Board:
    dir: Path
    profile: Profile

    @classmethod
    def at(cls, cache: Path, profile: str) -> Board:
        return cls(cache / "boards" / profile, get_profile(profile))

    root = property(lambda self: self.dir / "root")
    key = property(lambda self: self.dir / "ssh" / "id_ed25519")
    known_hosts = property(lambda self: self.dir / "ssh" / "known_hosts")
    log = property(lambda self: self.dir / "sshd.log")

    def state(self) -> dict:
        path = self.dir / "board.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _save(self, **changes) -> None:
        (self.dir / "board.json").write_text(json.dumps({**self.state(), **changes}, indent=1))

    @property
    def port(self) -> int | None:
        return self.state().get("port")

    def pid(self) -> int | None:
        """The running sshd's pid, or None. The start time recorded with it guards against a recycled pid."""
        st = self.state()
        if not st.get("pid") or _start_time(st["pid"]) != st.get("start_time"):
            return None
        return st["pid"]

    def ssh_argv(self, *remote: str) -> list[str]:
        """ssh to the board: its own key, its host key verified from its known_hosts, no user ssh config.
        The remote command is joined with shlex (ssh hands it to the board's shell); only constants go in it."""
        return ["ssh", "-F", "none", "-p", str(self.port), "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
                f"{USER}@{HOST}", "--", shlex.join(remote)]


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot); None when the process is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def listening(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def install(board: Board, image: Path, port: int, *, log=print) -> None:
    """A fresh board from the image (any old one is stopped and replaced), with new keys and its sshd config."""
    if not 1 <= port <= 65535:
        raise QadtrError(f"--port {port}; use 1..65535")
    stop(board)
    remove_tree(board.root)
    board.root.mkdir(parents=True)
    t0 = time.perf_counter()
    run(["tar", "--extract", "--zstd", "--numeric-owner", "--same-permissions", "-f", image, "-C", board.root],
        timeout=600, what=f"extracting {image.name}")
    log(f"extracted {image.name} in {time.perf_counter() - t0:.1f}s")
    (board.dir / "board.json").unlink(missing_ok=True)
    board._save(profile=board.profile.cpu, port=port, image=image.name, user=USER)
    _keys(board, port)
    etc = board.root / "etc"
    (etc / "ssh/sshd_config.d/qadtr.conf").write_text(
        "# devices.arm_emu: loopback only, key logins of the board user only, the pinned core for every login\n"
        f"ListenAddress {HOST}\nPort {port}\nHostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin no\nAllowUsers {USER}\nX11Forwarding no\n"
        f"AllowTcpForwarding no\nSetEnv QEMU_CPU={board.profile.cpu}\n")
    (etc / "environment").write_text(f"QEMU_CPU={board.profile.cpu}\n")
    (board.dir / "cpuinfo").write_text(board.profile.cpuinfo(os.cpu_count() or 1))
    (board.root / "run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # sshd's privilege-separation dir


def _keys(board: Board, port: int) -> None:
    """A new host key per board (written to known_hosts: verified, never auto-accepted) and the login key."""
    host_key = board.root / "etc/ssh/ssh_host_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"qadtr-arm-emu-{board.profile.cpu}", "-f", host_key],
        timeout=60, what="making the board's host key")
    board.key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not board.key.is_file():  # kept across setups: inventory entries may name it
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qadtr-arm-emu-login", "-f", board.key],
            timeout=60, what="making the login key")
    kind, blob = host_key.with_suffix(".pub").read_text().split()[:2]
    board.known_hosts.write_text(f"[{HOST}]:{port} {kind} {blob}\n")
    uid, gid = next(map(int, line.split(":")[2:4]) for line in (board.root / "etc/passwd").read_text().splitlines()
                    if line.startswith(f"{USER}:"))
    dot_ssh = board.root / "home" / USER / ".ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    auth = dot_ssh / "authorized_keys"
    auth.write_text(board.key.with_suffix(".pub").read_text())
    auth.chmod(0o600)
    for path in (dot_ssh, auth):  # sshd's StrictModes: the user must own them
        os.chown(path, uid, gid)


def start(board: Board, *, timeout: float = 90.0) -> int:
    """Start the board's sshd (no-op when it runs); returns its pid once it accepts connections."""
    pid = board.pid()
    if pid is not None:
        return pid
    if not (board.root / "usr/sbin/sshd").is_file() or board.port is None:
        raise QadtrError(f"board {board.profile.cpu} is not set up; run python -m devices.arm_emu setup "
                         f"--profile {board.profile.cpu}")
    if listening(board.port):
        raise QadtrError(f"127.0.0.1:{board.port} is taken by another program; set the board up on another port "
                         f"(setup --profile {board.profile.cpu} --port N)")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open(board.log, "ab") as log:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m",
                                 "devices._emu_board", "serve", str(board.root), str(board.dir / "cpuinfo"),
                                 board.profile.cpu], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                start_new_session=True)  # its own session: outlives the command that started it
    _CHILDREN[proc.pid] = proc
    deadline = time.monotonic() + timeout
    while not listening(board.port, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_pid(proc.pid)
            tail = " | ".join(board.log.read_text(errors="replace").strip().splitlines()[-3:])
            raise QadtrError(f"the board's sshd did not come up on 127.0.0.1:{board.port} ({tail}); see {board.log}")
        time.sleep(0.2)
    board._save(pid=proc.pid, start_time=_start_time(proc.pid))
    return proc.pid


def serve(root: str, cpuinfo: str, cpu: str) -> None:
    """The namespace side of `start` (root, in the fresh mount namespace): mount, chroot, become sshd."""
    def mount(*argv: str) -> None:
        subprocess.run(["mount", *argv], check=True, timeout=30)

    mount("-t", "proc", "proc", f"{root}/proc")
    mount("--rbind", "/sys", f"{root}/sys")  # onnxruntime's cpuinfo reads /sys/devices/system/cpu/{possible,present}
    mount("-o", "remount,bind,ro", f"{root}/sys")
    mount("--bind", cpuinfo, f"{root}/proc/cpuinfo")  # ARM format: the host's x86 one crashes onnxruntime
    mount("-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", f"{root}/dev/shm")
    os.chroot(root)
    os.chdir("/")
    # -D: stay in the foreground (this pid is the board); -e: log to stderr (sshd.log)
    os.execve("/usr/sbin/sshd", ["/usr/sbin/sshd", "-D", "-e"], {"QEMU_CPU": cpu, "PATH": "/usr/sbin:/usr/bin"})


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM (then SIGKILL) one sshd this module started; logins already open end when their clients do."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while _start_time(pid) is not None and time.monotonic() < deadline:
        if pid in _CHILDREN and _CHILDREN[pid].poll() is not None:
            break
        time.sleep(0.1)
    if _start_time(pid) is not None:
        os.kill(pid, signal.SIGKILL)
    if pid in _CHILDREN:
        _CHILDREN.pop(pid).wait(timeout=timeout)


def stop(board: Board) -> bool:
    """Stop the board's sshd; False when it was not running."""
    pid = board.pid()
    if pid is not None:
        stop_pid(pid)
    if board.state():
        board._save(pid=None, start_time=None)
    return pid is not None


def probe(board: Board) -> dict:
    """Log in and ask the board what it is (machine, the core's HWCAP features, runtime versions)."""
    done = run(board.ssh_argv("python3", "-c", PROBE), timeout=180, what=f"logging in to board {board.profile.cpu}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["features"] = [n for i, n in enumerate(HWCAP_NAMES) if info["hwcap"] >> i & 1]
    return info


if __name__ == "__main__":  # `start` runs this as the new mount namespace's first process
    if len(sys.argv) != 5 or sys.argv[1] != "serve":
        sys.exit("usage: python -m devices._emu_board serve ROOT CPUINFO CPU (started by devices.arm_emu)")
    serve(*sys.argv[2:])
