"""devices/arm_emu.py without qemu: profiles, the built-in inventory entries, the image key, the cache
folder, and what an arm-emu device says when its board is not set up or not running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devices import _emu_image as image
from devices import arm_emu
from devices._emu_board import Board
from devices._host import ARM_PARTS
from devices.inventory import BUILTIN, load_inventory, open_device
from qadtr._errors import QadtrError

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_emulated_boards_match_their_profiles():
    devices = load_inventory(BUILTIN)
    for name, profile, board in (("rpi4-emu", "cortex-a72", "Cortex-A72"), ("orin-cpu-emu", "neoverse-n1", "Neoverse-N1")):
        spec = devices[name]
        prof = image.get_profile(profile)
        assert (spec.kind, spec.profile, spec.host, spec.emulated) == ("arm-emu", profile, "127.0.0.1", True)
        assert spec.port == prof.port  # `setup --profile P` without --port serves the built-in entry
        assert spec.runtimes == ("onnxrt", "litert-xnnpack", "litert-builtin", "litert-ref")  # what the board has
        assert ARM_PARTS[prof.part] == board  # the board agent names the core from the cpuinfo we write
    assert sorted(image.PROFILES) == sorted(__import__("devices.inventory").inventory.ARM_PROFILES)
    assert len({p.port for p in image.PROFILES.values()}) == len(image.PROFILES)


def test_cpuinfo_is_arm_format():
    text = image.get_profile("cortex-a72").cpuinfo(2)
    blocks = text.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["processor\t: 0", "processor\t: 1"]
    assert "CPU implementer\t: 0x41\n" in text and "CPU part\t: 0xd08\n" in text
    assert all(f in image.HWCAP_NAMES for p in image.PROFILES.values() for f in p.features.split())
    with pytest.raises(QadtrError, match=r"profile 'm1' is unknown; use one of cortex-a72, neoverse-n1, cortex-a76"):
        image.get_profile("m1")


def test_image_key_follows_the_recipe(tmp_path, monkeypatch):
    first = image.image_path(tmp_path)
    assert first.parent == tmp_path / "images" and first.name.startswith("debian-bookworm-arm64-")
    assert image.image_path(tmp_path) == first  # stable
    monkeypatch.setattr(image, "WHEELS", ("onnxruntime==1.30.0", *image.WHEELS[1:]))
    assert image.image_path(tmp_path) != first  # a new pin is a new image, never a stale cache hit


def test_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_CACHE", str(tmp_path / "q"))
    assert image.cache_dir() == tmp_path / "q" / "arm-emu"
    assert image.cache_dir(tmp_path / "c") == tmp_path / "c"  # --cache is the folder itself
    monkeypatch.delenv("QADTR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert image.cache_dir() == tmp_path / ".cache" / "qadtr" / "arm-emu"
    with pytest.raises(QadtrError, match="has spaces or quotes, which ssh options cannot carry; pick another --cache"):
        image.cache_dir(tmp_path / "my cache")


def test_host_checks(monkeypatch):
    monkeypatch.setattr(image.os, "geteuid", lambda: 1000)
    with pytest.raises(QadtrError, match="needs root .*; run it with sudo"):
        image.check_host(build=True)
    monkeypatch.setattr(image.os, "geteuid", lambda: 0)
    monkeypatch.setattr(image.shutil, "which", lambda t: None if t in ("mmdebstrap", "zstd") else f"/usr/bin/{t}")
    with pytest.raises(QadtrError, match=r"mmdebstrap, zstd not found; install them: apt-get install mmdebstrap zstd"):
        image.check_host(build=True)


def _fake_board(cache: Path, profile: str, port: int) -> Board:
    """A board folder as `setup` leaves it (keys, board.json), without a rootfs or a running sshd."""
    board = Board.at(cache, profile)
    board.key.parent.mkdir(parents=True)
    board.key.write_text("not a real key")
    board.known_hosts.write_text("")
    (board.dir / "board.json").write_text(json.dumps({"profile": profile, "port": port}))
    return board


def test_device_not_set_up_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_CACHE", str(tmp_path))
    spec = load_inventory(BUILTIN)["rpi4-emu"]
    with pytest.raises(QadtrError, match=r"device 'rpi4-emu': the emulated cortex-a72 board is not set up in .*; "
                       r"run `sudo python -m devices.arm_emu setup --profile cortex-a72`"):
        open_device(spec)


def test_device_fills_login_from_the_board_and_reports_a_stopped_board(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_CACHE", str(tmp_path))
    spec = load_inventory(BUILTIN)["rpi4-emu"]
    board = _fake_board(tmp_path / "arm-emu", "cortex-a72", spec.port)
    monkeypatch.setattr(arm_emu, "listening", lambda port, timeout=1.0: False)
    device = open_device(spec)
    assert isinstance(device, arm_emu.ArmEmuDevice) and device.emulated and device.kind == "arm-emu"
    assert (device.spec.user, device.spec.key, device.spec.known_hosts) == ("qadtr", str(board.key),
                                                                              str(board.known_hosts))
    assert "StrictHostKeyChecking=yes" in device.link.ssh_argv(["true"])  # D1's transport, verifying host keys
    rows = device.status()
    assert [(a.kind, a.name, a.available) for a in rows] == [("runtime", r, False) for r in spec.runtimes] + \
        [("power", "none", False)]
    assert rows[0].reason.startswith("the board is not running on 127.0.0.1:2222; start it: `sudo python -m "
                                     "devices.arm_emu start --profile cortex-a72`")
    assert rows[-1].reason == arm_emu.NO_ENERGY and device.power_meter() is None
    with pytest.raises(QadtrError, match="is not running on 127.0.0.1:2222"):
        device.describe()
    (board.dir / "board.json").write_text(json.dumps({"profile": "cortex-a72", "port": 2299}))
    assert device.status()[0].reason.startswith("the cortex-a72 board listens on port 2299, "
                                                f"{BUILTIN} says 2222; set port = 2299 or re-run setup with --port 2222")


def test_cli_refusals_and_status(tmp_path, capsys):
    assert arm_emu.main(["start", "--cache", str(tmp_path)]) == 1
    assert "start needs --profile (cortex-a72, neoverse-n1, cortex-a76)" in capsys.readouterr().err
    assert arm_emu.main(["stop", "--profile", "cortex-a72", "--port", "2230", "--cache", str(tmp_path)]) == 1
    assert "--port and --rebuild are setup options" in capsys.readouterr().err
    _fake_board(tmp_path, "neoverse-n1", 2223)
    assert arm_emu.main(["status", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not built yet: run setup" in out and "cortex-a72   ~ Raspberry Pi 4: not set up" in out
    assert "neoverse-n1  ~ Jetson Orin CPU (closest to its Cortex-A78AE): stopped (port 2223)" in out


def test_ssh_argv_verifies_the_host_key(tmp_path):
    board = _fake_board(tmp_path, "cortex-a72", 2222)
    argv = board.ssh_argv("python3", "-c", "print(1)")
    assert argv[:2] == ["ssh", "-F"] and "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert f"UserKnownHostsFile={board.known_hosts}" in argv and not any("=no" in a for a in argv)
    assert argv[-3:] == ["qadtr@127.0.0.1", "--", "python3 -c 'print(1)'"]  # one shlex-joined remote command


def test_import_is_light():
    code = ("import sys, devices.arm_emu, devices._emu_board\n"
            "heavy = ('torch', 'brevitas', 'onnxruntime', 'onnx', 'ai_edge_litert', 'tensorrt')\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stderr or r.stdout
