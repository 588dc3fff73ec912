"""First divergent layer under LiteRT on the tiny model: XNNPACK is bit-exact, the builtin kernels diverge
(checked against the exporter's own debug build), and a tampered layer is found where it was tampered."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from eval._divergence import first_divergence, layer_divergence  # noqa: E402
from export import _tflite_proof as P  # noqa: E402
from export import tflite as T  # noqa: E402
from export._common import deploy_model  # noqa: E402
from qadtr._errors import QadtrError  # noqa: E402

LAYERS = ["quant_input", "relu", "layers.0.0.relu1", "layers.0.0.q_main", "layers.0.0.q_short", "layers.0.0.relu2",
          "pool_quant"]


def tamper(data: bytes, tensor: str = "layers.0.0.q_main/weight") -> bytes:
    """The .tflite with one conv's int8 weights negated (its scales and everything else unchanged)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as S

    m = S.ModelT.InitFromObj(S.Model.GetRootAsModel(data, 0))
    (t,) = [t for t in m.subgraphs[0].tensors if t.name.decode() == tensor]
    w = np.asarray(m.buffers[t.buffer].data, np.uint8).view(np.int8)
    m.buffers[t.buffer].data = np.clip(-w.astype(np.int16), -127, 127).astype(np.int8).view(np.uint8)
    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.fixture(scope="module")
def w2(tiny_checkpoint, tiny_images, tmp_path_factory):
    """(net, artifact, tampered artifact) at w2a2, where the builtin kernels' double rounding shows."""
    out = tmp_path_factory.mktemp("cmp_tflite")
    path = out / "w2.tflite"
    T.export_tflite(tiny_checkpoint, path, bits=2, images=tiny_images)
    bad = out / "w2_tampered.tflite"
    bad.write_bytes(tamper(path.read_bytes()))
    return deploy_model(tiny_checkpoint, 2)[0], path, bad


def test_xnnpack_bit_exact(w2, tiny_images):
    net, path, _ = w2
    d = first_divergence(net, "litert-xnnpack", path, images=tiny_images, samples=list(range(32)))
    assert list(d.layers) == LAYERS and d.outputs_identical
    assert all(i.first_layer is None for i in d.images)


def test_builtin_matches_the_exporters_debug_build(w2, tiny_images):
    """Independent path: a fresh `build_tflite(debug=True)` under the builtin kernels vs `_reference`."""
    from devices.litert import LiteRTRunner
    from qadtr.predict import to_tensor

    net, path, _ = w2
    d = first_divergence(net, "litert-builtin", path, images=tiny_images, samples=list(range(32)))
    assert d.outputs_identical and "builtin" in d.method
    debug = T.build_tflite(net, 8, 8, debug=True)
    dbg_path = path.with_name("debug.tflite")
    dbg_path.write_bytes(debug.data)
    pixels = to_tensor(tiny_images)
    _, ref = P.reference_ints(net, pixels, debug.activations)
    with LiteRTRunner(dbg_path, kernels="builtin", num_threads=1) as r:
        got = r.infer({"pixels": np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())})
    want = layer_divergence(LAYERS, ref, {n: got[n] for n in LAYERS}, samples=list(range(32)))
    assert d.images == want
    firsts = [i.first_layer for i in d.images]
    assert any(firsts) and all(f in (None, *LAYERS) for f in firsts)  # builtin's double rounding flips steps
    assert "quant_input" not in firsts  # the input QUANTIZE is float -> int8 in both: exact


@pytest.mark.parametrize("runtime", ["litert-xnnpack", "litert-builtin"])
def test_tampered_layer_is_found(w2, tiny_images, runtime):
    net, _, bad = w2
    d = first_divergence(net, runtime, bad, images=tiny_images[:8], samples=list(range(8)))
    if runtime == "litert-xnnpack":  # otherwise exact: the tampered layer is the first that differs, everywhere
        assert all(i.first_layer == "layers.0.0.q_main" and i.differing > 0 for i in d.images)
    else:  # builtin may flip an earlier step on its own; never later than the tampered layer
        assert all(i.first_layer in LAYERS[:4] for i in d.images)


def test_with_outputs_refuses_unknown_tensors(w2):
    _, path, _ = w2
    with pytest.raises(QadtrError, match=r"has no tensors \['nope'\]"):
        T.with_outputs(path.read_bytes(), ["relu", "nope"])
