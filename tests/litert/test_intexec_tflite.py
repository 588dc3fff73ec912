"""devices._intexec_tflite: numpy integer replay of export.tflite graphs, bit for bit against LiteRT's kernels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from devices import _intexec_tflite as E  # noqa: E402
from devices._runner import RunnerError  # noqa: E402

I32_MIN, I32_MAX = -(2 ** 31), 2 ** 31 - 1
RESOLVERS = {"ref": "BUILTIN_REF", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "xnnpack": "AUTO"}


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    """bits -> .tflite bytes of the tiny test_qnet (8x8 input), straight from build_tflite (no proof run)."""
    from export._common import deploy_model
    from export.tflite import build_tflite

    out = {}
    for b in (2, 4, 8):
        net, _ = deploy_model(tiny_checkpoint, b, b)
        out[b] = build_tflite(net, 8, 8).data
    return out


@pytest.fixture(scope="module")
def pixels(tiny_images):
    return tiny_images.astype(np.float32) / 255  # (32, 8, 8, 3) NHWC in [0, 1], as LiteRT takes them


def litert_tensors(data: bytes, x: np.ndarray, kernels: str) -> dict[str, np.ndarray]:
    """Every readable non-constant tensor after one LiteRT run (XNNPACK: all made graph outputs)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from export.tflite import with_outputs

    if kernels == "xnnpack":  # XNNPACK materialises partition outputs only
        g = E.TfliteIntGraph(data)
        data = with_outputs(data, [t.name for t in g.tensors if t.quantized and t.data is None])
    it = Interpreter(model_content=data, experimental_op_resolver_type=getattr(OpResolverType, RESOLVERS[kernels]),
                     experimental_preserve_all_tensors=kernels != "xnnpack", num_threads=1)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, x.shape)
    it.allocate_tensors()
    it.set_tensor(inp, x)
    it.invoke()
    details = it.get_output_details() if kernels == "xnnpack" else it.get_tensor_details()
    return {d["name"]: it.get_tensor(d["index"]).copy() for d in details if d["name"]}


def mismatches(data: bytes, x: np.ndarray, semantics: str, kernels: str) -> tuple[dict[str, int], int]:
    """({tensor name: elements that differ}, tensors compared) over every quantized tensor and output."""
    outs, ints = E.TfliteIntGraph(data).run(x, semantics, keep_ints=True)
    got, want = {**ints, **outs}, litert_tensors(data, x, kernels)
    common = [n for n in got if n in want]
    return {n: int((got[n] != want[n]).sum()) for n in common if (got[n] != want[n]).any()}, len(common)


# -- bit-exactness against LiteRT ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_double_bit_exact_with_builtin_ref(models, pixels, bits):
    off, compared = mismatches(models[bits], pixels, "double", "ref")
    assert off == {} and compared == len(E.TfliteIntGraph(models[bits]).run(pixels, keep_ints=True)[1]) + 1


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_single_bit_exact_with_xnnpack(models, pixels, bits):
    off, compared = mismatches(models[bits], pixels, "single", "xnnpack")
    assert off == {} and compared >= 8  # every quantized activation and the logits were readable


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_builtin_optimized_is_double_but_ruy_conv_rounding(models, pixels, bits):
    """BUILTIN_WITHOUT_DEFAULT_DELEGATES differs from the reference kernels on x86: CONV_2D goes through
    ruy, whose right shift rounds negative halves up. BUILTIN_X86 models that and is bit-exact; "double"
    departs only where BUILTIN_X86 does (on these graphs; resnet20 w8a8 also hits a rare ADD difference)."""
    off_x86, _ = mismatches(models[bits], pixels, E.BUILTIN_X86, "builtin")
    assert off_x86 == {}
    off_double, _ = mismatches(models[bits], pixels, "double", "builtin")
    g = E.TfliteIntGraph(models[bits])
    a, b = g.run(pixels, "double", keep_ints=True)[1], g.run(pixels, E.BUILTIN_X86, keep_ints=True)[1]
    assert set(off_double) - {"logits"} <= {n for n in a if (a[n] != b[n]).any()}


def test_api_names_and_dtypes(models, pixels):
    g = E.TfliteIntGraph(models[4])
    assert g.input_name == "pixels" and g.output_names == ["logits"]
    outs, ints = g.run(pixels, "single")
    assert ints == {} and outs["logits"].dtype == np.float32 and outs["logits"].shape == (32, 10)
    _, ints = g.run(pixels[:2], keep_ints=True)
    assert {"quant_input", "relu", "pool_quant", "logits/int16"} <= set(ints)
    assert {v.dtype for v in ints.values()} <= {np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32)}


def test_errors(models, pixels):
    from ai_edge_litert import schema_py_generated as S
    import flatbuffers

    g = E.TfliteIntGraph(models[2])
    with pytest.raises(RunnerError, match="semantics"):
        g.run(pixels, "triple")
    with pytest.raises(RunnerError, match="dtype"):
        g.run(pixels.astype(np.float64))
    m = S.ModelT.InitFromObj(S.Model.GetRootAsModel(models[2], 0))
    for oc in m.operatorCodes:
        if oc.builtinCode == S.BuiltinOperator.MEAN:
            oc.builtinCode = oc.deprecatedBuiltinCode = S.BuiltinOperator.TANH
    b = flatbuffers.Builder(1 << 16)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    with pytest.raises(RunnerError, match="TANH .*LiteRTRunner"):
        E.TfliteIntGraph(bytes(b.Output()))


# -- rounding primitives, against hand-computed values -------------------------------------------------------
def test_srdhm():
    assert E.srdhm(I32_MIN, I32_MIN) == I32_MAX  # the one overflow saturates
    assert E.srdhm(1 << 30, 1 << 30) == 1 << 29  # 2^60 * 2 / 2^32
    # gemmlowp's nudge is 2^30 for ab >= 0 and 1 - 2^30 below, then C++ '/' truncates: halves go up
    assert E.srdhm(3, 1 << 30) == 2 and E.srdhm(-3, 1 << 30) == -1  # 1.5 -> 2, -1.5 -> -1
    assert E.srdhm(1, 1 << 30) == 1 and E.srdhm(-1, 1 << 30) == 0  # 0.5 -> 1, -0.5 -> 0
    assert E.srdhm(-5, 1 << 30) == -2 and E.srdhm(-7, 1 << 30) == -3  # -2.5 -> -2, -3.5 -> -3
    assert E.srdhm(I32_MAX, I32_MAX) == I32_MAX - 1  # (2^31 - 1)^2 * 2 / 2^32, rounded


def test_rounding_divide_by_pot():
    assert list(E.rdbpot([5, -5, 6, -6, 7, -7], 1)) == [3, -3, 3, -3, 4, -4]  # halves away from zero
    assert list(E.rdbpot([-12, -10, 10, 12], 3)) == [-2, -1, 1, 2]  # -1.5 -> -2, -1.25 -> -1
    assert E.rdbpot(-7, 0) == -7
    assert list(E.rdbpot_half_up([5, -5, -12, -10], [1, 1, 3, 3])) == [3, -2, -1, -1]  # ruy: halves up


def test_quantize_multiplier_and_mbqm():
    assert E.quantize_multiplier(0.5) == (1 << 30, 0)
    assert E.quantize_multiplier(1.0) == (1 << 30, 1)
    assert E.quantize_multiplier(0.0) == (0, 0)
    assert E.quantize_multiplier(1 - 2 ** -40) == (1 << 30, 1)  # frac rounds up to 1.0: halved, shift + 1
    assert E.quantize_multiplier(2.0 ** -40) == (0, 0)  # below the shift range: flushed
    q, s = E.quantize_multiplier(0.25)
    assert (q, s) == (1 << 30, -1) and E.mbqm(6, q, s) == 2 and E.mbqm(-6, q, s) == -2  # 1.5 -> 2, -1.5 -> -2
    assert E.mbqm(10, *E.quantize_multiplier(3.0)) == 30  # left shift path
    assert E.mbqm64(6, q, s) == 2 and E.mbqm64(-6, q, s) == -1  # int64 form: one rounding, halves up


def test_float_roundings():
    assert list(E.round_away(np.float32([0.5, -0.5, 1.5, -2.5, 0.49999997]))) == [1, -1, 2, -3, 0]
    assert list(E.rint_f32(np.float32([0.5, -0.5, 1.5, -2.5, 2.5000002]))) == [0, 0, 2, -2, 3]  # half to even


def test_xnnpack_add_matches_its_float_intent():
    """The 20-bit fixed-point ADD lands within one step of the float sum (microparams-init.c bounds)."""
    t = lambda s, z: type("T", (), {"scale": np.float32([s]), "zp0": z, "type": "INT8"})()  # noqa: E731
    a, b = np.arange(-128, 128), np.arange(127, -129, -1)
    y = E._add_xnnpack(a, b, t(0.05, -128), tb=t(0.03, 0), out=t(0.07, -128))
    exact = ((a + 128) * 0.05 + b * 0.03) / 0.07 - 128
    assert np.abs(y - exact).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("runtime, kernels, want", [("litert-xnnpack", "xnnpack", "xnnpack"),
                                                    ("litert-ref", "ref", "double")])
def test_attribution_names_the_kernel_set(models, tiny_images, tmp_path, runtime, kernels, want):
    """devices.intexec.attribute: the semantics that reproduces a LiteRT run is found image by image, the
    other candidates are refuted, and with a wrong host the expected one is only a hint, never the answer."""
    from devices._host import fingerprint
    from devices.intexec import attribute
    from devices.litert import LiteRTRunner

    path = tmp_path / "w8.tflite"
    path.write_bytes(models[8])
    with LiteRTRunner(path, kernels=kernels, num_threads=1) as r:
        logits = r.infer({"pixels": tiny_images.astype(np.float32) / np.float32(255)})["logits"]  # (32, 10)
    att = attribute(path, tiny_images, logits, runtime=runtime, host=fingerprint(), probe=8)
    assert att["explained_by"] == want and att["summary"].endswith("32 of 32 images bit-exact")
    rows = {c["semantics"]: c for c in att["candidates"]}
    assert rows[want]["images"] == 32 and all(c["exact"] < c["images"] for s, c in rows.items()
                                              if s not in (want, "double-ruy" if want == "double" else want))
    assert attribute(path, tiny_images, logits + 1, runtime=runtime, host=None, probe=8)["explained_by"] is None
