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
    d["_version"] = 99
    with pytest.warns(UserWarning, match="version 99 differs"):
        config_from_dict(d)
