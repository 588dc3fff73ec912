"""eval._exact_torch: a .tflite as a torch model whose logits are the integer executor's bit for bit, with
straight-through gradients; and `python -m eval.exact_attack`, the white-box patch on that model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ai_edge_litert")

from devices.intexec import IntExecRunner  # noqa: E402
from devices.runtimes import feed_format, read_logits  # noqa: E402
from eval._exact_torch import ExactTflite  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402
from qadtr.attacks import EOTConfig, apply_patch, rebuild, sample_placements  # noqa: E402
from qadtr.predict import to_tensor  # noqa: E402

TFLITE_SEMANTICS = ("double", "double-ruy", "xnnpack")  # every devices.intexec semantics of a .tflite


@pytest.fixture(scope="module")
def tflites(tiny_checkpoint, tmp_path_factory):
    """bits -> (w<b>.tflite of the tiny test_qnet (8x8 input), its deploy net), from build_tflite (no proofs)."""
    from export._common import deploy_model
    from export.tflite import build_tflite

    out, folder = {}, tmp_path_factory.mktemp("exact_torch")
    for b in (2, 4, 8):
        net, _ = deploy_model(tiny_checkpoint, b, b)
        (folder / f"w{b}.tflite").write_bytes(build_tflite(net, 8, 8).data)
        out[b] = (folder / f"w{b}.tflite", net.eval())
    return out


def executor_logits(path, semantics: str, images: np.ndarray) -> np.ndarray:
    """(N, K) logits of IntExecRunner on uint8 images, fed as every replay feeds them."""
    with IntExecRunner(path, semantics=semantics) as r:
        return read_logits(r, r.infer(feed_format(r).feed(images)))


def patched(images: np.ndarray, seed: int = 0):
    """(uint8 patched images from rebuild, the (3, 3, 3) patch, its placements) of a random patch at random places."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, (3, 3, 3)).astype(np.float32)
    placement = sample_placements(len(images), side=3, hw=(8, 8), eot=EOTConfig(), rng=rng)
    return rebuild(images, values, placement), values, placement


@pytest.mark.parametrize("semantics", TFLITE_SEMANTICS)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_logits_bit_identical_with_the_executor(tflites, tiny_images, bits, semantics):
    path, _ = tflites[bits]
    net = ExactTflite(path, semantics)
    adv, values, placement = patched(tiny_images)
    for images in (tiny_images, adv):
        got = net(to_tensor(images)).detach().numpy()
        assert got.dtype == np.float32 and np.array_equal(got, executor_logits(path, semantics, images))
    # the attack's own path: apply_patch on the clean tensor (what universal_patch differentiates)
    x = apply_patch(to_tensor(tiny_images), torch.from_numpy(values), placement)
    assert np.array_equal(net(x).detach().numpy(), executor_logits(path, semantics, adv))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gradients_reach_the_patch_finite_and_non_zero(tflites, tiny_images, bits):
    path, _ = tflites[bits]
    values = torch.from_numpy(patched(tiny_images)[1]).requires_grad_(True)
    placement = patched(tiny_images)[2]
    logits = ExactTflite(path, "double-ruy")(apply_patch(to_tensor(tiny_images), values, placement))
    torch.nn.functional.cross_entropy(logits, torch.full((len(logits),), 1)).backward()
    assert torch.isfinite(values.grad).all() and (values.grad != 0).float().mean() > 0.5


@pytest.mark.parametrize("bits", [4, 8])
def test_straight_through_gradient_is_the_fake_quant_one(tflites, tiny_images, bits):
    """Where rounding barely matters (4 and 8 bits), the STE gradient of the exact model points where the
    fake-quant net's does (Brevitas' STE over the same real-valued scales): a wrong per-channel scale, zero
    point or clamp in a surrogate turns it away (measured: median cosine 0.999+, minimum 0.99+)."""
    path, fq = tflites[bits]
    grads = []
    for model in (ExactTflite(path, "double-ruy"), fq):
        x = to_tensor(tiny_images).requires_grad_(True)
        model(x)[:, 1].sum().backward()
        grads.append(x.grad.flatten(1))
    cos = torch.nn.functional.cosine_similarity(*grads)  # (N,)
    assert cos.median() > 0.98 and cos.min() > 0.9


def test_surrogate_chain_tracks_the_integer_model(tflites, tiny_images):
    """The real-valued chain alone (no rounding) stays within a few LSB of the integer logits at 8 bits."""
    path, _ = tflites[8]
    exact = executor_logits(path, "double-ruy", tiny_images)
    approx = ExactTflite(path, "double-ruy", surrogate_only=True)(to_tensor(tiny_images)).detach().numpy()
    assert np.abs(approx - exact).max() < 0.02 * np.ptp(exact) and (approx.argmax(1) == exact.argmax(1)).all()


def test_refuses_what_it_cannot_run(tflites, tmp_path):
    path, _ = tflites[4]
    with pytest.raises(QadtrError, match="runs a .tflite under one of .*double-ruy"):
        ExactTflite(path, "single")
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(QadtrError, match="takes a .tflite"):
        ExactTflite(tmp_path / "m.onnx", "double")


def test_cli_makes_and_replays_the_patch_beside_a_fake_quant_one(tflites, tiny_patches, tiny_dataset, tmp_path):
    from eval.exact_attack import main
    from qadtr.attacks import load_patch

    path, _ = tflites[4]
    compare = tiny_patches / "w4a4_universal_t1.npz"  # size 0.1, target 1, EOT rotation 20 and scale 0.9-1.1
    out = tmp_path / "x"
    argv = ["--artifact", str(path), "--semantics", "double-ruy", "--runtimes", "intexec-double-ruy,intexec-xnnpack",
            "--size", "0.1", "--target", "1", "--steps", "2", "--batch-size", "8", "--max-angle", "20", "--scale",
            "0.9,1.1", "--eval-subset", "0", "--compare", str(compare), "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())["_data"]
    assert load_patch(out / "patch.npz").target == 1 and result["semantics"] == "double-ruy"
    for runtime, row in result["replays"].items():
        assert row["expected_semantics"] == runtime.removeprefix("intexec-")
        n = row["exact"]["asr"]["n"]
        assert n == 36 and row["compare"]["asr"]["n"] == n  # 40 test images, 4 of the target class
        assert row["exact_minus_compare"]["n"] == n
    assert main([*argv[:-1], str(tmp_path / "y"), "--size", "0.05"]) == 1  # --compare of another size


@pytest.mark.slow
def test_zoo_resnet20_w2a2_bit_identical(tmp_path):
    """The zoo's resnet20 (PAD and STRIDED_SLICE of the shortcuts, 9 ADDs) on 32x32 images, clean and patched."""
    from export._common import deploy_model
    from export.tflite import build_tflite

    net, _ = deploy_model(Path(__file__).resolve().parents[2] / "zoo" / "resnet20_w2a2", 2, 2)
    path = tmp_path / "w2a2.tflite"
    path.write_bytes(build_tflite(net, 32, 32).data)
    images = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    x = to_tensor(images).requires_grad_(True)
    logits = ExactTflite(path, "double-ruy")(x)
    assert np.array_equal(logits.detach().numpy(), executor_logits(path, "double-ruy", images))
    logits[:, 3].sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).float().mean() > 0.5
