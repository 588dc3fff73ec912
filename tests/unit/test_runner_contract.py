"""One contract every registered runtime's runner must pass (P12), on the tiny checkpoint's artifacts.

A runtime that can't run here is skipped with `probe`'s reason, so a new registry row is covered
without writing a test, and the same file runs on a board that has TensorRT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devices import Runner, RunnerError, feed_format, list_runtimes, make_runner, probe, read_logits

BITS = 8
OPTIONS = {"fakequant": {"bits": (BITS, BITS)}, "onnxrt": {"intra_op_threads": 1},
           "litert-xnnpack": {"num_threads": 1}, "litert-builtin": {"num_threads": 1}, "litert-ref": {"num_threads": 1}}


@pytest.fixture(scope="module")
def artifact_for(tiny_checkpoint, tiny_images, tmp_path_factory):
    """runtime -> its artifact of the tiny checkpoint at w8a8, built on first use (fast paths, no proofs)."""
    out, made = tmp_path_factory.mktemp("contract"), {}

    def build(name: str) -> Path:
        if name in made:
            return made[name]
        from export._common import deploy_model
        from qadtr.predict import to_tensor

        if name.startswith("intexec-"):  # the executor runs the artifact of the runtime it models
            from devices.runtimes import get_runtime

            path = build("onnxrt" if get_runtime(name).artifacts == (".onnx",) else "litert-xnnpack")
        elif name in ("fakequant", "null"):
            path = tiny_checkpoint
        elif name == "onnxrt":
            from export.onnx import export_qcdq

            path = out / "w8.onnx"
            export_qcdq(deploy_model(tiny_checkpoint, BITS)[0], path, to_tensor(tiny_images[:1]))
        elif name.startswith("litert-"):
            from export.tflite import build_tflite

            path = out / "w8.tflite"
            path.write_bytes(build_tflite(deploy_model(tiny_checkpoint, BITS)[0], 8, 8).data)
        elif name == "tensorrt":  # a TensorRT-bound ONNX, built into an engine by the runner on the GPU
            import onnx

            from export.onnx import export_qcdq
            from export.trt import make_trt_bound

            export_qcdq(deploy_model(tiny_checkpoint, BITS)[0], out / "q.onnx", to_tensor(tiny_images[:1]))
            path = out / "trt.onnx"
            onnx.save(make_trt_bound(onnx.load(str(out / "q.onnx")))[0], str(path))
        else:
            pytest.fail(f"no tiny artifact recipe for runtime {name!r}: add one to this fixture")
        made[name] = path
        return path

    return build


def _available(name: str) -> None:
    reason = probe(name)
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


@pytest.mark.parametrize("name", list_runtimes())
def test_runner_contract(name, artifact_for, tiny_images):
    _available(name)
    runner = make_runner(name, artifact_for(name), **OPTIONS.get(name, {}))
    assert isinstance(runner, Runner) and not runner.is_active and runner.last_inference_time is None
    with pytest.raises(RunnerError, match=r"infer\(\) before activate\(\)"):
        runner.infer({})
    with runner:
        assert runner.is_active and runner.kernels and "not activated" not in runner.kernels
        fmt = feed_format(runner)
        for b in (1, 5):  # dynamic batch: every exported artifact takes any batch
            out = runner.infer(fmt.feed(tiny_images[:b]))
            assert isinstance(out, dict) and out and all(isinstance(v, np.ndarray) for v in out.values())
            logits = read_logits(runner, out)
            assert logits.shape == (b, 10) and logits.dtype == np.float32 and np.isfinite(logits).all()
            assert runner.last_inference_time > 0 and runner.last_inference_time == runner.inference_times[-1]
        assert len(runner.inference_times) == 2
        ((key, x),) = fmt.feed(tiny_images[:2]).items()
        channel_axis = 1 if fmt.layout == "NCHW" else 3
        bad_dtype = np.float64 if x.dtype == np.float32 else np.int16
        for feed, match in [({key + "_": x}, r"do not match the model's"),
                            ({key: x, "extra": x}, r"do not match the model's"),
                            ({key: x.astype(bad_dtype)}, rf"input '{key}' has dtype {np.dtype(bad_dtype)}"),
                            ({key: np.take(x, [0, 1], axis=channel_axis)}, rf"input '{key}' has shape"),
                            ({key: x[0]}, r"has shape"),
                            ({key: x.tolist()}, r"is a list, expected a numpy array")]:
            with pytest.raises(RunnerError, match=match):
                runner.infer(feed)
        assert len(runner.inference_times) == 2  # refused feeds never reach the runtime
    assert not runner.is_active
    runner.deactivate()  # idempotent
    with pytest.raises(RunnerError, match="before activate"):
        runner.infer({key: x})


# Max |logit - fakequant logit| at w8a8 on the 32 tiny images, for what has no exact model on this host (TensorRT,
# LiteRT builtin off x86) and for the executor itself (numpy: the same on every host). Measured: executor "single"
# / "xnnpack" 1e-7 / 2e-5 (the int16 output's rounding), LiteRT builtin 2e-3 (its double rounding flips an
# activation step here and there, ../shared/NOTES.md), "single-u8s8sat" 0.035 (the stem's 8-bit pairs saturate).
# A feed slip costs far more: the same images with H and W swapped move the logits by 0.06, a missing /255 by
# much more.
MAX_DIFF = {"tensorrt": 1e-4, "litert-builtin": 1e-2, "intexec-single": 1e-4, "intexec-xnnpack": 1e-4,
            "intexec-double": 1e-2, "intexec-double-ruy": 1e-2, "intexec-single-u8s8sat": 0.1}


def _executor_logits(artifact: Path, semantics: str, images: np.ndarray) -> np.ndarray:
    """The executor's logits on the canonical feed (qadtr.predict.to_tensor), built without feed_format."""
    from devices.intexec import SEMANTICS, load_graph
    from qadtr.predict import to_tensor

    x = to_tensor(images).numpy()  # (B, 3, H, W) float32 = pixel / 255
    if artifact.suffix == ".tflite":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (B, H, W, 3)
    graph = load_graph(artifact)
    return graph.run(x, SEMANTICS[semantics].graph_name)[0][graph.output_names[0]]


@pytest.mark.parametrize("name", [n for n in list_runtimes() if n not in ("fakequant", "null")])
def test_same_feed_same_logits(name, artifact_for, tiny_images):
    """Every runtime gets the same bytes as the reference. Where the executor models what the runtime computes on
    this host (devices.intexec.expected_semantics: e.g. ORT with or without VNNI), its logits must be identical to
    that model's on the canonical feed; elsewhere they must be close to fake-quant's."""
    from devices._host import fingerprint
    from devices.intexec import expected_semantics

    _available(name)
    logits = {}
    for runtime in ("fakequant", name):
        with make_runner(runtime, artifact_for(runtime), **OPTIONS.get(runtime, {})) as r:
            logits[runtime] = read_logits(r, r.infer(feed_format(r).feed(tiny_images)))  # (32, 10)
    semantics = expected_semantics(name, fingerprint())
    if semantics is not None:
        model = _executor_logits(artifact_for(name), semantics, tiny_images)
        np.testing.assert_array_equal(logits[name], model, err_msg=f"{name} on this host is not {semantics}")
    else:
        diff = np.abs(logits["fakequant"] - logits[name]).max()
        assert diff <= MAX_DIFF[name], f"{name} logits differ from fakequant's by up to {diff:.3g}"
