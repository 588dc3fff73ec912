"""qadtr.progress: a redrawn bar on a terminal, whole lines (start, per 10%, every minute, end) in a log."""

from __future__ import annotations

import io
import json

import pytest
from tqdm import tqdm

import qadtr.progress as qp
from qadtr.progress import LogLines, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_per_ten_percent():
    log = io.StringIO()
    for _ in progress(range(1000), desc="eval w4a4", unit="img", file=log):
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert len(lines) == 11  # 0%, 10%, ..., 100%: not one line per update
    assert lines[0].startswith("eval w4a4:   0% 0/1000") and lines[-1].startswith("eval w4a4: 100% 1000/1000")
    assert [int(line.split("%")[0].split()[-1]) for line in lines] == list(range(0, 101, 10))
    assert "\u2588" not in text  # no bar glyphs in a log


def test_a_terminal_gets_the_redrawn_bar():
    term = _Terminal()
    bar = progress(total=5, desc="qat", file=term)
    assert type(bar) is tqdm
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert "\r" in term.getvalue()


def test_disabled_writes_nothing():
    log = io.StringIO()
    for _ in progress(range(50), desc="quiet", enabled=False, file=log):
        pass
    assert log.getvalue() == ""


def test_resumed_count_postfix_and_write_in_a_log():
    log = io.StringIO()
    bar = progress(total=20, initial=10, desc="qat", unit="step", file=log)
    for _ in range(10):
        bar.update(1)
        bar.set_postfix(loss="0.123", refresh=False)
    bar.write("epoch 1/1: w4a4 88.00%", file=log)
    bar.close()
    bar.close()  # a second close adds nothing
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("qat:  50% 10/20")  # the resumed start
    assert lines[-2].startswith("qat: 100% 20/20") and "loss=0.123" in lines[-2]
    assert lines[-1] == "epoch 1/1: w4a4 88.00%"
    assert len(lines) == 7  # 50, 60, 70, 80, 90, 100% and the epoch line


def test_a_slow_step_still_logs_every_minute(monkeypatch):
    """A loop without a total (or a 10% that takes long) logs at least once per LOG_EVERY_S."""
    now = [1000.0]
    monkeypatch.setattr(qp.time, "monotonic", lambda: now[0])
    log = io.StringIO()
    bar = progress(iter(range(10)), desc="download", unit="B", file=log)  # no length: no percentages
    assert isinstance(bar, LogLines)
    for _ in bar:
        now[0] += 30.0  # two steps per minute
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("download: 0 ") and "%" not in log.getvalue()
    assert lines[-1].startswith("download: 10 ")
    assert 5 <= len(lines) <= 7  # the start, one a minute over 5 minutes, the end


def test_cli_progress_reaches_a_log(tiny_dataset, tiny_checkpoint, tmp_path, capsys):
    """`qadtr.evaluate` (4.5 silent minutes on the zoo before) logs its progress when stderr is not a
    terminal, and ends with what it wrote."""
    from qadtr.evaluate import main

    out = tmp_path / "acc.json"
    assert main([str(tiny_checkpoint), "--json", str(out)]) == 0
    cap = capsys.readouterr()
    assert "eval w4a4 deploy: 100%" in cap.err and "\r" not in cap.err
    assert f"wrote {out}" in cap.out.splitlines()[-2] and cap.out.splitlines()[-1].startswith("PASSED |")
    assert json.loads(out.read_text())["deploy"]["w4a4"]["n"] > 0


@pytest.mark.parametrize("module", ["export.onnx", "export.tflite", "export.trt"])
def test_export_default_output_is_not_beside_the_checkpoint(module, tiny_checkpoint, tmp_path):
    """No default output inside zoo/ or the source tree: an exporter without --out writes to the working
    directory, named after the architecture and bits."""
    from export._common import default_out

    suffix = {"export.onnx": ".onnx", "export.tflite": ".tflite", "export.trt": "_trt"}[module]
    out = default_out(tiny_checkpoint, 4, suffix=suffix)
    assert out.parent == type(out)(".") and out.name == f"test_qnet_w4a4{suffix}"
    assert default_out(tiny_checkpoint, 4, suffix=".tflite", act_bits=8).name == "test_qnet_w4a8.tflite"


def test_stage_lines_reach_a_person_running_a_command_only(capsys, monkeypatch):
    """stage() is silent in library use and shows one stderr line per stage under a CLI (run_cli)."""
    import logging

    from qadtr._cli import run_cli

    monkeypatch.setattr(qp.STAGES, "handlers", [])  # as in a fresh process that ran no CLI
    monkeypatch.setattr(qp.STAGES, "level", logging.NOTSET)
    qp.stage("export.onnx: proving on 5 images")
    assert "proving" not in capsys.readouterr().err
    assert run_cli("t", lambda: qp.stage("export.onnx: proving on 5 images"), []) == 0
    assert run_cli("t", lambda: qp.stage("second"), []) == 0  # one handler, however many CLIs ran
    err = capsys.readouterr().err
    assert err.splitlines() == ["export.onnx: proving on 5 images", "second"]
