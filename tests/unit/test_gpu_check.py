"""bench.gpu_check: refused in one line where there is no GPU; its dry run on the CPU measures and writes everything."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the check runs for real")
def test_without_a_gpu_the_check_is_one_line_naming_the_dry_run(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: --device cuda: torch") and "--device cpu" in err[0] and err[1].startswith("FAILED")
    assert not list(tmp_path.iterdir())  # refused before any measurement


@pytest.mark.slow
def test_the_dry_run_measures_every_part_and_writes_its_results(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--steps", "1", "--cpu-steps", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("gpu_check_*.json")
    res = json.loads(path.read_text())
    assert set(res["train_steps_per_s"]) == {"w4a4", "float"} and res["gpu"] is None
    for row in [*res["train_steps_per_s"].values(), res["attack_steps_per_s"]]:
        assert row["cpu"] > 0 and row["ratio_to_cpu"] > 0
    assert res["torchrun"]["passed"] and "PASSED" in res["torchrun"]["last_line"]
    assert res["host"]["cpu"]  # the fingerprint of the machine it ran on
