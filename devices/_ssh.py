"""The SSH transport of devices/ssh.py: the system's `ssh` and `scp`, argument lists only, a timeout on every step.

Nothing from names, paths or files reaches a shell on this machine: every command is an argv list.
On the board, ssh hands the remote command to the login shell as one string; it is `shlex.join` of
fixed words, the inventory's `python` and `workdir` (checked to be plain paths), hex digests and
integers. Everything else (runtime options, file names, checksums) travels in the pushed job file.

Host keys: `StrictHostKeyChecking=yes` against the inventory's `known_hosts`, `BatchMode=yes` (never a
prompt). An unknown key is refused with the command that trusts it; a key is never accepted here.
"""

from __future__ import annotations

import queue
import shlex
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from qadtr._errors import QadtrError


class SshError(QadtrError):
    """A board step failed; the message names the device and the fix."""


class ConnectionLost(SshError):
    """ssh could not reach the board, or lost it (exit 255, or no answer in time): worth a reconnect."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message  # what ssh said, without the device and step


class RemoteFailed(SshError):
    """The command reached the board and failed there (its exit code, its stderr)."""


@dataclass(frozen=True)
class Limits:
    """Timeouts (seconds) and retries of an SSH device; a slow board (an emulator) gets larger ones."""

    connect: float = 15.0  # ssh ConnectTimeout
    step: float = 60.0  # a short remote command (mkdir, `agent.py info`)
    push_per_mb: float = 2.0  # scp: `step` plus this per MB pushed
    first: float = 600.0  # from starting the agent to its first line (load, idle baseline, warm-up)
    build: float = 3600.0  # the same for tensorrt, which may build its engine on the board first
    line: float = 300.0  # between two result lines once batches flow (a hung board ends here)
    retries: int = 2  # reconnects after a dropped connection, per replay (then: re-run to resume)
    backoff: float = 2.0  # seconds before the first reconnect; doubles each time


def tail(text: str, lines: int = 3) -> str:
    """The last non-empty lines of a tool's stderr, on one line."""
    kept = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


class Stream:
    """A remote command whose stdout lines are read with a deadline per line.

    A thread reads stdout into a queue (so a silent board can time out), another keeps stderr's last
    lines (so a full pipe never blocks ssh). stdin stays open: the agent's --watch-stdin exits when it closes.
    """

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._err: deque[str] = deque(maxlen=20)
        threading.Thread(target=self._pump_out, daemon=True).start()
        self._err_thread = threading.Thread(target=self._pump_err, daemon=True)
        self._err_thread.start()

    def _pump_out(self) -> None:
        for raw in self.proc.stdout:
            self._lines.put(raw)
        self._lines.put(None)

    def _pump_err(self) -> None:
        for raw in self.proc.stderr:
            self._err.append(raw.decode(errors="replace"))

    def line(self, timeout: float) -> bytes | None:
        """The next stdout line, None at its end; TimeoutError after `timeout` seconds of silence."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None

    def finish(self, timeout: float = 30.0) -> int:
        """Close stdin and wait for the exit code (killing ssh if it does not exit in time)."""
        self._close_stdin()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stderr(self) -> str:
        self._err_thread.join(timeout=2.0)
        return "".join(self._err)

    def _close_stdin(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def close(self) -> None:
        self._close_stdin()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Transport:
    """ssh/scp to one board, from its DeviceSpec (host, port, user, key, known_hosts).

    `limits` is read at each call (a callable), so a device's limits can change after it is opened."""

    def __init__(self, spec, limits):
        self.spec, self._limits = spec, limits
        self.known_hosts = spec.known_hosts or "~/.ssh/known_hosts"
        self.where = f"{spec.user + '@' if spec.user else ''}{spec.host}:{spec.port}"

    @property
    def limits(self) -> Limits:
        return self._limits()

    def _options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={self.limits.connect:g}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "ForwardAgent=no",
                "-o", "ClearAllForwardings=yes", "-o", "LogLevel=ERROR"]
        if self.spec.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.spec.known_hosts}"]
        if self.spec.key:
            opts += ["-o", "IdentitiesOnly=yes", "-i", self.spec.key]
        if self.spec.user:
            opts += ["-o", f"User={self.spec.user}"]
        return opts

    def ssh_argv(self, words: list[str]) -> list[str]:
        return ["ssh", "-T", *self._options(), "-p", str(self.spec.port), "--", self.spec.host, shlex.join(words)]

    def scp_argv(self, local: Path, remote: str, *, recursive: bool = False) -> list[str]:
        host = f"[{self.spec.host}]" if ":" in self.spec.host and not self.spec.host.startswith("[") else self.spec.host
        return ["scp", "-q", *(["-r"] if recursive else []), *self._options(), "-P", str(self.spec.port), "--",
                str(local), f"{host}:{remote}"]

    def run(self, words: list[str], *, what: str, timeout: float | None = None) -> str:
        """Run a short remote command; its stdout. Raises SshError/ConnectionLost with the reason."""
        return self._call(self.ssh_argv(words), what, timeout or self.limits.step)

    def push(self, local: Path, remote: str, *, what: str, recursive: bool = False) -> None:
        size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file()) if local.is_dir() else local.stat().st_size
        self._call(self.scp_argv(local, remote, recursive=recursive), what,
                   self.limits.step + self.limits.push_per_mb * size / 1e6)

    def stream(self, words: list[str]) -> Stream:
        return Stream(self.ssh_argv(words))

    def _call(self, argv: list[str], what: str, timeout: float) -> str:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConnectionLost(f"device {self.spec.name!r}: {what} got no answer from {self.where} within "
                                 f"{timeout:g} s", f"no answer within {timeout:g} s") from None
        except FileNotFoundError:
            raise SshError(f"`{argv[0]}` is not installed on this machine; install the OpenSSH client "
                           "(`apt-get install openssh-client`)") from None
        if done.returncode != 0:
            raise self.error(what, done.returncode, done.stderr)
        return done.stdout

    def error(self, what: str, rc: int, stderr: str) -> SshError:
        """The SshError for a failed ssh/scp: host key, login, connection (ConnectionLost) or the board's own failure."""
        name, spec, kh = self.spec.name, self.spec, shlex.quote(self.known_hosts)
        scan = f"ssh-keyscan -p {spec.port} {spec.host}"
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            entry = spec.host if spec.port == 22 else f"[{spec.host}]:{spec.port}"
            return SshError(f"device {name!r}: the host key of {spec.host}:{spec.port} CHANGED since it was trusted in "
                            f"{kh} (a reinstalled board, or someone in between); if the board was reinstalled, remove "
                            f"the old key (`ssh-keygen -R '{entry}' -f {kh}`), check the new fingerprint "
                            f"(`{scan} | ssh-keygen -lf -`) and trust it: `{scan} >> {kh}`")
        if "Host key verification failed" in stderr or "host key is known" in stderr:
            return SshError(f"device {name!r}: the host key of {spec.host}:{spec.port} is not in {kh}, and a new key is "
                            f"never trusted automatically; check its fingerprint (`{scan} | ssh-keygen -lf -` here, "
                            "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the board), then trust it: "
                            f"`{scan} >> {kh}`")
        if "Permission denied" in stderr:
            key = spec.key or "~/.ssh/id_ed25519"
            return SshError(f"device {name!r}: {self.where} refused the login with {spec.key or 'your default keys'}; "
                            f"install the public key on the board (`ssh-copy-id -i {key}.pub -p {spec.port} "
                            f"{spec.user + '@' if spec.user else ''}{spec.host}`) or fix user/key in {spec.source}")
        if rc == 255:
            reason = tail(stderr) or "ssh exit 255"
            return ConnectionLost(f"device {name!r}: {what}: lost or cannot reach {self.where} ({reason})", reason)
        return RemoteFailed(f"device {name!r}: {what} failed on the board (exit {rc}): {tail(stderr) or 'no message'}")
