"""A real sshd on 127.0.0.1 for the SSH device tests: its own host key, user key, config and free port.

It runs as the current user (root: sshd then needs /run/sshd, its privilege separation directory,
which is created here as Debian's ssh.service would). The tests are skipped, saying why, when sshd or
the OpenSSH client is not installed (`apt-get install openssh-server openssh-client`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if Path(p).is_file()), None)
MISSING = [tool for tool in ("ssh", "scp", "ssh-keygen") if shutil.which(tool) is None] + ([] if SSHD else ["sshd"])
SKIP = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed: "
                          "`apt-get install openssh-server openssh-client`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (its session children: the connections and the agents they run)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out += [child, *descendants(child)]
    return out


class Sshd:
    """sshd -D on 127.0.0.1:port; `kill()` ends it and every connection it serves (a board losing its network)."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        (root / "authorized_keys").write_bytes((root / "user_key.pub").read_bytes())
        (root / "authorized_keys").chmod(0o600)
        self.known_hosts = root / "known_hosts"
        key = (root / "host_key.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n")
        (root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", f"PidFile {root / 'sshd.pid'}",
            "LogLevel ERROR", ""]))
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 10 s")

    def kill(self) -> None:
        """SIGKILL sshd and all its descendants (ours only: found below its pid)."""
        if self.proc is None:
            return
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def inventory(self, name: str = "board", **fields) -> str:
        """A TOML inventory entry for this sshd."""
        base = {"kind": "ssh", "host": "127.0.0.1", "port": self.port, "key": str(self.root / "user_key"),
                "known_hosts": str(self.known_hosts), "workdir": str(self.root / "board"), "power": "none",
                "python": _board_python()}
        base.update(fields)
        body = "\n".join(f"{k} = {v!r}".replace("'", '"') if not isinstance(v, list) else
                         f"{k} = [{', '.join(repr(x).replace(chr(39), chr(34)) for x in v)}]" for k, v in base.items())
        return f"[devices.{name}]\n{body}\n"


def _board_python() -> str:
    """The 'board' is this machine: the interpreter running the tests (it has numpy and the runtimes)."""
    import sys

    return sys.executable
