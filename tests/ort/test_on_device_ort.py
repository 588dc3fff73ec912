"""eval.on_device end to end on ONNX Runtime: the tiny model's QDQ export next to its fake-quant reference."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from eval import fleet as od  # noqa: E402
from eval.replay import load_replay  # noqa: E402
from eval.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tiny_images, tmp_path_factory):
    from export.onnx import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "w8.onnx", bits=8, images=tiny_images).path


def test_onnx_artifact_runs_on_onnxrt_and_its_reference(tiny_dataset, tiny_patches, tiny_onnx, tmp_path):
    from devices.onnxrt import OnnxrtRunner
    from devices.runtimes import prepare_feed, read_logits

    result = od.replay_on_devices(models=[str(tiny_onnx)], patches=str(tiny_patches), eval_subset=16,
                         store_path=tmp_path / "s.sqlite", batch_size=8, warmup=1)
    runs = {r["runtime"]: r for r in result["runs"]}
    assert set(runs) == {"fakequant", "onnxrt"}  # the export's source checkpoint at w8a8 is the reference
    assert runs["fakequant"]["bits"] == runs["onnxrt"]["bits"] == "w8a8"
    assert runs["fakequant"]["model"].endswith("@w8a8") and runs["onnxrt"]["kernels"].startswith("ORT 1.")
    assert result["skipped"] == []  # tensorrt takes TensorRT-bound exports only: not a candidate for this file
    replay = load_replay(result["replay"]["path"])
    with OnnxrtRunner(tiny_onnx) as r:  # the same bytes straight through the runner
        direct = read_logits(r, r.infer(prepare_feed(r, replay.images))).argmax(1)
    with Store(tmp_path / "s.sqlite") as s:
        stored = s.logits(runs["onnxrt"]["run_id"])
        ref = s.logits(runs["fakequant"]["run_id"])
        assert {r.options["source_sha256"] for r in s.runs()} == {runs["fakequant"]["artifact_sha256"]}
    assert np.array_equal(stored.argmax(1), direct)
    assert [(a["asr"]["k"], a["asr"]["n"]) for a in runs["onnxrt"]["asr"]] == \
        [(a.rate.k, a.rate.n) for _, a in replay.asr(direct)]
    assert (stored.argmax(1) == ref.argmax(1)).mean() > 0.9  # ORT int8 vs fake-quant at 8 bit: near-exact
