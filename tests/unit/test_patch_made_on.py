"""A patch file says which deployed artifact an attack on it ran against (Patch.made_on), and a file written
before it said so still loads, as made on fake-quant."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from qadtr import QadtrError
from qadtr.attacks import EOTConfig, Patch, UniversalConfig, load_patch, save_patch
from qadtr.attacks.patchfile import FORMAT_VERSION, deployed_on, made_on_parts

MADE_ON = "litert-builtin w2a2.tflite 4048a252959044a3"


def _patch(made_on: str = "") -> Patch:
    values = np.random.default_rng(0).uniform(0, 1, (3, 4, 4)).astype(np.float32)
    return Patch(values=values, attack="universal", config=UniversalConfig(size=0.05, target=3, steps=1), size=0.05,
                 side=4, target=3, eot=EOTConfig(), made_on=made_on)


def _rewrite_meta(path, edit) -> None:
    """`path` with its `meta` JSON edited in place (the arrays as they are)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    edit(meta)
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez(path, **arrays)


def test_made_on_round_trips_and_is_in_the_json_beside(tmp_path):
    path = save_patch(_patch(MADE_ON), tmp_path / "p")
    assert load_patch(path).made_on == MADE_ON
    assert json.loads(path.with_suffix(".json").read_text())["made_on"] == MADE_ON
    assert load_patch(save_patch(_patch(), tmp_path / "f")).made_on == ""  # a fake-quant attack's


def test_a_file_from_before_made_on_loads_as_made_on_fake_quant(tmp_path):
    path = save_patch(_patch(MADE_ON), tmp_path / "old")
    _rewrite_meta(path, lambda m: m.pop("made_on"))
    with np.load(path, allow_pickle=False) as z:
        assert "made_on" not in json.loads(str(z["meta"])) and int(z["version"]) == FORMAT_VERSION == 1
    old = load_patch(path)
    assert old.made_on == "" and old.target == 3 and np.array_equal(old.values, _patch().values)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("seed"), r"lacks \['seed'\]"),  # every other field stays required
    (lambda m: m.pop("data"), r"lacks \['data'\]"),
    (lambda m: m.update(made_on=3), "patch made_on"),  # of its type
    (lambda m: m.update(made_by="x"), r"unknown fields \['made_by'\]"),
])
def test_other_meta_fields_stay_required_and_made_on_is_a_string(tmp_path, edit, match):
    path = save_patch(_patch(MADE_ON), tmp_path / "p")
    _rewrite_meta(path, edit)
    with pytest.raises(QadtrError, match=match):
        load_patch(path)


def test_deployed_on_names_runtime_file_and_checksum():
    sha = "4048a252959044a3012376aadee2e7cc6af4385a5c43b87986f7a22a91262e21"
    assert deployed_on("litert-builtin", "eval/results/attacker/artifacts/w2a2.tflite", sha) == MADE_ON
    remote = deployed_on("litert-xnnpack", "a/w2a2.tflite", sha, device="rpi4-emu")
    assert remote == "rpi4-emu/litert-xnnpack w2a2.tflite 4048a252959044a3"
    assert made_on_parts(remote) == ("rpi4-emu", "litert-xnnpack", "w2a2.tflite", "4048a252959044a3")
    assert made_on_parts(MADE_ON) == ("", "litert-builtin", "w2a2.tflite", "4048a252959044a3")
    assert made_on_parts(deployed_on("onnxrt", "my model.onnx", sha)) == ("", "onnxrt", "my model.onnx", sha[:16])
    assert made_on_parts("") is None and made_on_parts("onnxrt") is None and made_on_parts("onnxrt x") is None
    assert dataclasses.replace(_patch(), made_on=remote).made_on == remote
