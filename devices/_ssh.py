"""The SSH transport of devices/ssh.py: the system's `ssh` and `scp`, argument lists only, a timeout on every step.

Nothing from names, paths or files reaches a shell on this machine: every command is an argv list.
On the board, ssh hands the remote command to the login shell as one string; it is `shlex.join` of
fixed words, the inventory's `python` and `workdir` (checked to be plain paths), hex digests and
integers. Everything else (runtime options, file names, checksums) travels in the pushed job file.

What the board sends is bounded and never printed raw: a line is at most MAX_LINE bytes (a longer one
ends the stream with LineTooLong), at most QUEUED lines wait in memory (the reader then stops reading, so
ssh's pipe fills and the agent waits), a short command's output is capped, and any board text that becomes
a message or a stored string goes through `clean` (printable characters only: no terminal escapes).

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

# Bytes of one line from the board. The longest a real agent sends is a batch line: n*k float32 logits in base64
# (4/3 of the bytes) plus ~300 bytes of JSON; 1000 images x 1000 classes is 4 MB, 5.3 MB as base64. 8 MiB holds
# that with room to spare and refuses a runaway board after 8 MiB, not after it has filled the host's memory.
MAX_LINE = 8 << 20
# Lines read ahead of the host. The agent computes a batch far slower than the host stores one, so a short queue
# never slows a replay; with MAX_LINE it bounds what a board can make the host hold to ~5 lines (40 MiB).
QUEUED = 4
# Bytes of stderr kept (its last lines name the failure); the rest is read and dropped so ssh never blocks.
KEEP_STDERR = 64 << 10
# Characters of one piece of board text in a message or a stored field (a reason, a version, a CPU name).
TEXT = 300


def clean(text, limit: int = TEXT) -> str:
    """Board text as it may be printed or stored: one line of printable characters (terminal escapes, other control
    and format characters dropped, line breaks and tabs made spaces), at most `limit` characters."""
    text = str(text)[:4 * limit]
    kept = "".join(c if c.isprintable() else " " if c.isspace() else "" for c in text)
    return kept if len(kept) <= limit else kept[:limit - 3] + "..."


def shell_path(path: str) -> str:
    """`path` quoted for a command the user pastes: a leading `~/` stays outside the quotes, so the shell
    still expands it (shlex.quote("~/.ssh/known_hosts") is a file literally named `~`)."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~"
    return shlex.quote(path)


class SshError(QadtrError):
    """A board step failed; the message names the device and the fix."""


class ConnectionLost(SshError):
    """ssh could not reach the board, or lost it (exit 255, or no answer in time): worth a reconnect."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message  # what ssh said, without the device and step


class RemoteFailed(SshError):
    """The command reached the board and failed there (its exit code, its stderr)."""


class LineTooLong(SshError):
    """The board sent a stdout line longer than MAX_LINE: the stream is cut there, nothing of the line is kept."""

    def __init__(self, head: bytes):
        super().__init__(f"a line over {MAX_LINE >> 20} MiB starting {head[:60]!r}")
        self.head = head[:60]


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
    kept = [clean(ln).strip() for ln in text.replace("\r", "\n").splitlines() if clean(ln).strip()]
    return " | ".join(kept[-lines:])


class Stream:
    """A remote command whose stdout lines are read with a deadline per line.

    A thread reads stdout into a queue of at most QUEUED lines of at most MAX_LINE bytes (so a silent board can
    time out, and a flooding one cannot fill memory), another keeps stderr's last KEEP_STDERR bytes (so a full
    pipe never blocks ssh). stdin stays open: the agent's --watch-stdin exits when it closes.
    """

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._lines: queue.Queue[bytes | LineTooLong | None] = queue.Queue(maxsize=QUEUED)
        self._closed = False
        self._err: deque[bytes] = deque()
        threading.Thread(target=self._pump_out, daemon=True).start()
        self._err_thread = threading.Thread(target=self._pump_err, daemon=True)
        self._err_thread.start()

    def _put(self, item) -> bool:
        while not self._closed:  # a full queue waits for the reader; a closed stream stops the pump
            try:
                self._lines.put(item, timeout=0.2)
                return True
            except queue.Full:
                pass
        return False

    def _pump_out(self) -> None:
        while True:
            raw = self.proc.stdout.readline(MAX_LINE + 1)
            if not raw:
                break
            if len(raw) > MAX_LINE:  # no newline within MAX_LINE bytes: refuse, and read no further
                self._put(LineTooLong(raw))
                return
            if not self._put(raw):
                return
        self._put(None)

    def _pump_err(self) -> None:
        kept = 0
        for block in iter(lambda: self.proc.stderr.read1(65536), b""):
            self._err.append(block)
            kept += len(block)
            while kept - len(self._err[0]) >= KEEP_STDERR:
                kept -= len(self._err.popleft())

    def line(self, timeout: float) -> bytes | None:
        """The next stdout line, None at its end; TimeoutError after `timeout` seconds of silence, LineTooLong for
        a line over MAX_LINE bytes."""
        try:
            got = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if isinstance(got, LineTooLong):
            raise got
        return got

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
        return b"".join(self._err)[-KEEP_STDERR:].decode(errors="replace")

    def _close_stdin(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        self._close_stdin()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        while True:  # drop what was read ahead
            try:
                self._lines.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _capped(argv: list[str], timeout: float, cap: int) -> tuple[int, bytes, str]:
    """(exit code, stdout, stderr's tail) of a short command; its stdout is cut after `cap` + 1 bytes (the caller
    refuses a longer answer), its stderr keeps the last KEEP_STDERR bytes. TimeoutExpired after `timeout` s."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()

    def read(pipe, into: bytearray, head: bool) -> None:
        for block in iter(lambda: pipe.read1(65536), b""):
            if head:
                into += block[:cap + 1 - len(into)]
            else:
                into += block
                del into[:-KEEP_STDERR]

    threads = [threading.Thread(target=read, args=(proc.stdout, out, True), daemon=True),
               threading.Thread(target=read, args=(proc.stderr, err, False), daemon=True)]
    for t in threads:
        t.start()
    try:
        rc = proc.wait(timeout=timeout)
    except BaseException:  # the timeout, Ctrl-C or SIGTERM (qadtr._cli.run_cli): no ssh/scp outlives its step
        proc.kill()
        proc.wait()
        raise
    finally:
        for t in threads:
            t.join(timeout=2.0)
    return rc, bytes(out), err.decode(errors="replace")


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
            rc, out, err = _capped(argv, timeout, MAX_LINE)
        except subprocess.TimeoutExpired:
            raise ConnectionLost(f"device {self.spec.name!r}: {what} got no answer from {self.where} within "
                                 f"{timeout:g} s", f"no answer within {timeout:g} s") from None
        except FileNotFoundError:
            raise SshError(f"`{argv[0]}` is not installed on this machine; install the OpenSSH client "
                           "(`apt-get install openssh-client`)") from None
        if rc != 0:
            raise self.error(what, rc, err)
        if len(out) > MAX_LINE:
            raise SshError(f"device {self.spec.name!r}: {what}: the board answered more than {MAX_LINE >> 20} MiB "
                           f"(starting {out[:60]!r}), refused unread; check what runs as `{self.spec.python}` on the "
                           "board (a runaway or modified program)")
        return out.decode(errors="replace")

    def error(self, what: str, rc: int, stderr: str) -> SshError:
        """The SshError for a failed ssh/scp: host key, login, connection (ConnectionLost) or the board's own failure."""
        name, spec, kh = self.spec.name, self.spec, shell_path(self.known_hosts)
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
