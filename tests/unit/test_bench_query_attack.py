"""bench.query_attack: a tiny run measures every runtime's oracle and both attacks and writes them; a bad count
is one line before any export."""

from __future__ import annotations

import json

import pytest

from bench import query_attack

KEYS = {"argv", "created", "host", "checkpoint", "bits", "data", "indices", "target", "size", "target_asr", "rounds",
        "threads", "rows_per_call", "batch", "queries_per_s", "ratio_to_fakequant", "seconds_per_call", "query_attack",
        "whitebox", "seconds_ratio_query_to_whitebox"}


@pytest.mark.slow  # two exports with their proofs, then both attacks
def test_a_tiny_run_measures_every_runtime_and_both_attacks(tiny_checkpoint, tiny_dataset, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    runtimes = ["onnxrt", "litert-xnnpack", "fakequant"]
    argv = ["--checkpoint", str(tiny_checkpoint), "--bits", "8", "--runtimes", ",".join(runtimes), "--images", "8",
            "--budget", "6", "--steps", "3", "--rounds", "2", "--threads", "1", "--out", str(tmp_path)]
    assert query_attack.main(argv) == 0
    (path,) = tmp_path.glob("query_attack_*.json")
    res = json.loads(path.read_text())
    assert KEYS <= set(res) and len(res["indices"]) == 8 and res["host"]["cpu"]
    assert set(res["queries_per_s"]) == set(runtimes) == set(res["ratio_to_fakequant"])
    assert all(v > 0 for v in res["queries_per_s"].values()) and res["ratio_to_fakequant"]["fakequant"] == 1.0
    for name, v in res["queries_per_s"].items():
        assert res["ratio_to_fakequant"][name] == pytest.approx(v / res["queries_per_s"]["fakequant"])
    q, w = res["query_attack"], res["whitebox"]
    assert q["runtime"].startswith("litert") and q["budget_per_image"] == 6 and q["queries_spent"] <= 6 * 8
    assert q["reached"] == (q["seconds"] is not None) and w["reached"] == (w["steps"] is not None)
    assert [c["steps"] for c in w["checks"]][-1] <= 3 and 0 <= w["final_asr"]["asr"]["value"] <= 1
    assert q["curve"][-1]["queries_total"] == q["queries_spent"] and "timing" in q and "timing" in w


@pytest.mark.parametrize("flags, says", [
    (["--images", "0"], "--images 0: must be >= 1"),
    (["--budget", "0"], "--budget 0: must be >= 1"),
    (["--steps", "0"], "--steps 0: must be >= 1"),
    (["--rounds", "-1"], "--rounds -1: must be >= 1"),
    (["--target-asr", "1.5"], "--target-asr 1.5"),
    (["--runtimes", "onnxrt"], "add fakequant"),
    (["--runtimes", "fakequant,nope"], "nope"),
])
def test_a_bad_flag_is_one_line_before_any_export(flags, says, tmp_path, capsys):
    assert query_attack.main([*flags, "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())  # nothing exported, nothing written
