"""eval.on_device end to end on LiteRT (XNNPACK and builtin kernels) with the tiny model's full-integer TFLite."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from eval import fleet as od  # noqa: E402
from eval.replay import load_replay  # noqa: E402
from eval.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def tiny_tflite(tiny_checkpoint, tiny_images, tmp_path_factory):
    from export.tflite import export_tflite

    path = tmp_path_factory.mktemp("tflite") / "w8.tflite"
    export_tflite(tiny_checkpoint, path, bits=8, images=tiny_images)
    return path


def test_tflite_artifact_runs_on_both_kernel_sets(tiny_dataset, tiny_patches, tiny_tflite, tiny_checkpoint, tmp_path):
    from devices.litert import LiteRTRunner
    from devices.runtimes import prepare_feed, read_logits

    models = [str(tiny_tflite), f"{tiny_checkpoint}@w8a8"]  # the export's reference and the checkpoint: one run
    result = od.replay_on_devices(models=models, patches=str(tiny_patches), eval_subset=16, store_path=tmp_path / "s.sqlite",
                         batch_size=8, warmup=1)
    assert [r["runtime"] for r in result["runs"]] == ["fakequant", "litert-xnnpack", "litert-builtin"]
    replay = load_replay(result["replay"]["path"])
    with Store(tmp_path / "s.sqlite") as s:
        for run in result["runs"][1:]:
            kernels = run["runtime"].split("-")[1]
            with LiteRTRunner(tiny_tflite, kernels=kernels) as r:
                direct = read_logits(r, r.infer(prepare_feed(r, replay.images)))  # (M, K)
            assert np.array_equal(s.logits(run["run_id"]), direct)  # batched replay == one call, byte for byte
            assert run["bits"] == "w8a8"
            assert run["kernels"].startswith(f"{kernels} (ai-edge-litert ")  # the checked line: nodes in XNNPACK
            assert (" 0 of " in run["kernels"]) == (kernels == "builtin")  # builtin: no delegate node, checked
            assert [(a["asr"]["k"], a["asr"]["n"]) for a in run["asr"]] == \
                [(a.rate.k, a.rate.n) for _, a in replay.asr(direct.argmax(1))]
