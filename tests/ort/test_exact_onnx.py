"""eval._exact_onnx: a QDQ .onnx as a torch model whose logits are the integer executor's (and ONNX Runtime's)
bit for bit, with straight-through gradients; and `python -m eval.exact_attack` on a .onnx, replayed on ORT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from devices._host import fingerprint  # noqa: E402
from devices.intexec import IntExecRunner, expected_semantics  # noqa: E402
from devices.runtimes import feed_format, make_runner, read_logits  # noqa: E402
from eval._exact_attack import exact_model  # noqa: E402
from eval._exact_onnx import ExactOnnx  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402
from qadtr.attacks import EOTConfig, apply_patch, rebuild, sample_placements  # noqa: E402
from qadtr.predict import to_tensor  # noqa: E402

ONNX_SEMANTICS = ("single", "single-u8s8sat")  # the integer (fused, deployed) .onnx semantics of devices.intexec
STAT_PASSES = 30  # train-mode passes before PoolCatNet's export: its statistics-based ranges settle on the data
# the attacker matrix's committed export of zoo/resnet20_w2a2 (what eval/results/attacker/run.sh attacks)
ZOO_W2A2 = Path(__file__).resolve().parents[2] / "zoo" / "resnet20_w2a2"  # the committed checkpoint, exported here


@pytest.fixture(scope="module")
def zoo_onnx(tmp_path_factory) -> Path:
    """The zoo's resnet20 w2a2 as QDQ ONNX, exported (and proven) on 32 random images: a clean clone has no export."""
    from export.onnx import export_onnx

    out = tmp_path_factory.mktemp("zoo") / "w2a2.onnx"
    images = np.random.default_rng(5).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)  # (N, H, W, 3)
    export_onnx(ZOO_W2A2, out, bits=2, images=images)
    return out


@pytest.fixture(scope="module")
def onnxs(tiny_checkpoint, tmp_path_factory):
    """bits -> (w<b>.onnx of the tiny test_qnet (8x8 input), its deploy net), from export_qcdq (no proofs)."""
    from export._common import deploy_model
    from export.onnx import export_qcdq

    out, folder = {}, tmp_path_factory.mktemp("exact_onnx")
    for b in (2, 4, 8):
        net, _ = deploy_model(tiny_checkpoint, b, b)
        export_qcdq(net, folder / f"w{b}.onnx", to_tensor(np.zeros((1, 8, 8, 3), np.uint8)))
        out[b] = (folder / f"w{b}.onnx", net.eval())
    return out


@pytest.fixture(scope="module")
def mbv2(edge_checkpoints, tmp_path_factory):
    """(w8a8 .onnx of the tiny test_mbv2: depthwise convs, zero points 127 / 128, spread per-channel scales, its
    deploy net)."""
    from export._common import deploy_model
    from export.onnx import export_qcdq

    net, _ = deploy_model(edge_checkpoints["test_mbv2"], 8, 8)
    path = tmp_path_factory.mktemp("exact_mbv2") / "w8.onnx"
    export_qcdq(net, path, to_tensor(np.zeros((1, 8, 8, 3), np.uint8)))
    return path, net.eval()


def _act(*, signed: bool | None, bits: int, init: float = 1.0):
    """A QuantReLU (unsigned), a signed QuantIdentity, or with signed=None an asymmetric one (a non-zero zero
    point, from statistics)."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat, ShiftedUint8ActPerTensorFloat, Uint8ActPerTensorFloat

    if signed is None:
        return qnn.QuantIdentity(act_quant=ShiftedUint8ActPerTensorFloat, bit_width=bits, return_quant_tensor=True)
    return (qnn.QuantIdentity if signed else qnn.QuantReLU)(
        act_quant=Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat, bit_width=bits,
        scaling_impl_type="parameter", scaling_init=init, return_quant_tensor=True)


def _layer(cin: int, cout: int, k: int | None = None):
    """A 4-bit per-channel QuantConv2d (k given, padding k // 2) or QuantLinear, with Int32Bias."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

    kw = dict(bias=True, weight_quant=Int8WeightPerChannelFloat, weight_bit_width=4, bias_quant=Int32Bias,
              return_quant_tensor=False)
    return qnn.QuantConv2d(cin, cout, k, 1, k // 2, **kw) if k else qnn.QuantLinear(cin, cout, **kw)


class PoolCatNet(torch.nn.Module):
    """What the zoo lacks: MaxPool on the integers (a padded one too), a Concat of two branches at signed and
    unsigned scales requantized together, a hidden Gemm with an integer output (QGemm+Q), non-zero zero points
    into an unfused DequantizeLinear and into a Gemm; 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.q_in, self.stem = _act(signed=True, bits=8), _layer(3, 8, 3)
        self.r0 = _act(signed=False, bits=4, init=2.0)
        self.left, self.q_left = _layer(8, 4, 1), _act(signed=False, bits=4, init=2.0)
        self.right, self.q_right = _layer(8, 4, 3), _act(signed=True, bits=8)
        self.q_cat, self.mix, self.r1 = _act(signed=True, bits=8, init=3.0), _layer(8, 8, 3), _act(signed=None, bits=8)
        self.q_pool, self.fc1 = _act(signed=None, bits=8), _layer(8, 16)
        self.r_fc = _act(signed=False, bits=4, init=2.0)
        self.fc2 = _layer(16, 10)

    def forward(self, x):  # (B, 3, 8, 8) pixels in [0, 1] -> (B, 10)
        x = torch.nn.functional.max_pool2d(self.r0(self.stem(self.q_in(x))), 2)  # (B, 8, 4, 4)
        x = self.q_cat(torch.cat([self.q_left(self.left(x)).value, self.q_right(self.right(x)).value], 1))
        x = torch.nn.functional.max_pool2d(self.r1(self.mix(x)), 3, 2, 1)  # (B, 8, 2, 2)
        x = self.q_pool(torch.nn.functional.adaptive_avg_pool2d(x.value, 1).flatten(1))
        return self.fc2(self.r_fc(self.fc1(x)))


@pytest.fixture(scope="module")
def pool_cat(tiny_images, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """(PoolCatNet as a QDQ .onnx, the net: seeded, ranges from the images, biases drawn so their integers are
    non-zero)."""
    from export.onnx import export_qcdq

    torch.manual_seed(0)
    net = PoolCatNet().train()
    with torch.no_grad():
        for _ in range(STAT_PASSES):  # the asymmetric quantizers' ranges (zero points) from the data
            net(to_tensor(tiny_images))
        net.eval()
        for m in net.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("pool_cat") / "net.onnx"
    export_qcdq(net, path, to_tensor(tiny_images[:1]))
    return path, net


def runner_logits(runner, images: np.ndarray) -> np.ndarray:
    """(N, K) logits of an active runner on uint8 images, fed as every replay feeds them."""
    return read_logits(runner, runner.infer(feed_format(runner).feed(images)))


def executor_logits(path, semantics: str, images: np.ndarray) -> np.ndarray:
    with IntExecRunner(path, semantics=semantics) as r:
        return runner_logits(r, images)


def patched(images: np.ndarray, seed: int = 0):
    """(uint8 patched images from rebuild, the (3, 3, 3) patch, its placements) of a random patch at random places."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, (3, 3, 3)).astype(np.float32)
    placement = sample_placements(len(images), side=3, hw=images.shape[1:3], eot=EOTConfig(), rng=rng)
    return rebuild(images, values, placement), values, placement


@pytest.mark.parametrize("semantics", ONNX_SEMANTICS)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_logits_bit_identical_with_the_executor(onnxs, tiny_images, bits, semantics):
    path, _ = onnxs[bits]
    net = ExactOnnx(path, semantics)
    adv, values, placement = patched(tiny_images)
    for images in (tiny_images, adv):
        got = net(to_tensor(images)).detach().numpy()
        assert got.dtype == np.float32 and np.array_equal(got, executor_logits(path, semantics, images))
    # the attack's own path: apply_patch on the clean tensor (what universal_patch differentiates)
    x = apply_patch(to_tensor(tiny_images), torch.from_numpy(values), placement)
    assert np.array_equal(net(x).detach().numpy(), executor_logits(path, semantics, adv))


@pytest.mark.parametrize("bits", [2, 8])
def test_logits_bit_identical_with_onnx_runtime_under_the_hosts_semantics(onnxs, tiny_images, bits):
    """expected_semantics('onnxrt', this host) is what this host's ORT computes: the exact model under it is ORT."""
    path, _ = onnxs[bits]
    semantics = expected_semantics("onnxrt", fingerprint())
    adv = patched(tiny_images)[0]
    with make_runner("onnxrt", path) as ort:
        for images in (tiny_images, adv):
            got = ExactOnnx(path, semantics)(to_tensor(images)).detach().numpy()
            assert np.array_equal(got, runner_logits(ort, images))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gradients_reach_the_patch_finite_and_non_zero(onnxs, tiny_images, bits):
    path, _ = onnxs[bits]
    adv, values, placement = patched(tiny_images)
    values = torch.from_numpy(values).requires_grad_(True)
    logits = ExactOnnx(path, "single")(apply_patch(to_tensor(tiny_images), values, placement))
    torch.nn.functional.cross_entropy(logits, torch.full((len(logits),), 1)).backward()
    assert torch.isfinite(values.grad).all() and (values.grad != 0).float().mean() > 0.5


def ste_cosines(exact: ExactOnnx, fake_quant, images: np.ndarray) -> torch.Tensor:
    """(N,) cosine of d logit[1] / d input between the exact model and the fake-quant net."""
    grads = []
    for model in (exact, fake_quant):
        x = to_tensor(images).requires_grad_(True)
        y = model(x)
        getattr(y, "value", y)[:, 1].sum().backward()  # a Brevitas net may return a QuantTensor
        grads.append(x.grad.flatten(1))
    return torch.nn.functional.cosine_similarity(*grads)


@pytest.mark.parametrize("model", ["qnet-w4", "qnet-w8", "mbv2-w8"])
def test_straight_through_gradient_is_the_fake_quant_one(onnxs, mbv2, tiny_images, model):
    """Where rounding barely matters (4 and 8 bits), the STE gradient of the exact model points where the
    fake-quant net's does (Brevitas' STE over the same real-valued scales): a wrong per-channel scale, zero
    point or clamp in a surrogate turns it away (measured: median cosine 0.998+, minimum 0.98+)."""
    path, fq = mbv2 if model == "mbv2-w8" else onnxs[int(model[-1])]
    cos = ste_cosines(ExactOnnx(path, "single"), fq, tiny_images)
    assert cos.median() > 0.98 and cos.min() > 0.9


@pytest.mark.parametrize("model", ["qnet-w8", "mbv2-w8"])
def test_surrogate_chain_tracks_the_integer_model(onnxs, mbv2, tiny_images, model):
    """The real-valued chain alone (no rounding) stays within a few LSB of the integer logits at 8 bits
    (measured: correlation 0.99999, worst logit 0.4% of their range)."""
    path, _ = mbv2 if model == "mbv2-w8" else onnxs[8]
    exact = executor_logits(path, "single", tiny_images)
    approx = ExactOnnx(path, "single", surrogate_only=True)(to_tensor(tiny_images)).detach().numpy()
    assert np.corrcoef(approx.ravel(), exact.ravel())[0, 1] > 0.9999
    assert np.abs(approx - exact).max() < 0.02 * np.ptp(exact) and (approx.argmax(1) == exact.argmax(1)).all()


def with_cast(path: Path, out: Path) -> Path:
    """`path` with a float-to-float Cast before its normalisation's Div: an op the executor runs (the same
    logits) but that has no surrogate."""
    m = onnx.load(str(path))
    nodes = list(m.graph.node)
    i = next(i for i, n in enumerate(nodes) if n.op_type == "Div")
    cast = onnx.helper.make_node("Cast", [nodes[i].input[0]], ["cast_out"], to=onnx.TensorProto.FLOAT)
    nodes[i].input[0] = "cast_out"
    del m.graph.node[:]
    m.graph.node.extend([*nodes[:i], cast, *nodes[i:]])
    onnx.save(m, str(out))
    return out


def test_refuses_what_it_cannot_run(onnxs, tmp_path):
    path, _ = onnxs[4]
    for semantics in ("double-ruy", "float-mlas", "nope"):
        with pytest.raises(QadtrError, match="runs a .onnx under one of single, single-u8s8sat"):
            ExactOnnx(path, semantics)
    (tmp_path / "m.tflite").write_bytes(b"")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(QadtrError, match="takes an existing .onnx"):
        ExactOnnx(tmp_path / "m.tflite", "single")
    with pytest.raises(QadtrError, match="not a readable ONNX model"):
        ExactOnnx(tmp_path / "bad.onnx", "single")
    cast = with_cast(path, tmp_path / "cast.onnx")
    assert np.array_equal(*(executor_logits(p, "single", np.zeros((2, 8, 8, 3), np.uint8)) for p in (path, cast)))
    with pytest.raises(QadtrError, match=r"without a torch surrogate \['Cast'\].*SURROGATES"):
        ExactOnnx(cast, "single")
    with pytest.raises(QadtrError, match="takes a .tflite .* or a .onnx"):
        exact_model(tmp_path / "m.pt", "single")


def test_exact_model_picks_the_class_by_suffix(onnxs):
    assert isinstance(exact_model(onnxs[2][0], "single"), ExactOnnx)
    with pytest.raises(QadtrError, match="runs a .tflite under one of"):  # a .tflite goes to ExactTflite
        exact_model(onnxs[2][0].with_suffix(".tflite"), "single")


def test_cli_makes_and_replays_the_patch_on_ort_beside_a_fake_quant_one(onnxs, tiny_patches, tiny_dataset, tmp_path):
    from eval.exact_attack import main
    from qadtr.attacks import load_patch

    path, _ = onnxs[4]
    compare = tiny_patches / "w4a4_universal_t1.npz"  # size 0.1, target 1, EOT rotation 20 and scale 0.9-1.1
    out = tmp_path / "x"
    argv = ["--artifact", str(path), "--runtimes", "onnxrt,intexec-single-u8s8sat", "--size", "0.1", "--target",
            "1", "--steps", "2", "--batch-size", "8", "--max-angle", "20", "--scale", "0.9,1.1", "--eval-subset", "0",
            "--compare", str(compare), "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())["_data"]
    host = expected_semantics("onnxrt", fingerprint())
    assert load_patch(out / "patch.npz").target == 1 and result["semantics"] == host  # the first runtime's default
    assert result["replays"]["onnxrt"]["expected_semantics"] == host
    assert result["replays"]["intexec-single-u8s8sat"]["expected_semantics"] == "single-u8s8sat"
    for row in result["replays"].values():
        n = row["exact"]["asr"]["n"]
        assert n == 36 and row["compare"]["asr"]["n"] == n  # 40 test images, 4 of the target class
        assert row["exact_minus_compare"]["n"] == n
    assert main([*argv[:-1], str(tmp_path / "y"), "--semantics", "double-ruy"]) == 1  # a .tflite semantics


@pytest.mark.parametrize("semantics", ONNX_SEMANTICS)
def test_zoo_resnet20_w2a2_bit_identical(zoo_onnx, semantics):
    """The committed zoo export (resnet20 w2a2: the shortcuts' Slice and Pad, 9 QLinearAdds, the 2-bit Clips,
    QGemm logits) on 32x32 images, with gradients through every block; its real-valued chain tracks the integers
    even at 2 bits (measured: correlation 0.96+, 7 or 8 of 8 argmax; without the Clips' clamps -0.17, none)."""
    images = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    x = to_tensor(images).requires_grad_(True)
    logits = ExactOnnx(zoo_onnx, semantics)(x)
    exact = executor_logits(zoo_onnx, semantics, images)
    assert np.array_equal(logits.detach().numpy(), exact)
    logits[:, 3].sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).float().mean() > 0.5
    approx = ExactOnnx(zoo_onnx, semantics, surrogate_only=True)(to_tensor(images)).detach().numpy()
    assert np.corrcoef(approx.ravel(), exact.ravel())[0, 1] > 0.9 and (approx.argmax(1) == exact.argmax(1)).mean() > 0.7


@pytest.mark.parametrize("semantics", ONNX_SEMANTICS)
def test_pooling_concat_and_a_hidden_integer_gemm(pool_cat, tiny_images, semantics):
    """Every surrogate kind the zoo does not use: bit-exact values, gradients, the chain tracking the integers and
    the STE gradient the fake-quant one (measured: correlation 0.993; cosine median 0.9997, minimum 0.906)."""
    from eval._exact_onnx import FUSED

    path, fq = pool_cat
    net = ExactOnnx(path, semantics)
    kinds = {FUSED[grp.kind] if grp is not None else n.op_type for n, grp in net._steps}
    assert {"MaxPool", "Concat", "QGemm+Q", "QGemm", "QLinearConv"} <= kinds
    zero_points = [int(net.graph._qparams(grp.x)[1]) for _, grp in net._steps if grp is not None and grp.kind != "add"]
    assert any(zero_points)
    adv = patched(tiny_images)[0]
    x = to_tensor(adv).requires_grad_(True)
    logits = net(x)
    assert np.array_equal(logits.detach().numpy(), executor_logits(path, semantics, adv))
    logits[:, 3].sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).float().mean() > 0.5
    approx = ExactOnnx(path, semantics, surrogate_only=True)(to_tensor(adv)).detach().numpy()
    assert np.corrcoef(approx.ravel(), logits.detach().numpy().ravel())[0, 1] > 0.98
    cos = ste_cosines(net, fq, tiny_images)
    assert cos.median() > 0.98 and cos.min() > 0.8
