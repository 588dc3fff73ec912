"""Checkpoint files: round trip, corruption, mismatch, typed configs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from qadtr import QadtrError
from qadtr._config import config_from_dict, config_to_dict, read_json
from qadtr.checkpoint import load_checkpoint, read_checkpoint_info
from qadtr.models import ModelConfig
from qadtr.train import TrainConfig


def test_round_trip_restores_weights_and_config(tiny_checkpoint):
    model, ck = load_checkpoint(tiny_checkpoint)
    assert ck.model.bits == ((2, 2), (4, 4), (8, 8)) and ck.model.per_bit_bn
    assert {"torch", "brevitas", "qadtr"} <= set(ck.versions)
    state = torch.load(tiny_checkpoint, weights_only=True)  # a plain state dict
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_loading_by_folder_or_json_path(tiny_checkpoint):
    for path in (tiny_checkpoint.parent, tiny_checkpoint.with_suffix(".json")):
        assert load_checkpoint(path)[1].sha256 == read_checkpoint_info(tiny_checkpoint).sha256


def test_corrupt_file_is_refused_by_sha256(tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint.parent, tmp_path / "c")
    pt = tmp_path / "c" / "model.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(QadtrError, match="is corrupt: its sha256 differs"):
        load_checkpoint(pt)


def test_truncated_file_without_verification_is_a_clear_error(tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint.parent, tmp_path / "c")
    pt = tmp_path / "c" / "model.pt"
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.raises(QadtrError, match="cannot read"):
        load_checkpoint(pt, verify=False)


def test_weights_that_do_not_fit_the_config(tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint.parent, tmp_path / "c")
    js = tmp_path / "c" / "model.json"
    d = read_json(js)
    d["_data"]["model"]["_data"]["bits"] = [[2, 2], [4, 4]]
    js.write_text(json.dumps(d))
    with pytest.raises(QadtrError, match=r"does not match its config \(test_qnet, bits=\(\(2, 2\), \(4, 4\)\)\)"):
        load_checkpoint(tmp_path / "c" / "model.pt")
    d["_data"]["model"]["_data"]["bits"] = [[4, 4]]  # per_bit_bn with one bit width: invalid
    js.write_text(json.dumps(d))
    with pytest.raises(QadtrError, match="invalid ModelConfig in the artifact's JSON: per_bit_bn needs"):
        load_checkpoint(tmp_path / "c" / "model.pt")


def test_missing_files(tmp_path, tiny_checkpoint):
    with pytest.raises(QadtrError, match="not found; train one"):
        load_checkpoint(tmp_path / "nothing.pt")
    shutil.copy(tiny_checkpoint, tmp_path / "model.pt")
    with pytest.raises(QadtrError, match="model.json is missing"):
        load_checkpoint(tmp_path / "model.pt")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(QadtrError, match="is not valid JSON"):
        load_checkpoint(tmp_path / "model.pt")


def test_config_json_is_typed_and_allow_listed():
    cfg = TrainConfig(ModelConfig("test_qnet", bits=((4, 4),)), epochs=2, seed=3)
    d = config_to_dict(cfg)
    assert d["_type"] == "TrainConfig" and d["_version"] == TrainConfig.VERSION
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(QadtrError, match="unknown config type 'os.system'"):
        config_from_dict({"_type": "os.system", "_version": 1, "_data": {}})
    d["_data"]["surprise"] = 1
    with pytest.raises(QadtrError, match=r"unknown fields \['surprise'\]"):
        config_from_dict(d)
    with pytest.raises(QadtrError, match="not a qadtr config"):
        config_from_dict([1, 2])
    d = config_to_dict(cfg)
    d["_version"] = 99  # written by a newer qadtr-edge: refused, naming the upgrade (this only warned before)
    with pytest.raises(QadtrError, match="version 99 was written by a newer qadtr-edge.*pip install -U qadtr-edge"):
        config_from_dict(d)
    from qadtr.attacks import EOTConfig, UniversalConfig

    old = config_to_dict(UniversalConfig(eot=EOTConfig()))
    old["_version"] = UniversalConfig.VERSION - 1  # an older file still loads, with a warning
    with pytest.warns(UserWarning, match=f"version {UniversalConfig.VERSION - 1} differs"):
        assert config_from_dict(old) == UniversalConfig(eot=EOTConfig())


# --- typed JSON and state dicts from outside: one QadtrError naming the fix, never a traceback ---------------

def _copy(tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint.parent, tmp_path / "c")
    return tmp_path / "c" / "model.pt", tmp_path / "c" / "model.json"


@pytest.mark.parametrize("envelope, match", [
    (dict(_type="TrainConfig", _version=1, _data=[1, 2]), "TrainConfig: _data is a list.*expected an object"),
    (dict(_type=["TrainConfig"], _version=1, _data={}), "_type is a list.*expected a class name string"),
    (dict(_type=3, _version=1, _data={}), "_type is an integer 3"),
    (dict(_type="TrainConfig", _version="1", _data={}), "_version a string '1', expected an integer >= 1"),
    (dict(_type="TrainConfig", _version=True, _data={}), "_version a boolean True"),
    (dict(_type="TrainConfig", _data={}), "expected keys _type, _version, _data"),
])
def test_typed_json_envelope_of_the_wrong_type_is_one_error(envelope, match):
    with pytest.raises(QadtrError, match=match):
        config_from_dict(envelope)


@pytest.mark.parametrize("field, value, match", [
    ("epochs", "2", "TrainConfig.epochs is a string '2', expected an integer"),
    ("seed", "3", "TrainConfig.seed is a string '3', expected an integer"),  # was accepted as the string
    ("lr", True, "TrainConfig.lr is a boolean True, expected a finite number"),  # was accepted as lr=True
    ("lr", float("nan"), "TrainConfig.lr is a number nan, expected a finite number"),
    ("epochs", 2.5, "TrainConfig.epochs is a number 2.5, expected an integer"),
    ("model", [], "TrainConfig.model is a list.*expected a typed ModelConfig object"),
    ("recipe", None, "TrainConfig.recipe is null, expected a string"),
])
def test_typed_json_checks_every_field_type(field, value, match):
    d = config_to_dict(TrainConfig(ModelConfig("test_qnet", bits=((4, 4),))))
    d["_data"][field] = value
    with pytest.raises(QadtrError, match=match):
        config_from_dict(json.loads(json.dumps(d)))


@pytest.mark.parametrize("bits, match", [
    ([[4]], r"ModelConfig.bits\[0\] has 1 items, expected a list of 2 items"),
    ("44", "ModelConfig.bits is a string '44', expected a list of"),
    ([["4", 4]], r"ModelConfig.bits\[0\]\[0\] is a string '4', expected an integer"),
])
def test_nested_config_fields_are_checked_too(tiny_checkpoint, tmp_path, bits, match):
    pt, js = _copy(tiny_checkpoint, tmp_path)
    d = read_json(js)
    d["_data"]["model"]["_data"]["bits"] = bits
    js.write_text(json.dumps(d))
    with pytest.raises(QadtrError, match=f"model.json: .*{match}"):
        load_checkpoint(pt)


def test_checkpoint_train_record_must_be_a_train_config(tiny_checkpoint, tmp_path):
    pt, js = _copy(tiny_checkpoint, tmp_path)
    d = read_json(js)
    d["_data"]["train"] = 5  # loaded as Checkpoint(train=5) before, then failed as 5.data in the CLIs
    js.write_text(json.dumps(d))
    with pytest.raises(QadtrError, match="Checkpoint.train is an integer 5, expected a typed TrainConfig object or null"):
        read_checkpoint_info(pt)


def test_deeply_nested_json_is_one_error_not_a_recursion_error(tiny_checkpoint, tmp_path):
    pt, js = _copy(tiny_checkpoint, tmp_path)
    js.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(QadtrError, match="model.json nests too deeply to be a qadtr file; re-create it"):
        load_checkpoint(pt)
    js.write_text('{"_type": "Checkpoint", "_version": 1, "_data": {"n": ' + "9" * 5000 + "}}")  # int limit
    with pytest.raises(QadtrError, match="model.json is not valid JSON"):
        load_checkpoint(pt)


def _evaluate_cli(*args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "qadtr.evaluate", *args], cwd=root, capture_output=True, text=True,
                          timeout=120)


def test_model_json_from_a_newer_version_is_refused_naming_the_upgrade(tiny_checkpoint, tmp_path):
    pt, js = _copy(tiny_checkpoint, tmp_path)
    d = read_json(js)
    d["_version"] = d["_version"] + 1
    js.write_text(json.dumps(d))
    r = _evaluate_cli(str(pt), "--data-dir", "/nonexistent")  # loaded with a warning before, then went on
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(lines) == 2, r.stderr
    assert "Checkpoint version 2 was written by a newer qadtr-edge" in lines[0]
    assert "pip install -U qadtr-edge" in lines[0] and lines[1].startswith("FAILED |")


@pytest.mark.parametrize("obj, match", [
    ([1, 2], "holds no state dict .* but a list"),
    (torch.zeros(3), "holds no state dict .* but a Tensor"),
    ({"conv1.weight": [1.0]}, "holds no state dict: 'conv1.weight' is a list, not a tensor"),
    ({3: torch.zeros(1)}, "holds no state dict: key 3 is not a name"),
])
def test_a_pickled_non_state_dict_checkpoint_is_one_error(tiny_checkpoint, tmp_path, obj, match):
    from qadtr._config import sha256_file

    pt, js = _copy(tiny_checkpoint, tmp_path)
    torch.save(obj, pt)
    d = read_json(js)
    d["_data"]["sha256"] = sha256_file(pt)  # a consistent pair: the sha256 check alone would not catch it
    js.write_text(json.dumps(d))
    with pytest.raises(QadtrError, match=f"{match}; re-copy the checkpoint or retrain it"):
        load_checkpoint(pt)
    r = _evaluate_cli(str(pt))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "holds no state dict" in r.stderr, r.stderr


@pytest.mark.parametrize("obj, match", [
    (torch.zeros(3), "but a Tensor"),
    ({"state_dict": [1, 2]}, "but a list"),  # an akamaster-shaped file whose state dict is not one
    ({1: torch.zeros(1)}, "key 1 is not a name"),
    ({"state_dict": {"conv1.weight": "w"}}, "'conv1.weight' is a str, not a tensor"),
])
def test_init_weights_that_are_no_state_dict_are_one_error(tmp_path, obj, match):
    from qadtr.models import create_model
    from qadtr.models.switchable import load_pretrained_

    torch.save(obj, tmp_path / "init.th")
    with pytest.raises(QadtrError, match=f"initial weights .*init.th holds no state dict.*{match}"):
        load_pretrained_(create_model(ModelConfig("test_qnet")), str(tmp_path / "init.th"))


def test_every_registered_field_type_has_a_json_check():
    import importlib
    import typing

    from qadtr._config import _ALLOWED, field_types, type_name

    for mod in ("qadtr.checkpoint", "qadtr.attacks", "export.onnx", "export.tflite", "eval._threats", "eval.replay"):
        importlib.import_module(mod)  # each registers its configs
    assert {"Checkpoint", "TrainConfig", "ModelConfig", "UniversalConfig", "EOTConfig"} <= set(_ALLOWED)
    for name, cls in _ALLOWED.items():
        for field, tp in field_types(cls).items():
            assert type_name(tp), f"{name}.{field}"  # TypeError for an annotation check_value cannot check
    with pytest.raises(TypeError, match="has no JSON check"):
        type_name(typing.List[int])


def test_written_files_honour_the_umask(tmp_path):
    import os

    from qadtr._config import write_json

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640  # 0666 & ~027, not mkstemp's 0600
