"""eval.reproduction: verdicts follow their stated rules on synthetic eval.defense rows."""

from __future__ import annotations

import json

import pytest

THREATS = [("universal", 0.0625, "self:{k}", "white-box"), ("location", 0.0625, "self:{k}", "unseen-attack"),
           ("aqapa", 0.0625, "self:w2a2+w4a4", "adaptive"), ("universal", 0.0625, "surrogate:f:float", "transfer")]


def _rows(asr: dict, lp: dict | None = None) -> list[dict]:
    """asr: {recipe: [ASR per THREATS entry]} at w2a2 and w4a4; lp: {checkpoint: robust acc} for PGD 8/255."""
    rows = []
    for recipe, values in asr.items():
        for key in ("w2a2", "w4a4"):
            for (attack, size, src, cat), v in zip(THREATS, values):
                rows.append({"checkpoint": f"resnet20_def_{recipe}", "recipe": recipe, "evaluated_on": key,
                             "category": "seen" if (recipe, attack) in (("qadtr", "universal"), ("pbat", "location"))
                             and src == "self:{k}" else cat, "attack": attack, "size": size, "source": src.format(k=key), "eps255": None,
                             "asr": {"value": v, "k": 0, "n": 100, "ci95": [0, 1]}})
    for (ck, key), acc in (lp or {}).items():
        rows.append({"checkpoint": ck, "recipe": "", "evaluated_on": key, "category": "pgd", "attack": "pgd",
                     "size": None, "source": "self", "eps255": 8.0, "asr": {"value": 0.5, "k": 0, "n": 1, "ci95": [0, 1]},
                     "robust_acc": {"value": acc, "k": 0, "n": 1, "ci95": [0, 1]}})
    return rows


def _write(tmp_path, rows):
    d = tmp_path / "defense" / "a"
    d.mkdir(parents=True)
    (d / "defense.json").write_text(json.dumps({"argv": [], "budget": {"_data": {"eval_images": 100}}, "rows": rows}))
    return tmp_path / "defense"


def _verdicts(tmp_path, rows) -> dict:
    from eval.reproduction import build

    rep = build(defense=[_write(tmp_path, rows)], amplification=None, transfer=[], zoo=tmp_path / "zoo", cost=None,
                deployed=[])
    return {c["claim"].split()[0] + " " + c["claim"].split()[1]: c["verdict"] for c in rep["claims"]}


def test_verdicts_follow_the_numbers(tmp_path):
    lp = {("resnet20_float", "float"): 0.01, ("resnet20_def_qat", "w2a2"): 0.02, ("resnet20_def_qat", "w4a4"): 0.02,
          ("resnet20_def_dq", "w2a2"): 0.05, ("resnet20_def_dq", "w4a4"): 0.01}
    v = _verdicts(tmp_path, _rows({"qat": [.3, .8, .3, .3], "qadtr": [.1, .5, .1, .2], "pbat": [.3, .4, .3, .3],
                                   "dwq": [.3, .7, .3, .3], "dq": [.3, .8, .3, .3]}, lp))
    assert v["adversarial patches"] == "holds"  # QAT's location patch: 80% at 2 bit
    assert v["QADT-R lowers"] == "holds"  # 22.5 vs 32.5 (PBAT) and 40 (DWQ)
    assert v["PBAT is"] == "holds"  # 40 pp better than QAT on location, 0 on the rest
    assert v["DQ is"] == "partly"  # beats both at w2a2, not at w4a4
    assert v["DQ's Lipschitz"] == "not measured" and v["QADT-R's training"] == "not measured"


def test_summary_means_over_the_common_threats(tmp_path):
    from eval.reproduction import build

    rows = _rows({"qat": [.3, .8, .3, .3], "qadtr": [.1, .5, .1, .2]})
    rows = [r for r in rows if not (r["checkpoint"] == "resnet20_def_qat" and r["category"] == "adaptive")]
    rep = build(defense=[_write(tmp_path, rows)], amplification=None, transfer=[], zoo=tmp_path / "zoo", cost=None,
                deployed=[])
    got = {(r["checkpoint"], r["bits"]): r for r in rep["summary"]}
    qadtr = got[("resnet20_def_qadtr", "w2a2")]
    assert qadtr["threats"] == 3 and qadtr["mean_asr"] == pytest.approx((.1 + .5 + .2) / 3)  # QAT has no adaptive row
    assert qadtr["universal_wb"] == .1 and qadtr["location_wb"] == .5 and qadtr["clean"] is None


def test_a_recipe_beating_qadtr_breaks_the_claim(tmp_path):
    v = _verdicts(tmp_path, _rows({"qat": [.3, .6, .3, .3], "qadtr": [.2, .5, .2, .2], "pbat": [.0, .5, .0, .0],
                                   "dwq": [.3, .7, .3, .3]}))
    assert v["QADT-R lowers"] == "does not hold" and v["adversarial patches"] == "does not hold"
    assert v["PBAT is"] == "does not hold"  # PBAT gains as much or more on the unseen patches


def test_mixed_budgets_and_missing_results_are_refused(tmp_path):
    from eval.reproduction import main

    d = _write(tmp_path, _rows({"qat": [.3, .6, .3, .3]}))
    (d / "b").mkdir()
    (d / "b" / "defense.json").write_text(json.dumps({"argv": [], "budget": {"_data": {"eval_images": 5}}, "rows": []}))
    assert main(["--defense", str(d), "--out", str(tmp_path / "o")]) == 1
    assert main(["--defense", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1


def test_masking_flag_when_transfer_beats_white_box():
    from eval.reproduction import masking_flags

    rows = _rows({"qadtr": [.1, .5, .1, .4]})
    for r in rows:  # n = 100 each: [3.9, 17.7] vs [31.0, 50.1]
        r["asr"]["ci95"] = [0.039, 0.177] if r["asr"]["value"] == .1 else [0.31, 0.501]
    flags = masking_flags(rows)
    assert flags and all(f["significant"] and "universal: transfer 40.0% [31.0, 50.1] > white-box 10.0%" in f["text"]
                         for f in flags)
    for r in rows:
        r["asr"]["ci95"] = [0.0, 1.0]
    assert not any(f["significant"] for f in masking_flags(rows))
    assert masking_flags(_rows({"qadtr": [.4, .5, .1, .1]})) == []


@pytest.mark.parametrize("bad", ["--nope"])
def test_cli_usage_error(bad, capsys):
    from eval.reproduction import main

    with pytest.raises(SystemExit):
        main([bad])


def test_ablation_rows_compare_each_variant_with_full_qadtr():
    from eval.reproduction import ablation, patch_table

    rows = _rows({"qadtr": [.1, .5, .1, .1]})
    rows += [{**r, "checkpoint": "resnet20_abl_no_gir", "asr": {**r["asr"], "value": r["asr"]["value"] + .2}}
             for r in _rows({"qadtr": [.1, .5, .1, .1]})]
    zoo = [{"checkpoint": "resnet20_abl_no_gir", "test_acc": {"w2a2": 0.7}}]
    out = {(a["checkpoint"], a["bits"]): a for a in ablation(patch_table(rows), zoo)}
    assert out[("resnet20_abl_no_gir", "w2a2")]["delta_vs_full"] == pytest.approx(0.2)
    assert out[("resnet20_abl_no_gir", "w2a2")]["clean"] == 0.7 and out[("resnet20_def_qadtr", "w4a4")]["clean"] is None
    assert out[("resnet20_def_qadtr", "w2a2")]["delta_vs_full"] is None


def test_amplification_claims_read_the_logit_layer_not_the_last_key():
    from eval.reproduction import claims

    def amp(ck, bits, logit, relu):  # key-sorted like amplification.json: "relu" comes after "linear"
        return {"checkpoint": ck, "bits": bits, "kind": "random", "eps255": 2, "images": 8,
                "layers": {"layers.0.0": {"ratio": 5.0}, "linear": {"ratio": logit}, "relu": {"ratio": relu}}}

    rows = [amp("resnet20_float", "float", 2.0, 1.0), amp("resnet20_def_qat", "w2a2", 6.0, 1.0),
            amp("resnet20_def_dq", "w2a2", 5.0, 9.0)]
    dq_rows = _rows({"dq": [.3, .8, .3, .3]})  # tells claims() which checkpoint is DQ
    got = {c["claim"].split()[0]: c["verdict"] for c in claims(dq_rows, rows, [], cost=None)}
    assert got["vanilla"] == "holds" and got["DQ's"] == "holds"  # by the logits, though DQ's relu gain is larger
    rows[2]["layers"]["linear"]["ratio"] = 7.0
    assert {c["claim"].split()[0]: c["verdict"] for c in claims(dq_rows, rows, [], cost=None)}["DQ's"] == "does not hold"
