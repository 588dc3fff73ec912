"""The device inventory: a TOML file the user edits, one table per device.

    [devices.local]                      # built in (devices/devices.toml); always present
    kind = "local"

    [devices.jetson]                     # a board over SSH
    kind = "ssh"
    host = "192.168.1.20"
    user = "nvidia"
    key = "~/.ssh/id_ed25519"
    known_hosts = "~/.ssh/known_hosts"
    runtimes = ["onnxrt", "tensorrt"]
    power = "tegrastats"                 # or "ina" (INA2xx via hwmon), "nvml", "rapl", "auto", "none"
    power_idle_s = 2                     # measure idle power first and subtract it (0 = raw energy)
    python = "python3"                   # the board's interpreter (relative paths: from the login's home)
    workdir = ".qadtr"                   # the agent's files on the board (blobs, jobs, TensorRT engines)
    groups = ["boards"]

    [devices.rpi4-emu]                   # an emulated ARM board (qemu-user, pinned core)
    kind = "arm-emu"
    profile = "cortex-a72"
    port = 2222

Which file: `--inventory PATH`, else $QADTR_DEVICES, else ~/.config/qadtr/devices.toml if present,
else the built-in one. A user file adds devices to the built-in `local` (or redefines it).
Every field is checked when the file is read. ssh devices open with devices/ssh.py (arm-emu with
devices/arm_emu.py, an ssh device on an emulated board).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from qadtr._errors import QadtrError
from qadtr._registry import Registry, resolve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BUILTIN = Path(__file__).with_name("devices.toml")
USER = Path("~/.config/qadtr/devices.toml")
ARM_PROFILES = {"cortex-a72": "~ Raspberry Pi 4", "cortex-a76": "~ Raspberry Pi 5",
                "neoverse-n1": "~ Jetson Orin CPU (closest to its Cortex-A78AE)"}
REMOTE_FIELDS = ("host", "port", "user", "key", "known_hosts", "python", "workdir")
_COMMON = ("kind", "runtimes", "power", "power_idle_s", "groups", "doc")  # the keys every kind takes


@dataclass(frozen=True)
class DeviceKindInfo:
    name: str  # what an inventory's `kind = ` takes
    device: str  # "module:Class" of the Device, imported on first use (open_device)
    fields: tuple[str, ...]  # the keys its table takes; anything else is refused (a misspelt key must not fall back)
    default_port: int = 0  # the port when the table gives none (0: the kind has no port)
    doc: str = ""


DEVICE_KINDS: Registry[DeviceKindInfo] = Registry("device kind")
DEVICE_KINDS.register(DeviceKindInfo("local", "devices.local:LocalDevice", _COMMON, doc="this machine"))
DEVICE_KINDS.register(DeviceKindInfo("ssh", "devices.ssh:SshDevice", (*_COMMON, *REMOTE_FIELDS), default_port=22,
                                     doc="a Linux board over SSH, running devices/agent.py"))
DEVICE_KINDS.register(DeviceKindInfo("arm-emu", "devices.arm_emu:ArmEmuDevice", (*_COMMON, *REMOTE_FIELDS, "profile"),
                                     default_port=2222, doc="an emulated ARM board (qemu-user, pinned core) over SSH"))
KINDS = DEVICE_KINDS.view("device")  # kind -> "module:Class" (the older shapes, read by name)
FIELDS = DEVICE_KINDS.view("fields")  # kind -> the keys it takes
DEFAULT_PORT = DEVICE_KINDS.view("default_port", where=lambda k: k.default_port > 0)  # kind -> its default port
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # device and group names; also safe in file names
_HOST = re.compile(r"[A-Za-z0-9_.:\[\]-]+")  # a host name or address; never starts with "-" (checked)
_PATH = re.compile(r"[A-Za-z0-9_./+-]+")  # remote paths and interpreters: nothing a shell would expand or split
_LOCAL_PATH_BAD = re.compile(r"[\s%\"']")  # ssh splits -o values on spaces and expands %-tokens


@dataclass(frozen=True)
class DeviceSpec:
    name: str  # the table key: --device NAME
    kind: str = "local"  # a key of KINDS
    runtimes: tuple[str, ...] = ()  # runtimes to offer; () = every registered one
    power: str = "auto"  # "auto" (every meter the kind can read), "none", or a meter name (devices.power.METERS)
    power_idle_s: int = 0  # seconds of idle power measured before each replay and subtracted (0 = raw energy)
    groups: tuple[str, ...] = ()  # --device GROUP selects every member
    doc: str = ""  # free text shown by --list-devices
    host: str = ""  # ssh/arm-emu: where sshd listens (arm-emu: 127.0.0.1)
    port: int = 0  # 0 = the kind's default (DEFAULT_PORT)
    user: str = ""  # ssh login ("" = ssh's default)
    key: str = ""  # private key file ("" = ssh's default)
    known_hosts: str = ""  # host keys to verify against ("" = ~/.ssh/known_hosts); never auto-accepted
    python: str = "python3"  # the interpreter on the board that runs the agent
    workdir: str = ".qadtr"  # where the agent keeps its files on the board (relative: to the login's home)
    profile: str = ""  # arm-emu: the pinned CPU core, a key of ARM_PROFILES
    source: str = ""  # the inventory file this came from

    def __post_init__(self) -> None:
        from devices.power import METERS
        from devices.runtimes import list_runtimes

        if not _NAME.fullmatch(self.name):
            raise ValueError("use letters, digits, '_', '.', '-' in device names, starting with a letter or digit")
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        unknown = [r for r in self.runtimes if r not in list_runtimes()]
        if unknown:
            raise ValueError(f"unknown runtimes {unknown}; known: {', '.join(list_runtimes())}")
        object.__setattr__(self, "runtimes", tuple(self.runtimes) or tuple(list_runtimes()))
        if self.power not in ("auto", "none", *METERS):
            raise ValueError(f"power = {self.power!r}; use \"auto\", \"none\" or one of {', '.join(METERS)}")
        if self.power_idle_s < 0:
            raise ValueError(f"power_idle_s = {self.power_idle_s}; use 0 (raw energy) or the idle seconds to subtract")
        bad = [g for g in self.groups if not _NAME.fullmatch(g)]
        if bad:
            raise ValueError(f"group names {bad}: use letters, digits, '_', '.', '-'")
        if self.kind == "local":
            return
        if self.kind == "arm-emu":
            if self.profile not in ARM_PROFILES:
                raise ValueError(f"profile = {self.profile!r}; an arm-emu board needs one of {', '.join(ARM_PROFILES)}")
            object.__setattr__(self, "host", self.host or "127.0.0.1")
        if not self.host:
            raise ValueError("an ssh device needs host = \"ADDRESS\"")
        for key in ("host", "user"):
            value = getattr(self, key)
            if value and (value.startswith("-") or not _HOST.fullmatch(value)):
                raise ValueError(f"{key} = {value!r} is not a plain name or address (no spaces, no leading '-')")
        object.__setattr__(self, "port", self.port or DEFAULT_PORT[self.kind])
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port = {self.port}; use 1..65535")
        if not self.python:
            raise ValueError("python = \"\"; name the board's interpreter, e.g. \"python3\"")
        for key in ("python", "workdir"):
            value = getattr(self, key)
            if value.startswith("-") or not _PATH.fullmatch(value) or ".." in value.split("/"):
                raise ValueError(f"{key} = {value!r}: use a plain path (letters, digits, _ . / + -; no spaces, no '~', no '..'; relative = from the login's home)")
        for key in ("key", "known_hosts"):
            if _LOCAL_PATH_BAD.search(getattr(self, key)):
                raise ValueError(f"{key} = {getattr(self, key)!r}: ssh cannot take a path with spaces, quotes or '%'; "
                                 "move the file to a plain path")

    @property
    def emulated(self) -> bool:
        return self.kind == "arm-emu"

    def where(self) -> str:
        """One line: kind and address (and profile), for listings."""
        if self.kind == "local":
            return "local: this machine"
        at = f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"
        return f"{self.kind} {at}" + (f", {self.profile} ({ARM_PROFILES[self.profile]})" if self.profile else "")


_TYPES = {"kind": str, "runtimes": list, "power": str, "groups": list, "doc": str, "host": str, "port": int,
          "user": str, "key": str, "known_hosts": str, "python": str, "profile": str, "workdir": str,
          "power_idle_s": int}


def _spec(name: str, table: object, source: Path) -> DeviceSpec:
    where = f"{source}: device {name!r}"
    if not isinstance(table, dict):
        raise QadtrError(f"{where}: write it as a table, [devices.{name}]")
    kind = table.get("kind", "local")
    if not isinstance(kind, str) or kind not in KINDS:
        raise QadtrError(f"{where}: kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    extra = sorted(set(table) - set(FIELDS[kind]))
    if extra:
        raise QadtrError(f"{where}: kind {kind!r} takes no {', '.join(extra)}; its keys are {', '.join(FIELDS[kind])}")
    for key, value in table.items():
        want = _TYPES[key]
        if not isinstance(value, want) or isinstance(value, bool) or (
                want is list and not all(isinstance(v, str) for v in value)):
            what = "a list of strings" if want is list else f"a{'n' if want is int else ''} {want.__name__}"
            raise QadtrError(f"{where}: {key} must be {what}, got {value!r}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    if isinstance(fields.get("key"), str):
        fields["key"] = os.path.expanduser(fields["key"])
    if isinstance(fields.get("known_hosts"), str):
        fields["known_hosts"] = os.path.expanduser(fields["known_hosts"])
    try:
        return DeviceSpec(name=name, source=str(source), **fields)
    except ValueError as e:
        raise QadtrError(f"{where}: {e}") from None


def inventory_path(path: str | Path | None = None) -> Path:
    """Which inventory file is used (see the module docstring for the order)."""
    if path is not None:
        if not Path(path).is_file():
            raise QadtrError(f"inventory {path} not found; pass an existing TOML file to --inventory")
        return Path(path)
    env = os.environ.get("QADTR_DEVICES")
    if env:
        if not Path(env).is_file():
            raise QadtrError(f"$QADTR_DEVICES={env} is not a file; fix or unset it")
        return Path(env)
    user = USER.expanduser()
    return user if user.is_file() else BUILTIN


def _read(path: Path) -> dict[str, DeviceSpec]:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise QadtrError(f"{path} is not valid TOML ({e}); fix the file") from None
    extra = sorted(set(data) - {"devices"})
    if extra or not isinstance(data.get("devices", {}), dict):
        raise QadtrError(f"{path}: put every device under [devices.NAME]; found top-level {extra or ['devices']}")
    return {name: _spec(name, table, path) for name, table in data.get("devices", {}).items()}


def load_inventory(path: str | Path | None = None) -> dict[str, DeviceSpec]:
    """Device name -> DeviceSpec from the inventory file, plus the built-in `local` unless redefined."""
    source = inventory_path(path)
    devices = _read(BUILTIN)
    if source != BUILTIN:
        devices.update(_read(source))
    overlap = sorted(set(devices) & {g for d in devices.values() for g in d.groups})
    if overlap:
        raise QadtrError(f"{source}: {overlap} name both a device and a group; rename one")
    return devices


def select_devices(inventory: dict[str, DeviceSpec], names: str) -> list[DeviceSpec]:
    """`--device a,b,group` -> the specs, in order, each once."""
    chosen: dict[str, DeviceSpec] = {}
    groups = sorted({g for d in inventory.values() for g in d.groups})
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        members = [d for d in inventory.values() if name in d.groups]
        if name in inventory:
            members = [inventory[name]]
        if not members:
            raise QadtrError(f"no device or group {name!r}; devices: {', '.join(inventory)}"
                             + (f"; groups: {', '.join(groups)}" if groups else "") + " (see --list-devices; "
                             "add a board to your inventory file as in devices/devices.toml)")
        chosen.update((d.name, d) for d in members)
    if not chosen:
        raise QadtrError("--device is empty; name a device, e.g. --device local")
    return list(chosen.values())


def open_device(spec: DeviceSpec):
    """The Device for a spec (its kind's module is imported now). A board that can't be opened (an arm-emu
    board not set up, a missing key) raises QadtrError naming the fix."""
    return resolve(DEVICE_KINDS.get(spec.kind).device)(spec)


def describe_devices(inventory: dict[str, DeviceSpec]) -> str:
    """The `--list-devices` text: per device, a ✓/✗ line for each runtime and power meter, with why."""
    sources = sorted({d.source for d in inventory.values() if d.source and Path(d.source) != BUILTIN})
    lines = [f"inventory: {', '.join(sources) or f'{BUILTIN} (built in)'}"]
    for spec in inventory.values():
        groups = f"  [groups: {', '.join(spec.groups)}]" if spec.groups else ""
        lines.append(f"{spec.name}  ({spec.where()}){groups}" + (f"  {spec.doc}" if spec.doc else ""))
        try:
            with open_device(spec) as device:
                lines += [f"  {a.line()}" for a in device.status()]
        except QadtrError as e:
            lines.append(f"  ✗ {e}")
    return "\n".join(lines)
