"""eval.defense and eval.amplification on the tiny test_qnet with in-memory 8x8 data (seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qadtr import QadtrError
from qadtr.models import ModelConfig, create_model
from qadtr.models._calibrate import calibrate_
from qadtr.recipes.dwq import DwqConfig
from qadtr.recipes.qadtr import QadtrConfig
from qadtr.train import TrainConfig

TWO = ((2, 2), (4, 4))
TINY = dict(patch_steps=2, patch_batch=16, location_steps=1, train_images=32, eval_images=16, eps255=(8.0,),
            pgd_steps=1)


def _checkpoint(out: Path, recipe: str, bits=TWO, rc=None) -> Path:
    """A calibrated (untrained) test_qnet saved with the TrainConfig of `recipe`: what eval.defense reads."""
    from qadtr.checkpoint import save_checkpoint

    cfg = TrainConfig(ModelConfig("test_qnet", bits=bits, per_bit_bn=len(bits) > 1), recipe=recipe, batch_size=8,
                      recipe_config=rc)
    torch.manual_seed(0)
    model = create_model(cfg.model)
    if bits:
        calibrate_(model, np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8))
    return save_checkpoint(model.eval(), out / "model.pt", model_cfg=cfg.model, train_cfg=cfg)


@pytest.fixture
def surrogate(tmp_path) -> Path:
    return _checkpoint(tmp_path / "float", "float", bits=())


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_defense_rows_for_every_threat_and_resume(tiny_dataset, surrogate, tmp_path, monkeypatch):
    import eval._threats
    import eval.defense
    from eval._threats import Budget
    from eval.defense import markdown, run

    ck = _checkpoint(tmp_path / "qadtr", "qadtr", rc=QadtrConfig(size=0.0625))
    out = tmp_path / "out"
    rows = run([str(ck)], str(surrogate), Budget(**TINY), out=out)
    cats = {(r["evaluated_on"], r["category"]) for r in rows}
    for key in ("w2a2", "w4a4"):
        for cat in ("clean", "seen", "unseen-attack", "unseen-size", "unseen-location", "unseen-source-bits",
                    "adaptive", "transfer", "fgsm", "pgd", "pgd-transfer"):
            assert (key, cat) in cats, (key, cat)
    seen = [r for r in rows if r["category"] == "seen"]
    assert {r["attack"] for r in seen} == {"universal"} and all(r["seen"] for r in seen)  # QADT-R trained on universal
    src = {r["source"] for r in rows if r["category"] == "unseen-source-bits" and r["evaluated_on"] == "w2a2"}
    assert src == {"self:w4a4"}
    assert {r["source"] for r in rows if r["category"] == "adaptive"} == {"self:w2a2+w4a4"}
    assert {r["attack"] for r in rows if r["category"] == "transfer"} == {"universal", "location"}
    assert all("robust_acc" in r for r in rows if r["category"] in ("fgsm", "pgd", "pgd-transfer"))
    saved = json.loads((out / "defense.json").read_text())
    assert len(saved["rows"]) == len(rows) and saved["budget"]["_data"]["patch_steps"] == 2
    table = markdown(rows, Budget(**TINY))
    assert "| qadtr | qadtr | w2a2 |" in table and "PGD-transfer 8" in table

    def fail(*a, **k):
        raise AssertionError("a resumed run recomputed a finished row")

    monkeypatch.setattr(eval._threats.PatchMaker, "get", fail)
    monkeypatch.setattr(eval.defense, "lp_examples", fail)
    assert len(run([str(ck)], str(surrogate), Budget(**TINY), out=out)) == len(rows)
    with pytest.raises(QadtrError, match="another budget"):
        run([str(ck)], str(surrogate), Budget(**{**TINY, "patch_steps": 3}), out=out)


def test_defense_random_precision_gets_an_expectation_attack(tiny_dataset, surrogate, tmp_path):
    from eval._threats import Budget
    from eval.defense import run

    ck = _checkpoint(tmp_path / "dwq", "dwq", rc=DwqConfig())
    rows = run([str(ck)], str(surrogate), Budget(**TINY), out=tmp_path / "out", kinds=("adaptive",))
    random_rows = {r["category"] for r in rows if r["evaluated_on"] == "random"}
    assert random_rows == {"clean", "adaptive", "adaptive-eot"}
    assert {r["evaluated_on"] for r in rows} == {"w2a2", "w4a4", "random"}


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_defense_scope_limits_networks_and_source_bits(tiny_dataset, surrogate, tmp_path):
    from eval._threats import Budget
    from eval.defense import parse_scope, run

    assert parse_scope("2, w4a8,random") == ("w2a2", "w4a8", "random") and parse_scope("") == ()
    ck = _checkpoint(tmp_path / "qat", "qat", bits=((2, 2), (4, 4), (8, 8)))
    rows = run([str(ck)], str(surrogate), Budget(**TINY), out=tmp_path / "out", kinds=("seen", "unseen", "adaptive"),
               scope=("w2a2", "w8a8"))
    assert {r["evaluated_on"] for r in rows} == {"w2a2", "w8a8"}
    src = {r["source"] for r in rows if r["category"] == "unseen-source-bits" and r["evaluated_on"] == "w2a2"}
    assert src == {"self:w8a8"}  # w4a4 is out of scope: no patch is made there
    assert {r["source"] for r in rows if r["category"] == "adaptive"} == {"self:w2a2+w4a4+w8a8"}  # the whole defence
    assert not (tmp_path / "out" / "patches" / "qat" / "w4a4_universal_s062.npz").exists()
    with pytest.raises(QadtrError, match="has none of --bits w5a5"):
        run([str(ck)], str(surrogate), Budget(**TINY), out=tmp_path / "out2", scope=("w5a5",))


@pytest.mark.parametrize("args, message", [
    (["--kinds", "seen,magic"], "--kinds ['magic']: choose from"),
    (["--bits", "four"], "--bits 'four': use bit widths like 2,4"),
    (["--eps", "two"], "--eps 'two': uint8 levels"),
    (["--patch-steps", "0"], "--patch-steps"),
])
def test_defense_cli_user_errors(args, message, tiny_dataset, surrogate, tmp_path, capsys):
    from eval.defense import main

    ck = _checkpoint(tmp_path / "qat", "qat")
    code = main(["--checkpoints", str(ck), "--surrogate", str(surrogate), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err


def test_amplification_measures_the_per_layer_gain(tiny_dataset, tmp_path):
    from eval.amplification import amplification, main, probe_layers
    from qadtr.models import deploy_net

    torch.manual_seed(0)
    net = create_model(ModelConfig("test_qnet")).eval()
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(16) % 10
    assert probe_layers(net) == ["relu", "layers.0.0", "linear"]
    before = amplification(net, images, labels, eps255=4, kind="random", seed=3)
    with torch.no_grad():
        net.linear.weight.mul_(2.0)
        net.linear.bias.mul_(2.0)
    after = amplification(net, images, labels, eps255=4, kind="random", seed=3)
    assert after["linear"]["ratio"] == pytest.approx(2 * before["linear"]["ratio"], rel=1e-5)  # logits scale by 2
    assert after["linear"]["relative"] == pytest.approx(before["linear"]["relative"], rel=1e-5)  # scale-free
    assert after["relu"] == before["relu"]
    quant = deploy_net(_quant_model(), 4)
    fgsm = amplification(quant, images, labels, eps255=4, kind="fgsm")
    assert all(np.isfinite(v["ratio"]) and v["ratio"] >= 0 for v in fgsm.values())
    ck = _checkpoint(tmp_path / "w4", "qat", bits=((4, 4),))
    assert main(["--checkpoints", str(ck), "--eps", "2", "--images", "8", "--out", str(tmp_path / "amp")]) == 0
    rows = json.loads((tmp_path / "amp" / "amplification.json").read_text())["rows"]
    assert [(r["bits"], r["kind"]) for r in rows] == [("w4a4", "random"), ("w4a4", "fgsm")]
    assert "| w4:w4a4 | random | 2/255 |" in (tmp_path / "amp" / "amplification.md").read_text()


def _quant_model():
    torch.manual_seed(0)
    model = create_model(ModelConfig("test_qnet", bits=((4, 4),)))
    calibrate_(model, np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8))
    return model.eval()


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_evaluate_honours_random_inference(tiny_dataset, tmp_path, capsys):
    from qadtr.evaluate import main

    ck = _checkpoint(tmp_path / "dwq", "dwq", rc=DwqConfig())
    assert main([str(ck), "--json", str(tmp_path / "acc.json")]) == 0
    assert "random deploy" in capsys.readouterr().out
    assert json.loads((tmp_path / "acc.json").read_text())["random"]["n"] == 40
    off = _checkpoint(tmp_path / "dwq_fixed", "dwq", rc=DwqConfig(random_inference=False))
    assert main([str(off)]) == 0 and "random deploy" not in capsys.readouterr().out
