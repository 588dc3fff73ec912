"""eval.compare with ONNX Runtime on the tiny model: a faithful export agrees everywhere; an export with one
layer's weights tampered with disagrees, and the first divergent layer is exactly that layer's quantizer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from eval._divergence import first_divergence, layer_divergence  # noqa: E402
from export._common import deploy_model  # noqa: E402

LAYERS = ["quant_input", "relu", "layers.0.0.relu1", "layers.0.0.q_main", "layers.0.0.q_short", "layers.0.0.relu2",
          "pool_quant"]


def tamper(src, dst, conv: str = "/layers.0/layers.0.0/conv2/Conv"):
    """Copy an export (and its JSON) with conv2's integer weights negated: only layers.0.0.q_main onwards change."""
    from onnx import numpy_helper

    m = onnx.load(str(src))
    producer = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    name = next(n for n in m.graph.node if n.name == conv).input[1]
    while name not in inits:  # weight <- DequantizeLinear <- Clip <- int8 initializer
        name = producer[name].input[0]
    w = numpy_helper.to_array(inits[name])
    inits[name].CopyFrom(numpy_helper.from_array(np.clip(-w.astype(np.int16), -127, 127).astype(w.dtype), name))
    onnx.save(m, str(dst))
    shutil.copy(f"{src}.json", f"{dst}.json")
    return dst


@pytest.fixture(scope="module")
def w4(tiny_checkpoint, tiny_images, tmp_path_factory):
    from export.onnx import export_onnx

    out = tmp_path_factory.mktemp("cmp_onnx")
    path = export_onnx(tiny_checkpoint, out / "w4.onnx", bits=4, images=tiny_images).path
    return path, tamper(path, out / "w4_tampered.onnx")


def test_layer_divergence_pure():
    ref = {"a": np.zeros((2, 4), np.int8), "b": np.zeros((2, 3), np.int8), "c": np.zeros((2, 2), np.int8)}
    out = {k: v.copy() for k, v in ref.items()}
    out["b"][1, [0, 2]] = [2, -1]  # image 1: first differs at b (2 elements, max step 2), c too
    out["c"][1, 0] = 5
    out["c"][0, 1] = 1  # image 0: only c
    res = layer_divergence(["a", "b", "c"], ref, out, samples=[10, 11])
    assert [(r.sample, r.first_layer, r.differing, r.elements, r.max_step, r.layers_differing) for r in res] == \
        [(10, "c", 1, 2, 1, 1), (11, "b", 2, 3, 2, 2)]
    assert layer_divergence(["a"], ref, ref, samples=[0])[0].first_layer is None


def _host_semantics() -> str:
    from devices._host import fingerprint
    from devices.intexec import expected_semantics

    return expected_semantics("onnxrt", fingerprint())


def _ort_logits(path, images):
    from export.onnx import OUTPUT, ort_run

    return ort_run(onnx.load(str(path)).SerializeToString(), images, len(images), level="all")[OUTPUT]


def test_faithful_export_has_no_divergence(w4, tiny_checkpoint, tiny_images):
    """Single rounding (the simulation's arithmetic) leaves no integer of the faithful export off, on every host;
    this host's ORT is reproduced by its own semantics, and diverges exactly where that semantics departs."""
    net, _ = deploy_model(tiny_checkpoint, 4)
    single = first_divergence(net, "onnxrt", w4[0], images=tiny_images[:8], samples=list(range(8)), semantics="single")
    assert list(single.layers) == LAYERS and not single.skipped
    assert all(i.first_layer is None and i.layers_differing == 0 for i in single.images)
    host = _host_semantics()
    d = first_divergence(net, "onnxrt", w4[0], images=tiny_images[:8], samples=list(range(8)), semantics=host,
                         deployed=_ort_logits(w4[0], tiny_images[:8]))
    assert d.outputs_identical, f"ORT on this host is not {host}"
    if host == "single":
        assert d.images == single.images
    else:  # no VNNI: wherever it differs, the first divergent layer is a conv output (saturated pair sums)
        assert all(i.first_layer in (None, "relu", "layers.0.0.relu1", "layers.0.0.q_main") for i in d.images)
    if host == "single":  # ORT's own kernels with every activation exposed (fuses less; VNNI: nothing saturates)
        plain = first_divergence(net, "onnxrt", w4[0], images=tiny_images[:8], samples=list(range(8)))
        assert plain.outputs_identical and all(i.first_layer is None for i in plain.images)


def test_tampered_layer_is_found(w4, tiny_checkpoint, tiny_images):
    net, _ = deploy_model(tiny_checkpoint, 4)
    d = first_divergence(net, "onnxrt", w4[1], images=tiny_images[:8], samples=list(range(100, 108)), semantics="single",
                         deployed=None)
    assert [i.sample for i in d.images] == list(range(100, 108)) and d.outputs_identical is None
    for i in d.images:
        assert i.first_layer == "layers.0.0.q_main" and 0 < i.differing <= i.elements and i.max_step >= 1
    assert "layers.0.0.q_main: 8" in d.summary


def test_unsupported_runtime_is_skipped_with_reason(tiny_checkpoint, tiny_images):
    net, _ = deploy_model(tiny_checkpoint, 4)
    d = first_divergence(net, "tensorrt", "x.engine", images=tiny_images[:1], samples=[0])
    assert d.skipped.startswith("no intermediate outputs for runtime 'tensorrt'") and not d.images


# -- end to end through a result store ---------------------------------------------------------------------
def replay_into(store, runtime: str, artifact, replay_path, options: dict) -> None:
    """One complete run of `artifact` on `runtime` over the replay, written as eval.on_device would."""
    from devices._host import fingerprint
    from devices.runtimes import feed_format, make_runner, read_logits
    from eval.replay import load_replay
    from qadtr._config import sha256_file

    replay = load_replay(replay_path)
    sha = sha256_file(artifact if artifact.suffix else artifact / "model.pt")
    with make_runner(runtime, artifact, **({"bits": tuple(options["bits"])} if runtime == "fakequant" else {})) as r:
        run = store.open_run(device="local", runtime=runtime, artifact=str(artifact), artifact_sha256=sha,
                             replay=str(replay_path), replay_sha256=replay.sha256, samples=len(replay),
                             options=options, kernels="", device_info={"cpu": "test", "host": fingerprint()})
        fmt = feed_format(r)
        for first in range(0, len(replay), 16):
            logits = read_logits(r, r.infer(fmt.feed(replay.images[first:first + 16])))
            store.write_batch(run.run_id, first=first, logits=logits, seconds=r.last_inference_time)
        store.set_kernels(run.run_id, r.kernels)
    store.finish(run.run_id)


@pytest.mark.slow  # a replay, compare and report through the CLI: ~13 s
def test_compare_store_and_cli(w4, tiny_checkpoint, tiny_dataset, tiny_patches, tmp_path, capsys):
    from eval.compare import compare_store, main
    from eval.replay import make_replay
    from eval.store import Store

    replay_path = make_replay(tiny_patches, "cifar10", eval_subset=16, eval_seed=1, out=tmp_path)
    db = tmp_path / "results.sqlite"
    with Store(db) as store:
        replay_into(store, "fakequant", tiny_checkpoint, replay_path, {"bits": [4, 4]})
        replay_into(store, "onnxrt", w4[0], replay_path, {})
        replay_into(store, "onnxrt", w4[1], replay_path, {})
        replay_into(store, "fakequant", tiny_checkpoint, replay_path, {"bits": [2, 2]})  # another model: no partner
        sha = store.runs(runtime="fakequant")[0].artifact_sha256
        replay_into(store, "null", tiny_checkpoint, replay_path, {"bits": [4, 4], "source_sha256": sha})  # all zeros
    results, skipped = compare_store(db, divergence_images=4)
    assert skipped == [] and len(results) == 3
    null = next(r for r in results if r.out == "null")
    faithful, tampered = sorted((r for r in results if r.out == "onnxrt"), key=lambda r: r.info["artifact"])
    host = _host_semantics()
    for r in (faithful, tampered):  # each run is reproduced, every image bit for bit, by this host's semantics
        att = r.attribution
        assert att["explained_by"] == host and att["expected"] == host, att["summary"]
        assert att["summary"] == f"onnxrt = {host} ({att['candidates'][0]['models']}): {r.n} of {r.n} images bit-exact"
    if host == "single":  # VNNI: ORT rounds once, as the simulation does
        assert faithful and faithful.clean.rate.value == 1.0 and faithful.patched.rate.value == 1.0
        assert faithful.logits["max_abs_lsb"] < 0.5 and not faithful.disagreements  # bit-exact accumulators
        assert faithful.divergence["skipped"].startswith("nothing to rerun")
    else:  # the other candidate, single rounding, does not reproduce the saturated run
        other = next(c for c in faithful.attribution["candidates"] if c["semantics"] == "single")
        assert other["exact"] < other["images"]
    assert faithful.kernels["out"].startswith("ORT ") and "deploy_net w4a4" in faithful.kernels["ref"]
    assert "step of its int32 accumulator" in faithful.logits["lsb_source"] and faithful.info["bits"] == (4, 4)
    # the tiny model predicts the same class either way: no disagreement, but logits off by many LSBs, so the
    # samples with the largest deltas are rerun and every one diverges first at the tampered layer
    assert tampered.logits["max_abs_lsb"] > 1
    images = tampered.divergence["images"]
    first = {"layers.0.0.q_main"} if host == "single" else {"relu", "layers.0.0.relu1", "layers.0.0.q_main"}
    assert len(images) == 4 and all(i["first_layer"] in first for i in images)  # the tampered conv, or saturation
    assert tampered.divergence["outputs_identical"] and "integer executor" in tampered.divergence["method"]
    assert all(i["why"].startswith(("prediction", "attack", "logits differ by")) for i in images)
    assert not null and any("tie on the deployed side only" in r for r in null.reasons)  # zeros: all ties
    assert null.divergence["skipped"].startswith("no intermediate outputs for runtime 'null'")

    out = tmp_path / "cmp"
    assert main(["--store", str(db), "--out", str(out), "--divergence-images", "2"]) == 0
    text = capsys.readouterr().out
    assert ("PASSED onnxrt vs fakequant" in text or host != "single") and "FAILED null vs fakequant" in text
    assert f"reproduced by: onnxrt = {host}" in text and "report:" in text
    saved = json.loads((out / "compare.json").read_text())
    assert len(saved["comparisons"]) == 3 and "Tango" in saved["paired_ci"]
    page = (out / "report.html").read_text()
    assert "layers.0.0.q_main" in page and "ORT " in page
    assert saved["comparisons"][0]["attribution"]["candidates"] and saved["host"]["isa"] is not None
    assert main(["--store", str(db), "--out", str(out), "--strict", "--no-report"]) == 1
    assert "outside the gate" in capsys.readouterr().err
