"""The emulated ARM board end to end: setup from the cached image, its sshd, the pinned core, and a replay
of the tiny model through `eval.on_device --device rpi4-emu` (and orin-cpu-emu) compared with x86.

Boards are made in a temporary cache (linked to the real cached image) on free ports, so a board the user
runs on the default ports is never touched. Run: `sudo python -m pytest -m emu tests/emu -s`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from devices._emu_board import Board, remove_tree, stop
from devices._emu_image import TOOLS, cache_dir, get_profile, image_path


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the emulated board needs root (chroot, mounts): run the tests as root"
    missing = [t for t in TOOLS if t != "mmdebstrap" and shutil.which(t) is None]  # mmdebstrap: only to build
    if missing:
        return f"{', '.join(missing)} not installed: apt-get install {' '.join(sorted({TOOLS[t] for t in missing}))}"
    if not image_path(cache_dir()).is_file():
        return (f"no cached arm-emu image ({image_path(cache_dir())}): build it once with "
                "`sudo python -m devices.arm_emu setup --profile cortex-a72`")
    return None


pytestmark = [pytest.mark.emu, pytest.mark.slow, pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))]
RUNTIMES = ["onnxrt", "litert-xnnpack", "litert-builtin"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """get(profile) -> a board set up from the cached image (once per module), with its setup time and log."""
    from devices import arm_emu

    cache = tmp_path_factory.mktemp("emu") / "arm-emu"
    real = image_path(cache_dir())
    (cache / "images").mkdir(parents=True)
    (cache / "images" / real.name).symlink_to(real)
    made: dict[str, SimpleNamespace] = {}

    def get(profile: str) -> SimpleNamespace:
        if profile not in made:
            lines: list[str] = []
            t0 = time.perf_counter()
            info = arm_emu.setup(profile, cache=str(cache), port=_free_port(), log=lines.append)
            made[profile] = SimpleNamespace(board=Board.at(cache, profile), info=info, log=lines, cache=cache,
                                            seconds=time.perf_counter() - t0)
        return made[profile]

    yield get
    for b in made.values():
        stop(b.board)
        remove_tree(b.board.root)


def test_setup_from_cache_takes_seconds(boards):
    b = boards("cortex-a72")
    print(f"\nsetup from the cached image: {b.seconds:.1f}s ({'; '.join(b.log)})")
    assert any(line.startswith("using the cached image") for line in b.log)
    assert b.seconds < 120  # ~15 s on an idle 2-core machine: unpack, keys, emulated sshd, one emulated login
    assert b.board.pid() is not None
    assert b.board.known_hosts.read_text().startswith(f"[127.0.0.1]:{b.board.port} ssh-ed25519 ")


def _listeners(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port` (from /proc/net/tcp and tcp6: no tools needed)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


def test_sshd_loopback_only_and_host_key_verified(boards, tmp_path):
    b = boards("cortex-a72")
    assert _listeners(b.board.port) == {"127.0.0.1"}
    ok = subprocess.run(b.board.ssh_argv("true"), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = [a.replace(str(b.board.known_hosts), str(empty)) for a in b.board.ssh_argv("true")]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr  # never auto-accepted


@pytest.mark.parametrize("profile", ["cortex-a72", "neoverse-n1"])
def test_board_runs_aarch64_on_the_pinned_core(boards, profile):
    info = boards(profile).info
    assert info["machine"] == "aarch64" and info["qemu_cpu"] == profile and info["user"] == "qadtr"
    assert info["features"] == get_profile(profile).features.split()  # what qemu's core offers, no SVE
    assert ("asimddp" in info["features"]) == (profile != "cortex-a72")  # the A72 has no int8 dot product
    host = {d: metadata.version(d) for d in ("onnxruntime", "ai-edge-litert", "numpy")}
    assert info["versions"] == host  # same versions: a difference is the CPU's, not a version's


def _logit_step(tflite: Path) -> float:
    """One step of the TFLite model's int16 logits (export.tflite's `logits/int16` tensor)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(tflite)).get_tensor_details()
    return next(d["quantization"][0] for d in details if d["name"] == "logits/int16")


@pytest.mark.parametrize("device, profile", [("rpi4-emu", "cortex-a72"), ("orin-cpu-emu", "neoverse-n1")])
def test_replay_on_the_board_matches_x86(device, profile, boards, tiny_dataset, tiny_patches, tiny_exports, tmp_path,
                                         monkeypatch, record_property):
    from devices._host import fingerprint
    from devices.intexec import expected_semantics
    from devices.runtimes import feed_format, make_runner, read_logits
    from eval import fleet as od
    from eval.replay import load_replay
    from eval.store import Store

    b = boards(profile)
    monkeypatch.setenv("QADTR_CACHE", str(b.cache.parent))  # ArmEmuDevice finds the test's board, key, known_hosts
    inventory = tmp_path / "devices.toml"  # the built-in entry, on the test board's port
    inventory.write_text(f'[devices.{device}]\nkind = "arm-emu"\nprofile = "{profile}"\nport = {b.board.port}\n'
                         f'runtimes = {RUNTIMES!r}\n'.replace("'", '"'))
    t0 = time.perf_counter()
    models = [str(tiny_exports["onnx"]), str(tiny_exports["tflite"])]  # w8a8 QDQ ONNX, full-integer TFLite
    result = od.replay_on_devices(devices=f"local,{device}", models=models, patches=str(tiny_patches), eval_subset=16,
                         store_path=tmp_path / "s.sqlite", batch_size=8, warmup=1, inventory=str(inventory),
                         runtimes=RUNTIMES)
    wall = time.perf_counter() - t0
    runs = {(r["device"], r["runtime"]): r for r in result["runs"]}
    assert set(runs) == {(d, rt) for d in ("local", device) for rt in RUNTIMES}
    info = result["devices"][device]
    assert info["emulated"] and info["machine"] == "aarch64" and info["profile"] == profile
    table = od.table(result)
    for rt in RUNTIMES:
        run = runs[(device, rt)]
        assert run["emulated"] and not runs[("local", rt)]["emulated"]  # latency labelled emulated in the store
        assert run["energy_per_inference_j"] is None and run["energy_note"]
        assert any(line.startswith(f"{device} (emulated) {rt}") for line in table.splitlines())
    report = {}
    with Store(tmp_path / "s.sqlite") as store:
        logits = {key: store.logits(run["run_id"]) for key, run in runs.items()}  # (M, K) each
    step = _logit_step(tiny_exports["tflite"])
    for rt in RUNTIMES:
        x86, arm = logits[("local", rt)], logits[(device, rt)]
        diff = np.abs(x86.astype(np.float64) - arm)
        report[rt] = {"identical": bool(np.array_equal(x86, arm)), "differing_logits": int((diff > 0).sum()),
                      "of": int(diff.size), "max_abs": float(diff.max()),
                      "argmax_agreement": float((x86.argmax(1) == arm.argmax(1)).mean())}
        if rt.startswith("litert"):  # in steps of the int16 logits the TFLite model dequantizes
            report[rt]["max_steps"] = int(np.rint(diff.max() / step))
    print(f"\n{device} ({profile}) vs x86, {len(x86)} replayed images, {wall:.0f}s: {report}")
    record_property(f"{device}_vs_x86", report)
    # ORT int8 kernels: each side is reproduced bit for bit by the semantics its CPU predicts (x86 with VNNI and ARM
    # sum u8 x s8 exactly: `single`; x86 AVX2 without VNNI saturates int16 pairs: `single-u8s8sat`), so the two
    # sides are identical exactly where those semantics agree on these images.
    replay = load_replay(result["replay"]["path"])
    sides = {"local": expected_semantics("onnxrt", fingerprint()),
             device: expected_semantics("onnxrt", {"machine": info["machine"]})}
    assert sides[device] == "single"
    predicted = {}
    for side, sem in sides.items():
        with make_runner(f"intexec-{sem}", tiny_exports["onnx"]) as r:
            predicted[side] = read_logits(r, r.infer(feed_format(r).feed(replay.images)))
        assert np.array_equal(logits[(side, "onnxrt")], predicted[side]), (side, sem, report)
    assert report["onnxrt"]["identical"] == np.array_equal(predicted["local"], predicted[device]), report
    assert report["litert-xnnpack"]["identical"], report  # XNNPACK int8: bit-identical
    # litert-builtin: LiteRT's optimized builtin int8 kernels may round differently on ARM: reported, not asserted
