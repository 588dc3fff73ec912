"""Power meters: tegrastats parsing on recorded Jetson output, INA2xx on a fake hwmon tree, NVML through a fake
pynvml, the zero-order-hold integration, idle baselines, and the reasons a meter is absent."""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

import pytest

from devices.power import MeterUnavailable, open_meter
from devices.power._meter import METERS, PowerMeter, integrate_zoh
from devices.power.hwmon_ina import InaMeter
from devices.power.nvml import NvmlMeter
from devices.power.tegrastats import TegrastatsMeter, parse_rails, pick_watts

FIXTURES = Path(__file__).with_name("fixtures")
RECORDED = dict(line.rstrip("\n").split("\t", 1) for line in (FIXTURES / "tegrastats.txt").read_text().splitlines()
                if line and not line.startswith("#"))


# -- tegrastats --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("label, rails, watts, what", [
    ("nano", {"POM_5V_IN": 1.022, "POM_5V_GPU": 0.0, "POM_5V_CPU": 0.204}, 1.022, "module input rail POM_5V_IN"),
    ("tx1", {"VDD_IN": 2.532, "VDD_CPU": 0.076, "VDD_GPU": 0.019}, 2.532, "module input rail VDD_IN"),
    ("tx2", {"VDD_SYS_GPU": 0.152, "VDD_SYS_SOC": 0.687, "VDD_4V0_WIFI": 0.0, "VDD_IN": 3.056, "VDD_SYS_CPU": 0.152,
             "VDD_SYS_DDR": 0.883}, 3.056, "module input rail VDD_IN"),
    ("agx-xavier", {"GPU": 0.0, "CPU": 0.311, "SOC": 0.932, "CV": 0.0, "VDDRQ": 0.621, "SYS5V": 1.482}, 3.346,
     "sum of rails GPU+CPU+SOC+CV+VDDRQ+SYS5V"),
    ("xavier-nx", {"VDD_IN": 4.067, "VDD_CPU_GPU_CV": 0.738, "VDD_SOC": 1.353}, 4.067, "module input rail VDD_IN"),
    ("orin-nx", {"VDD_IN": 5.299, "VDD_CPU_GPU_CV": 0.773, "VDD_SOC": 1.424}, 5.299, "module input rail VDD_IN"),
    ("agx-orin-r36", {"VDD_GPU_SOC": 3.205, "VDD_CPU_CV": 4.405, "VIN_SYS_5V0": 4.767}, 12.377,
     "sum of rails VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"),
    ("orin-nano-jp6", {"VDD_IN": 5.704, "VDD_CPU_GPU_CV": 0.831, "VDD_SOC": 1.624}, 5.704, "module input rail VDD_IN"),
    ("jp72-three-values", {"VDD_GPU_SOC": 4.385, "VDD_CPU_CV": 1.196, "VIN_SYS_5V0": 5.552}, 11.133,
     "sum of rails VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"),
])
def test_tegrastats_recorded_lines(label, rails, watts, what):
    got = parse_rails(RECORDED[label])
    assert got == pytest.approx(rails) and list(got) == list(rails)  # RAM, SWAP, IRAM, APE, clocks, temperatures: none
    w, said = pick_watts(got)
    assert w == pytest.approx(watts) and said.startswith(what)
    assert pick_watts(got, list(rails)[-1])[0] == pytest.approx(list(rails.values())[-1])


def test_tegrastats_parser_ignores_everything_else():
    assert parse_rails("RAM 2448/7772MB (lfb 5x4MB) SWAP 0/3886MB IRAM 0/252kB(lfb 252kB) VIC_FREQ 601 APE 150 "
                       "MTS fg 0% bg 0% GR3D_FREQ 0%@[305] cpu@48.5C/48.5C CPU [2%@1510,off]") == {}
    assert parse_rails("VDD_IN 6848mW VDD_IN@1560mW") == {"VDD_IN": 1.56}  # unit without average; '@' variant
    with pytest.raises(MeterUnavailable, match="reports no rail 'VDD_GPU'; it reports VDD_IN"):
        pick_watts({"VDD_IN": 1.0}, "VDD_GPU")


PLAYER = """import sys, time
lines = [l.split("\\t", 1)[1] for l in open(sys.argv[1]) if "\\t" in l and not l.startswith("#")]
interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000
while True:
    for line in lines:
        sys.stdout.write(line)
        sys.stdout.flush()
        time.sleep(interval)
"""


def _player(tmp_path: Path, lines: dict[str, str]) -> tuple[str, ...]:
    """A stand-in for /usr/bin/tegrastats printing `lines` over and over at its --interval."""
    (tmp_path / "player.py").write_text(PLAYER)
    (tmp_path / "lines.txt").write_text("".join(f"{k}\t{v}\n" for k, v in lines.items()))
    return (sys.executable, str(tmp_path / "player.py"), str(tmp_path / "lines.txt"))


def test_tegrastats_meter_integrates_the_input_rail(tmp_path):
    meter = TegrastatsMeter(interval_ms=10, command=_player(tmp_path, {"orin": RECORDED["orin-nano-jp6"]}))
    try:
        assert meter.scope.startswith("Jetson module input rail VDD_IN, tegrastats every 10 ms")
        meter.start()
        time.sleep(0.2)
        joules, seconds = meter.stop()
        assert joules == pytest.approx(5.704 * seconds, rel=1e-6)  # a constant 5704 mW
        assert meter.measure_idle(0.1) == pytest.approx(5.704, rel=1e-6)
        meter.start()
        time.sleep(0.05)
        assert meter.stop()[0] == pytest.approx(0.0, abs=1e-9)  # at idle: nothing above the baseline
    finally:
        meter.close()
    assert meter._proc.wait(timeout=5) is not None  # tegrastats is stopped with the meter


def test_tegrastats_unavailable(tmp_path, monkeypatch):
    with pytest.raises(MeterUnavailable, match=r"no tegrastats-not-here on PATH \(not a Jetson"):
        TegrastatsMeter(command=("tegrastats-not-here",))
    monkeypatch.setattr(TegrastatsMeter, "first_timeout", 0.5)
    silent = _player(tmp_path, {"x": "RAM 2448/7772MB SWAP 0/3886MB"})  # lines, but no rails
    with pytest.raises(MeterUnavailable, match="power meter 'tegrastats' gave no reading within 0.5 s"):
        TegrastatsMeter(interval_ms=10, command=silent)
    with pytest.raises(MeterUnavailable, match="gave no reading .*reports no rail 'VDD_X'"):
        TegrastatsMeter(interval_ms=10, rail="VDD_X", command=_player(tmp_path, {"a": RECORDED["nano"]}))


# -- zero-order-hold integration ---------------------------------------------------------------------------
def test_integrate_zoh():
    times, watts = [0.0, 1.0, 2.0], [1.0, 3.0, 5.0]
    assert integrate_zoh(times, watts, 0.0, t1=3.0) == pytest.approx(1 + 3 + 5)
    assert integrate_zoh(times, watts, 0.5, t1=1.5) == pytest.approx(0.5 * 1 + 0.5 * 3)
    assert integrate_zoh(times, watts, 1.2, t1=1.4) == pytest.approx(0.2 * 3)  # shorter than the sampling interval
    assert integrate_zoh(times, watts, -1.0, t1=0.0) == pytest.approx(1.0)  # before the first sample: the first holds
    with pytest.raises(ValueError, match="at least one sample"):
        integrate_zoh([], [], 0.0, t1=1.0)


class Fixed(PowerMeter):
    """A counter meter burning 2 W, for the baseline contract."""

    def _start(self):
        self.t0 = time.perf_counter()

    def _stop(self):
        seconds = time.perf_counter() - self.t0
        return 2.0 * seconds, seconds


def test_idle_baseline_is_subtracted():
    m = Fixed()
    assert m.measure_idle(0.02) == pytest.approx(2.0)
    m.start()
    time.sleep(0.01)
    joules, seconds = m.stop()
    assert joules == pytest.approx(0.0, abs=1e-9) and seconds > 0


# -- INA2xx through hwmon ----------------------------------------------------------------------------------
def _hwmon(root: Path, name: str, chip: str, **files: int) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(chip + "\n")
    for f, v in files.items():
        (d / f).write_text(f"{v}\n")
    return d


def test_ina_power1_input(tmp_path):
    _hwmon(tmp_path, "hwmon0", "coretemp", temp1_input=40000)
    d = _hwmon(tmp_path, "hwmon1", "ina219", power1_input=1_000_000)  # 1 W, in microwatts
    m = InaMeter(root=tmp_path, interval=0.002)
    try:
        assert m.scope.startswith("ina219 at hwmon1 (power1_input) every 2 ms")
        m.start()
        time.sleep(0.2)
        (d / "power1_input.new").write_text("3000000\n")  # 3 W from here on, changed at once as sysfs does (a
        os.replace(d / "power1_input.new", d / "power1_input")  # truncating write lets the 2 ms sampler read "")
        time.sleep(0.2)
        joules, seconds = m.stop()
    finally:
        m.close()
    assert joules == pytest.approx(0.2 * 1 + (seconds - 0.2) * 3, abs=0.06)


def test_ina_bus_voltage_times_current(tmp_path):
    _hwmon(tmp_path, "hwmon3", "ina226", in0_input=2, in1_input=5000, curr1_input=400)  # 5 V x 0.4 A; in0 = shunt
    m = InaMeter(root=tmp_path, interval=0.002)
    try:
        assert "in1_input x curr1_input" in m.scope and m._read_watts() == pytest.approx(2.0)
        m.start()
        time.sleep(0.05)
        joules, seconds = m.stop()
    finally:
        m.close()
    assert joules == pytest.approx(2.0 * seconds, rel=1e-6)


def test_ina_unavailable_reasons(tmp_path, monkeypatch):
    with pytest.raises(MeterUnavailable, match="no .*absent \\(not Linux"):
        InaMeter(root=tmp_path / "absent")
    _hwmon(tmp_path, "hwmon0", "coretemp")
    with pytest.raises(MeterUnavailable, match="no INA2xx hwmon device under .*dtoverlay=ina219"):
        InaMeter(root=tmp_path)
    _hwmon(tmp_path, "hwmon1", "ina260", power1_input=5)
    _hwmon(tmp_path, "hwmon2", "ina219")
    with pytest.raises(MeterUnavailable, match=r"several INA sensors \(hwmon1 \(ina260\), hwmon2 \(ina219\)\).*"
                                               r"device=\"hwmonN\""):
        InaMeter(root=tmp_path)
    with pytest.raises(MeterUnavailable, match="hwmon2 \\(ina219\\) has neither power1_input nor in1_input"):
        InaMeter(root=tmp_path, device="hwmon2")
    InaMeter(root=tmp_path, device="ina260").close()  # by chip name
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(p))
                        if p.name == "power1_input" else real(p, *a, **k))
    with pytest.raises(MeterUnavailable, match="power1_input is not readable by this user"):
        InaMeter(root=tmp_path, device="hwmon1")


# -- NVML --------------------------------------------------------------------------------------------------
class NVMLError(Exception):
    pass


def _pynvml(monkeypatch, *, energy: bool, init_fails: bool = False) -> types.SimpleNamespace:
    state = types.SimpleNamespace(mj=1_000, mw=150_000, shut=0)

    def total_energy(handle):
        if not energy:
            raise NVMLError("Not Supported")
        return state.mj

    def init():
        if init_fails:
            raise NVMLError("Driver Not Loaded")

    fake = types.ModuleType("pynvml")
    fake.NVMLError = NVMLError
    fake.nvmlInit = init
    fake.nvmlShutdown = lambda: setattr(state, "shut", state.shut + 1)
    fake.nvmlDeviceGetHandleByIndex = lambda i: "gpu0" if i == 0 else (_ for _ in ()).throw(NVMLError("Invalid"))
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA L4"
    fake.nvmlDeviceGetTotalEnergyConsumption = total_energy
    fake.nvmlDeviceGetPowerUsage = lambda h: state.mw
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return state


def test_nvml_energy_counter(monkeypatch):
    state = _pynvml(monkeypatch, energy=True)
    m = NvmlMeter()
    assert m.scope == "GPU board energy of NVIDIA L4 (NVML total-energy counter)"
    m.start()
    state.mj += 2_500  # 2.5 J
    joules, seconds = m.stop()
    m.close()
    assert joules == pytest.approx(2.5) and seconds >= 0 and state.shut == 1


def test_nvml_samples_power_before_volta(monkeypatch):
    _pynvml(monkeypatch, energy=False)
    m = NvmlMeter(interval=0.002)
    try:
        assert "NVML power readings every 2 ms" in m.scope
        m.start()
        time.sleep(0.05)
        joules, seconds = m.stop()
    finally:
        m.close()
    assert joules == pytest.approx(150.0 * seconds, rel=1e-6)


def test_nvml_unavailable_reasons(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with pytest.raises(MeterUnavailable, match=r"pynvml not installed: `pip install nvidia-ml-py`"):
        NvmlMeter()
    _pynvml(monkeypatch, energy=True, init_fails=True)
    with pytest.raises(MeterUnavailable, match=r"NVML cannot start \(Driver Not Loaded\): no NVIDIA driver"):
        NvmlMeter()
    _pynvml(monkeypatch, energy=True)
    with pytest.raises(MeterUnavailable, match="NVML has no GPU 3"):
        NvmlMeter(index=3)


def test_registry_opens_each_meter_by_name(tmp_path, monkeypatch):
    assert list(METERS) == ["rapl", "tegrastats", "ina", "nvml"]
    monkeypatch.setattr("devices.power.hwmon_ina.HWMON", tmp_path)
    _hwmon(tmp_path, "hwmon0", "ina219", power1_input=1)
    meter = open_meter("ina")
    assert isinstance(meter, InaMeter)
    meter.close()
