"""qadtr.zoo: the plan's shape, and runs trained elsewhere then moved into the zoo (recorded only if planned)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from qadtr import QadtrError
from qadtr.models import ModelConfig
from qadtr.train import TrainConfig


def test_plan_starts_from_earlier_entries_and_covers_every_defence():
    from qadtr.zoo import PLAN

    names = [e.name for e in PLAN]
    assert len(set(names)) == len(names)
    for i, e in enumerate(PLAN):
        assert e.start in ("pretrained", "scratch") or e.start in names[:i], e.name
        assert e.start != "scratch" or e.cfg.recipe == "float", e.name  # QAT from random weights: never planned
    defended = {e.cfg.recipe: e for e in PLAN if e.name.startswith("resnet20_def_")}
    assert set(defended) == {"qat", "dq", "pbat", "dwq", "qadtr"}
    assert len({(e.cfg.model, e.cfg.epochs, e.cfg.lr, e.start) for e in defended.values()}) == 1  # same except the loss
    ablations = {e.name: e.cfg.recipe_config for e in PLAN if e.name.startswith("resnet20_abl_")}
    full = defended["qadtr"].cfg.recipe_config
    for name, rc in ablations.items():
        off = [f.name for f in dataclasses.fields(rc) if getattr(rc, f.name) != getattr(full, f.name)]
        assert off == [name.removeprefix("resnet20_abl_no_")] and not getattr(rc, off[0])


def test_build_records_a_moved_in_run_and_refuses_a_different_one(tiny_dataset, tmp_path, monkeypatch):
    import qadtr.zoo
    from qadtr.train import train
    from qadtr.zoo import Entry, build

    cfg = TrainConfig(ModelConfig("test_qnet", bits=((4, 4),)), epochs=1, batch_size=32)
    train(cfg, tmp_path / "elsewhere")  # e.g. python -m qadtr.train ... --out runs/x
    zoo = tmp_path / "zoo"
    shutil.copytree(tmp_path / "elsewhere", zoo / "tiny_w4")
    monkeypatch.setattr(qadtr.zoo, "PLAN", (Entry("tiny_w4", cfg, "pretrained"),))
    summary = build(zoo, data_dir=None, pretrained="unused")
    assert summary["tiny_w4"]["test_acc"]["w4a4"]["n"] == 40 and summary["tiny_w4"]["wall_s_last_session"] is None
    assert "tiny_w4" in json.loads((zoo / "zoo.json").read_text())

    (zoo / "zoo.json").unlink()
    other = dataclasses.replace(cfg, lr=0.5)
    monkeypatch.setattr(qadtr.zoo, "PLAN", (Entry("tiny_w4", other, "pretrained"),))
    with pytest.raises(QadtrError, match=r"other settings than zoo entry tiny_w4 \(lr\)"):
        build(zoo, data_dir=None, pretrained="unused")


def test_a_scratch_entry_trains_from_random_weights(tiny_dataset, tmp_path, monkeypatch):
    """An architecture with no pretrained weights (the edge models) starts from scratch: no init is looked up."""
    import qadtr.zoo
    from qadtr.zoo import Entry, build

    cfg = TrainConfig(ModelConfig("test_qnet"), recipe="float", epochs=1, batch_size=32)
    monkeypatch.setattr(qadtr.zoo, "PLAN", (Entry("tiny_float", cfg, "scratch"),))
    summary = build(tmp_path / "zoo", data_dir=None, pretrained="/nonexistent")  # never read
    ck = json.loads((tmp_path / "zoo" / "tiny_float" / "model.json").read_text())["_data"]
    assert ck["train"]["_data"]["init"] == "" and summary["tiny_float"]["start"] == "scratch"
