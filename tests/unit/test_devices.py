"""devices: runtime registry, uniform feed, null/fakequant/TensorRT runners, inventory, local replay, RAPL."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devices import (Availability, Batch, DeviceSpec, Runner, RunnerError, TensorSpec, accepts, describe_devices,
                     feed_format, list_runtimes, load_inventory, make_runner, open_device, probe, read_logits,
                     select_devices)
from devices import inventory as inv
from devices import runtimes as R
from devices.fakequant import FakeQuantRunner
from devices.local import LocalDevice
from devices.null import NullRunner
from devices.power import MeterUnavailable, open_meter, rapl
from devices.tensorrt import TensorRTRunner
from qadtr._errors import QadtrError

ROOT = Path(__file__).resolve().parents[2]


# -- registry ----------------------------------------------------------------------------------------------
def test_registry_rows_and_lookup():
    assert list_runtimes() == ["fakequant", "onnxrt", "litert-xnnpack", "litert-builtin", "litert-ref", "tensorrt",
                               "intexec-single", "intexec-single-u8s8sat", "intexec-xnnpack", "intexec-double",
                               "intexec-double-ruy", "null"]
    # null is plumbing; litert-ref and the executor are references, run when named (eval.compare runs the executor)
    assert [n for n in list_runtimes() if R.RUNTIMES[n].in_defaults] == ["fakequant", "onnxrt", "litert-xnnpack",
                                                                        "litert-builtin", "tensorrt"]
    with pytest.raises(QadtrError, match=r"unknown runtime 'ort'; known: fakequant, onnxrt, litert-xnnpack"):
        R.get_runtime("ort")
    with pytest.raises(ValueError, match="write 'module:Class'"):
        R.RuntimeInfo("x", "devices.null.NullRunner", ())
    with pytest.raises(ValueError, match="registered twice"):
        R.register_runtime(R.RUNTIMES["null"])


def test_every_runner_class_imports_without_its_runtime():
    code = ("import sys, importlib\nfrom devices.runtimes import RUNTIMES\n"
            "for info in RUNTIMES.values():\n"
            "    m, c = info.runner.split(':')\n"
            "    getattr(importlib.import_module(m), c)\n"
            "import devices.local, devices.inventory, devices.power.rapl\n"
            "heavy = ('torch', 'brevitas', 'onnxruntime', 'onnx', 'ai_edge_litert', 'tensorrt', 'tensorrt_rtx')\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported at import time: {r.stdout.strip()}"


def test_probe_reasons(monkeypatch):
    assert probe("fakequant") is None and probe("null") is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "onnxruntime" else real(m, *a))
    assert probe("onnxrt") == "onnxruntime not installed; pip install 'qadtr-edge[onnx]'"
    with pytest.raises(QadtrError, match=r"runtime 'onnxrt' is not available here: onnxruntime not installed"):
        make_runner("onnxrt", ROOT / "pyproject.toml")
    # TensorRT importable but no GPU: the second reason
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: object() if m == "tensorrt" else real(m, *a))
    monkeypatch.setattr(R, "nvidia_gpu", lambda: None)
    assert probe("tensorrt").startswith("no NVIDIA GPU here")
    monkeypatch.setattr(R, "nvidia_gpu", lambda: "/dev/nvidia0")
    assert probe("tensorrt") is None


def test_make_runner_refusals(tmp_path, tiny_checkpoint):
    (tmp_path / "m.tflite").write_bytes(b"")
    with pytest.raises(QadtrError, match=r"not found"):
        make_runner("null", tmp_path / "absent.onnx")
    with pytest.raises(QadtrError, match=r"runtime 'onnxrt' takes \.onnx, not m\.tflite"):
        make_runner("onnxrt", tmp_path / "m.tflite")
    with pytest.raises(QadtrError, match=r"runtime 'litert-builtin' fixes kernels='builtin'"):
        make_runner("litert-builtin", tmp_path / "m.tflite", kernels="xnnpack")
    with pytest.raises(QadtrError, match=r"runtime 'litert-xnnpack' has no option threads; it takes num_threads"):
        make_runner("litert-xnnpack", tmp_path / "m.tflite", threads=1)
    runner = make_runner("litert-builtin", tmp_path / "m.tflite", num_threads=1)
    assert runner.kernels == "builtin" and runner.num_threads == 1 and not runner.is_active
    assert isinstance(make_runner("null", tmp_path / "m.tflite", num_classes=3), NullRunner)
    assert isinstance(make_runner("fakequant", tiny_checkpoint.parent), FakeQuantRunner)  # a checkpoint folder


def test_accepts(tmp_path, tiny_checkpoint):
    onnx_file = tmp_path / "w4.onnx"
    onnx_file.write_bytes(b"")
    assert accepts("onnxrt", onnx_file) is None and accepts("null", onnx_file) is None
    assert accepts("onnxrt", tmp_path) == f"runtime 'onnxrt' takes .onnx, not {tmp_path.name}"
    assert accepts("fakequant", tiny_checkpoint) is None and accepts("fakequant", tiny_checkpoint.parent) is None
    assert "has no export record" in accepts("fakequant", onnx_file)
    assert accepts("tensorrt", onnx_file) is None  # a hand-made ONNX: the parser will judge it
    record = {"_data": {"exporter": "export.onnx", "source": "x/model.pt"}}
    Path(f"{onnx_file}.json").write_text(json.dumps(record))
    assert accepts("fakequant", onnx_file) is None
    assert "not TensorRT-bound; export with `python -m export.trt`" in accepts("tensorrt", onnx_file)


# -- the uniform feed --------------------------------------------------------------------------------------
class SpecRunner(Runner):
    """A runner with a given input spec (and input quantization), returning its input."""

    name = "spec"

    def __init__(self, *specs: TensorSpec, quant=(0.0, 0), out_quant=(0.0, 0)):
        super().__init__()
        self.specs, self.quant, self.out_quant = list(specs), quant, out_quant

    def _activate(self) -> None:
        pass

    def _input_spec(self):
        return self.specs

    def input_quantization(self):
        return {s.name: self.quant for s in self.specs}

    def output_quantization(self):
        return {"y": self.out_quant}

    def _infer(self, feed):
        return {"y": next(iter(feed.values()))}


IMAGES = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)  # (B, H, W, 3)


@pytest.mark.parametrize("spec, quant, layout, encoding", [
    (TensorSpec("input", np.dtype(np.float32), (None, 3, 8, 8)), (0.0, 0), "NCHW", "float01"),
    (TensorSpec("pixels", np.dtype(np.float32), (None, 8, 8, 3)), (0.0, 0), "NHWC", "float01"),
    (TensorSpec("x", np.dtype(np.int8), (1, 8, 8, 3)), (1.0, -128), "NHWC", "int8-minus-128"),
])
def test_feed_format_bytes(spec, quant, layout, encoding):
    from qadtr.predict import to_tensor

    with SpecRunner(spec, quant=quant) as r:
        fmt = feed_format(r)
        assert (fmt.name, fmt.layout, fmt.encoding) == (spec.name, layout, encoding)
        x = fmt.feed(IMAGES)[spec.name]
    assert x.flags.c_contiguous and x.dtype == spec.dtype
    if encoding == "int8-minus-128":
        assert np.array_equal(x.astype(np.int16), IMAGES.astype(np.int16) - 128)
    else:
        ref = to_tensor(IMAGES)  # (B, 3, H, W): the bytes the attacks saw
        ref = ref if layout == "NCHW" else ref.permute(0, 2, 3, 1)
        assert np.array_equal(x, ref.contiguous().numpy())
    assert fmt.batch == spec.shape[0]


@pytest.mark.parametrize("specs, quant, match", [
    ((TensorSpec("a", np.dtype(np.float32), (None, 3, 8, 8)),) * 2, (0.0, 0), "has 2 inputs"),
    ((TensorSpec("a", np.dtype(np.float32), (None, 3, 64)),), (0.0, 0), "cannot tell NCHW from NHWC"),
    ((TensorSpec("a", np.dtype(np.float32), (None, 3, 8, 3)),), (0.0, 0), "cannot tell NCHW from NHWC"),
    ((TensorSpec("a", np.dtype(np.float64), (None, 3, 8, 8)),), (0.0, 0), "input 'a' is float64"),
    ((TensorSpec("a", np.dtype(np.int8), (None, 8, 8, 3)),), (0.5, 3), r"quantized as \(0\.5, 3\)"),
])
def test_feed_format_refusals(specs, quant, match):
    with SpecRunner(*specs, quant=quant) as r, pytest.raises(QadtrError, match=match):
        feed_format(r)


def test_feed_refuses_bad_images():
    with SpecRunner(TensorSpec("input", np.dtype(np.float32), (None, 3, 8, 8))) as r:
        fmt = feed_format(r)
    with pytest.raises(QadtrError, match=r"expected uint8 \(B, H, W, 3\) images, got float32"):
        fmt.feed(IMAGES.astype(np.float32))
    with pytest.raises(QadtrError, match="the model takes 8x8 images, the data is 4x4"):
        fmt.feed(IMAGES[:, :4, :4])


def test_read_logits_dequantizes_integer_outputs():
    q = np.array([[-128, 0, 127]], np.int8)
    with SpecRunner(TensorSpec("x", np.dtype(np.int8), (None, 3)), out_quant=(0.5, -128)) as r:
        assert read_logits(r, {"y": q}).tolist() == [[0.0, 64.0, 127.5]]
    with SpecRunner(TensorSpec("x", np.dtype(np.int8), (None, 3))) as r:  # no scale: the raw integers
        assert read_logits(r, {"y": q}).dtype == np.float32
    logits = read_logits(None, {"a": np.ones((2, 1, 1, 4), np.float64), "b": np.zeros(1)})  # first output
    assert logits.shape == (2, 4) and logits.dtype == np.float32


# -- runners -----------------------------------------------------------------------------------------------
def test_null_runner():
    with NullRunner("whatever", num_classes=7) as r:
        out = r.infer({"pixels": np.zeros((5, 4, 4, 3), np.float32)})
    assert out["logits"].shape == (5, 7) and not out["logits"].any() and r.last_inference_time >= 0
    with pytest.raises(RunnerError, match="num_classes=0"):
        NullRunner(num_classes=0)


def test_fakequant_is_deploy_net(tiny_checkpoint, tiny_images):
    import torch

    from qadtr.checkpoint import load_checkpoint
    from qadtr.predict import to_tensor
    from qadtr.models import deploy_net

    with FakeQuantRunner(tiny_checkpoint, bits=(4, 4)) as r:
        out = r.infer(R.prepare_feed(r, tiny_images))["logits"]
    with torch.no_grad():
        ref = deploy_net(load_checkpoint(tiny_checkpoint)[0], 4, 4)(to_tensor(tiny_images)).numpy()
    assert np.array_equal(out, ref) and out.dtype == np.float32
    assert r.kernels.startswith("torch ") and "fake-quant (Brevitas 0.13" in r.kernels and r.kernels.endswith("w4a4")


@pytest.mark.parametrize("bits, match", [(None, r"runs at \[\(2, 2\), \(4, 4\), \(8, 8\)\]; pass bits"),
                                         ((3, 3), "has no w3a3")])
def test_fakequant_bits_refusals(tiny_checkpoint, bits, match):
    with pytest.raises(RunnerError, match=match):
        FakeQuantRunner(tiny_checkpoint, bits=bits).activate()


def test_fakequant_of_an_export(tiny_checkpoint, tmp_path):
    from qadtr._config import sha256_file

    art = tmp_path / "w2.tflite"
    art.write_bytes(b"")
    record = {"source": str(tiny_checkpoint), "source_sha256": sha256_file(tiny_checkpoint), "bits": [2, 2]}
    Path(f"{art}.json").write_text(json.dumps({"_type": "TfliteExport", "_data": record}))
    with make_runner("fakequant", art) as r:
        assert r.bits == (2, 2) and r.kernels.endswith("deploy_net w2a2")
    with pytest.raises(RunnerError, match=r"bits=\(4, 4\) but w2\.tflite was exported at \(2, 2\)"):
        FakeQuantRunner(art, bits=(4, 4))
    Path(f"{art}.json").write_text(json.dumps({"_data": {**record, "source_sha256": "0" * 64}}))
    with pytest.raises(RunnerError, match="is not the checkpoint w2.tflite was exported from"):
        FakeQuantRunner(art).activate()
    with pytest.raises(RunnerError, match=r"bits=\(4,\); pass a \(w, a\) pair"):
        FakeQuantRunner(tiny_checkpoint, bits=(4,))


def test_tensorrt_runner_refusals(tmp_path, monkeypatch):
    with pytest.raises(RunnerError, match="TensorRT takes a TensorRT-bound .onnx or an .engine"):
        TensorRTRunner(tmp_path / "m.tflite")
    with pytest.raises(RunnerError, match=r"batch=\(4, 2, 8\); pass \(min, opt, max\)"):
        TensorRTRunner(tmp_path / "m.onnx", batch=(4, 2, 8))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    r = TensorRTRunner(tmp_path / "m.engine")
    with pytest.raises(RunnerError, match="the TensorRT runner requires tensorrt; use JetPack's TensorRT"):
        r.activate()
    assert not r.is_active


def test_tensorrt_build_engine_offline(tiny_checkpoint, tiny_images, tmp_path):
    """The runner's build step, ahead of time with TensorRT-RTX (no GPU): parses and builds the tiny model."""
    onnx = pytest.importorskip("onnx")
    rtx = pytest.importorskip("tensorrt_rtx", reason="needs the trt-check extra: pip install -e \".[trt-check]\" "
                                                       "(make test installs it)")
    from devices.tensorrt import build_engine
    from export._common import deploy_model
    from export.onnx import export_qcdq
    from export.trt import make_trt_bound
    from qadtr.predict import to_tensor

    export_qcdq(deploy_model(tiny_checkpoint, 4)[0], tmp_path / "q.onnx", to_tensor(tiny_images[:1]))
    onnx.save(make_trt_bound(onnx.load(str(tmp_path / "q.onnx")))[0], str(tmp_path / "t.onnx"))
    engine = build_engine(rtx, tmp_path / "t.onnx", (1, 4, 8), logger=rtx.Logger(rtx.Logger.ERROR))
    assert isinstance(engine, bytes) and len(engine) > 1000
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(RunnerError, match="the TensorRT parser rejected bad.onnx"):
        build_engine(rtx, tmp_path / "bad.onnx", (1, 4, 8), logger=rtx.Logger(rtx.Logger.INTERNAL_ERROR))


# -- inventory ---------------------------------------------------------------------------------------------
BOARDS = """
[devices.jetson]
kind = "ssh"
host = "192.168.1.20"
user = "nvidia"
key = "~/.ssh/id_ed25519"
runtimes = ["onnxrt", "tensorrt"]
power = "tegrastats"
groups = ["boards"]

[devices.rpi4-emu]
kind = "arm-emu"
profile = "cortex-a72"
groups = ["boards", "emulated"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    return path


def test_builtin_inventory_is_local_and_the_emulated_boards():
    devices = load_inventory(inv.BUILTIN)
    assert list(devices) == ["local", "rpi4-emu", "orin-cpu-emu"]  # the boards: tests/unit/test_arm_emu.py
    local = devices["local"]
    assert local.kind == "local" and local.runtimes == tuple(list_runtimes()) and local.power == "auto"
    assert not local.emulated


def test_inventory_parses_boards(tmp_path):
    devices = load_inventory(_write(tmp_path, BOARDS))
    assert list(devices) == ["local", "rpi4-emu", "orin-cpu-emu", "jetson"]  # built-ins stay; rpi4-emu redefined
    j, e = devices["jetson"], devices["rpi4-emu"]
    assert (j.port, j.runtimes, j.power, j.python) == (22, ("onnxrt", "tensorrt"), "tegrastats", "python3")
    assert j.key == str(Path("~/.ssh/id_ed25519").expanduser()) and j.source == str(tmp_path / "devices.toml")
    assert (e.host, e.port, e.emulated, e.profile) == ("127.0.0.1", 2222, True, "cortex-a72")
    assert [d.name for d in select_devices(devices, "boards")] == ["rpi4-emu", "jetson"]  # inventory order
    assert [d.name for d in select_devices(devices, "local, emulated,local")] == ["local", "rpi4-emu", "orin-cpu-emu"]
    with pytest.raises(QadtrError, match="no device or group 'pi'; devices: local, rpi4-emu, orin-cpu-emu, jetson; "
                       "groups: boards, emulated"):
        select_devices(devices, "pi")
    with pytest.raises(QadtrError, match="--device is empty"):
        select_devices(devices, " , ")
    from devices.ssh import SshDevice

    board = open_device(dataclasses.replace(j, key=""))  # opening connects to nothing yet
    assert isinstance(board, SshDevice) and board.kind == "ssh" and not board.emulated
    with pytest.raises(QadtrError, match=r"device 'jetson': key .*nokey not found; fix `key` in .*`ssh-keygen -t ed25519"):
        open_device(dataclasses.replace(j, key=str(tmp_path / "nokey")))


@pytest.mark.parametrize("text, match", [
    ("[devices.x]\nkind = \"usb\"\n", r"device 'x': kind 'usb' is unknown; use one of local, ssh, arm-emu"),
    ("[devices.x]\nkind = \"local\"\nhost = \"a\"\n", r"kind 'local' takes no host; its keys are kind, runtimes"),
    ("[devices.x]\nruntime = [\"onnxrt\"]\n", r"takes no runtime; its keys are kind, runtimes"),
    ("[devices.x]\nruntimes = [\"ort\"]\n", r"unknown runtimes \['ort'\]; known: fakequant, onnxrt"),
    ("[devices.x]\nruntimes = \"onnxrt\"\n", r"runtimes must be a list of strings, got 'onnxrt'"),
    ("[devices.x]\npower = \"wattmeter\"\n", r"power = 'wattmeter'; use \"auto\", \"none\" or one of rapl"),
    ("[devices.x]\ngroups = [\"a b\"]\n", r"group names \['a b'\]"),
    ("[devices.x]\ngroups = [\"local\"]\n", r"\['local'\] name both a device and a group"),
    ("[devices.\"-x\"]\n", r"use letters, digits"),
    ("[devices.x]\nkind = \"ssh\"\n", r"an ssh device needs host = \"ADDRESS\""),
    ("[devices.x]\nkind = \"ssh\"\nhost = \"-oProxyCommand=x\"\n", r"host = '-oProxyCommand=x' is not a plain name"),
    ("[devices.x]\nkind = \"ssh\"\nhost = \"h\"\nuser = \"a b\"\n", r"user = 'a b' is not a plain name"),
    ("[devices.x]\nkind = \"ssh\"\nhost = \"h\"\nport = 70000\n", r"port = 70000; use 1\.\.65535"),
    ("[devices.x]\nkind = \"ssh\"\nhost = \"h\"\nport = \"22\"\n", r"port must be an int, got '22'"),
    ("[devices.x]\nkind = \"ssh\"\nhost = \"h\"\npython = \"\"\n", r"name the board's interpreter"),
    ("[devices.x]\nkind = \"ssh\"\nhost = \"h\"\nprofile = \"cortex-a72\"\n", r"kind 'ssh' takes no profile"),
    ("[devices.x]\nkind = \"arm-emu\"\nprofile = \"m1\"\n", r"profile = 'm1'; an arm-emu board needs one of cortex"),
    ("[devices.x]\nkind = [\"ssh\"]\n", r"kind \['ssh'\] is unknown"),
    ("[devices]\nx = 1\n", r"device 'x': write it as a table, \[devices\.x\]"),
    ("[device.x]\n", r"put every device under \[devices\.NAME\]; found top-level \['device'\]"),
    ("[devices.x\n", r"is not valid TOML"),
])
def test_inventory_refusals(tmp_path, text, match):
    with pytest.raises(QadtrError, match=match):
        load_inventory(_write(tmp_path, text))


def test_inventory_file_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("QADTR_DEVICES", raising=False)
    assert inv.inventory_path() == inv.BUILTIN
    user = tmp_path / ".config" / "qadtr" / "devices.toml"
    user.parent.mkdir(parents=True)
    user.write_text("[devices.mine]\n")
    assert inv.inventory_path() == user and "mine" in load_inventory()
    env = _write(tmp_path, "[devices.fromenv]\n")
    monkeypatch.setenv("QADTR_DEVICES", str(env))
    assert inv.inventory_path() == env and "fromenv" in load_inventory()
    assert inv.inventory_path(user) == user  # --inventory wins
    with pytest.raises(QadtrError, match=r"inventory .*nope.toml not found; pass an existing TOML file"):
        inv.inventory_path(tmp_path / "nope.toml")
    monkeypatch.setenv("QADTR_DEVICES", str(tmp_path / "gone.toml"))
    with pytest.raises(QadtrError, match=r"\$QADTR_DEVICES=.*gone.toml is not a file; fix or unset it"):
        inv.inventory_path()


def test_describe_devices(tmp_path, monkeypatch):
    from devices._ssh import SshError
    from devices.ssh import SshDevice

    monkeypatch.setattr(rapl, "POWERCAP", tmp_path / "no-powercap")
    monkeypatch.setenv("HOME", str(tmp_path))  # the jetson's key = ~/.ssh/id_ed25519 exists; the board does not
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("")
    monkeypatch.setattr(SshDevice, "board_info", lambda self: (_ for _ in ()).throw(SshError("jetson is unreachable")))
    text = describe_devices(load_inventory(_write(tmp_path, BOARDS + "\n[devices.local]\npower = \"rapl\"\n")))
    lines = text.splitlines()
    assert lines[0] == f"inventory: {tmp_path / 'devices.toml'}"
    for name in list_runtimes():  # one ✓/✗ line per runtime of local, with the reason when ✗
        reason = probe(name)
        line = next(ln for ln in lines if ln.split()[1:3] == ["runtime", name])
        assert line.startswith("  ✓" if reason is None else "  ✗") and (reason is None or line.endswith(reason))
    assert f"  ✗ power   rapl            no {tmp_path / 'no-powercap'}" in text
    assert "jetson  (ssh nvidia@192.168.1.20:22)  [groups: boards]" in text
    assert "rpi4-emu  (arm-emu 127.0.0.1:2222, cortex-a72 (~ Raspberry Pi 4))" in text
    assert "jetson  (ssh nvidia@192.168.1.20:22)  [groups: boards]\n  ✗ jetson is unreachable" in text


def test_availability_and_batch_checks():
    assert Availability("runtime", "x", True).line() == "✓ runtime x"
    with pytest.raises(ValueError, match="say why"):
        Availability("power", "rapl", False)
    with pytest.raises(ValueError, match="kind='gpu'"):
        Availability("gpu", "x", True)
    with pytest.raises(ValueError, match="must be float32 \\(B, K\\)"):
        Batch(0, np.zeros((2, 3), np.float64), 0.1)
    with pytest.raises(ValueError, match="both must be >= 0"):
        Batch(-1, np.zeros((2, 3), np.float32), 0.1)


# -- local replay ------------------------------------------------------------------------------------------
def _local(power: str = "none", runtimes=()) -> LocalDevice:
    return open_device(DeviceSpec("local", power=power, runtimes=tuple(runtimes)))


@pytest.fixture
def spy(monkeypatch):
    """Records every runner the local device makes."""
    made = []
    real = R.make_runner

    def make(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr("devices.local.make_runner", make)
    return made


def test_local_replay_null(tiny_checkpoint, tiny_images, spy):
    with _local().replay("null", tiny_checkpoint, tiny_images, batch_size=10, warmup=2) as batches:
        assert batches.kernels == ""  # not up yet: nothing runs before the first batch is asked for
        got = list(batches)
        assert batches.runner == "null" and batches.kernels.startswith("none") and batches.feed.startswith("pixels")
    assert [b.first for b in got] == [0, 10, 20, 30] and [len(b.logits) for b in got] == [10, 10, 10, 2]
    assert all(b.energy_j is None and b.seconds > 0 and not b.logits.any() for b in got)
    (runner,) = spy
    assert len(runner.inference_times) == 2 + 4  # warm-up calls ran and were not yielded
    assert [b.seconds for b in got] == runner.inference_times[2:]  # each batch: its own timed call
    assert not runner.is_active


def test_local_replay_fakequant_and_resume(tiny_checkpoint, tiny_images, spy):
    device = _local()
    full = list(device.replay("fakequant", tiny_checkpoint, tiny_images, batch_size=8, warmup=1,
                              options={"bits": (8, 8)}))
    assert [b.first for b in full] == [0, 8, 16, 24]
    logits = np.concatenate([b.logits for b in full])  # (N, K)
    with spy[0].activate() as r:  # the same runner on the same batches: exactly the reference's logits
        ref = [r.infer(R.prepare_feed(r, tiny_images[i:i + 8]))["logits"] for i in range(0, 32, 8)]
    assert np.array_equal(logits, np.concatenate(ref))
    aligned = list(device.replay("fakequant", tiny_checkpoint, tiny_images, batch_size=8, warmup=0, start=16,
                                 options={"bits": (8, 8)}))
    assert [b.first for b in aligned] == [16, 24] and np.array_equal(aligned[0].logits, logits[16:24])
    resumed = list(device.replay("fakequant", tiny_checkpoint, tiny_images, batch_size=8, warmup=0, start=13,
                                 options={"bits": (8, 8)}))
    assert [b.first for b in resumed] == [13, 21, 29] and len(spy[-1].inference_times) == 3
    # other batch compositions may differ in the last float bit (BLAS blocking), never more
    np.testing.assert_allclose(np.concatenate([b.logits for b in resumed]), logits[13:], rtol=0, atol=1e-6)
    assert list(device.replay("fakequant", tiny_checkpoint, tiny_images, start=32, options={"bits": (8, 8)})) == []
    assert not spy[-1].is_active and spy[-1].inference_times == []  # nothing left: the runtime never starts


def test_local_replay_fixed_batch_and_early_close(tiny_checkpoint, tiny_images, monkeypatch):
    class FixedBatch(NullRunner):
        def _input_spec(self):
            return [TensorSpec("pixels", np.dtype(np.float32), (4, 8, 8, 3))]  # e.g. MLPerf Tiny's fixed batch

    runner = FixedBatch()
    monkeypatch.setattr("devices.local.make_runner", lambda *a, **k: runner)
    got = list(_local().replay("null", tiny_checkpoint, tiny_images[:10], batch_size=100, warmup=0))
    assert [(b.first, len(b.logits)) for b in got] == [(0, 4), (4, 4), (8, 2)]  # padded to 4, real rows kept
    batches = _local().replay("null", tiny_checkpoint, tiny_images, batch_size=4, warmup=0)
    next(batches)
    assert runner.is_active
    batches.close()  # an interrupted consumer releases the runtime
    assert not runner.is_active


@pytest.mark.parametrize("kwargs, match", [
    ({"images": np.zeros((2, 8, 8, 3), np.float32)}, r"replay takes uint8 \(N, H, W, 3\) images"),
    ({"images": np.zeros((2, 3, 8, 8), np.uint8)}, r"replay takes uint8"),
    ({"batch_size": 0}, r"batch_size=0; pass a positive number"),
    ({"warmup": -1}, r"warmup=-1"),
    ({"start": 33}, r"start=33 is outside the 32 replayed images"),
    ({"runtime": "ort"}, r"unknown runtime 'ort'"),
    ({"runtime": "onnxrt"}, r"device 'local' does not offer runtime 'onnxrt' \(its inventory entry lists null\)"),
    ({"options": {"bogus": 1}}, r"runtime 'null' has no option bogus; it takes num_classes"),
])
def test_local_replay_refusals(tiny_checkpoint, tiny_images, kwargs, match):
    args = {"runtime": "null", "artifact": tiny_checkpoint, "images": tiny_images, **kwargs}
    with pytest.raises(QadtrError, match=match):
        _local(runtimes=["null"]).replay(args.pop("runtime"), args.pop("artifact"), args.pop("images"), **args)


def test_local_status_and_describe(tmp_path, monkeypatch):
    monkeypatch.setattr(rapl, "POWERCAP", tmp_path / "absent")
    rows = _local(power="auto").status()
    assert [(a.kind, a.name) for a in rows] == [("runtime", n) for n in list_runtimes()] + [("power", "rapl")]
    assert rows[-1].available is False and "no " in rows[-1].reason
    assert _local(runtimes=["null", "tensorrt"]).runtimes() == [n for n in ("null", "tensorrt") if probe(n) is None]
    assert _local(power="none").status()[-1].reason == "disabled in the inventory (power = \"none\")"
    assert _local(power="nvml").status()[-1].reason.startswith(("pynvml not installed", "NVML"))
    d = _local(runtimes=["onnxrt", "fakequant"]).describe()
    assert {"cpu", "os", "python", "cores", "machine", "runtimes"} <= set(d) and d["emulated"] is False
    assert list(d["runtimes"]) == ["onnxruntime", "torch", "brevitas"] and d["runtimes"]["brevitas"] == "0.13.4"


# -- RAPL --------------------------------------------------------------------------------------------------
def _zone(root: Path, name: str, label: str, energy: int, top: int) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{top}\n")
    return d / "energy_uj"


def test_rapl_sums_packages_with_wraparound(tmp_path):
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 9_000_000, 10_000_000)
    sub = _zone(tmp_path, "intel-rapl:0:0", "core", 5, 10_000_000)  # part of package-0: not counted again
    p1 = _zone(tmp_path, "intel-rapl:1", "package-1", 100, 10_000_000)
    _zone(tmp_path, "intel-rapl-mmio:0", "package-0", 0, 10)  # the MMIO copy of package-0: not counted
    meter = rapl.RaplMeter(tmp_path)
    assert meter.scope == "CPU package energy (all processes), RAPL package-0, package-1"
    meter.start()
    p0.write_text("500000\n")  # wrapped: 9.0 J -> 10.0 J (0) -> 0.5 J: 1.5 J
    p1.write_text("2000100\n")  # +2.0 J
    sub.write_text("999999\n")
    joules, seconds = meter.stop()
    assert joules == pytest.approx(3.5) and seconds >= 0
    assert rapl.delta_uj(10, 25, 100) == 15 and rapl.delta_uj(90, 5, 100) == 15
    with pytest.raises(RuntimeError, match=r"stop\(\) before start\(\)"):
        meter.stop()


def test_rapl_unavailable_reasons(tmp_path, monkeypatch):
    with pytest.raises(MeterUnavailable, match=r"no .*absent \(not Linux, a container"):
        rapl.RaplMeter(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MeterUnavailable, match=r"no intel-rapl:N package zone under"):
        rapl.RaplMeter(tmp_path / "empty")
    energy = _zone(tmp_path / "t", "intel-rapl:0", "package-0", 1, 10)
    energy.write_text("n/a\n")
    with pytest.raises(MeterUnavailable, match="does not hold an integer"):
        rapl.RaplMeter(tmp_path / "t")
    energy.write_text("1\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(p))
                        if p.name == "energy_uj" else real(p, *a, **k))
    with pytest.raises(MeterUnavailable, match=r"readable by root only \(Linux >= 5\.10.*sudo chmod a\+r"):
        rapl.RaplMeter(tmp_path / "t")
    with pytest.raises(QadtrError, match="unknown power meter 'watts'; known: rapl, tegrastats, ina, nvml"):
        open_meter("watts")


def test_local_energy_per_batch_from_rapl(tiny_checkpoint, tiny_images, tmp_path, monkeypatch):
    energy = _zone(tmp_path, "intel-rapl:0", "package-0", 0, 1 << 40)

    class Burner(NullRunner):
        def _infer(self, feed):  # each call "uses" 1 mJ of package energy
            energy.write_text(str(int(energy.read_text()) + 1000))
            return super()._infer(feed)

    monkeypatch.setattr(rapl, "POWERCAP", tmp_path)
    monkeypatch.setattr("devices.local.make_runner", lambda *a, **k: Burner())
    device = _local(power="auto")
    scope = "CPU package energy (all processes), RAPL package-0"
    assert device.status()[-1] == Availability("power", "rapl", True, scope)
    got = list(device.replay("null", tiny_checkpoint, tiny_images, batch_size=16, warmup=3))
    assert [b.energy_j for b in got] == [pytest.approx(1e-3)] * 2  # warm-up energy is not in any batch
