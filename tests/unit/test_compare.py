"""eval.compare on constructed logits whose answers are known: agreement, flips both ways, ties, LSBs, paired CI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eval.compare import Gate, compare_outputs, ties
from qadtr._errors import QadtrError
from qadtr._stats import Z95, PairedDifference
from qadtr.attacks import attack_success

K = 10
LSB = 0.25


def onehot(pred, margin=4.0):
    """(M, K) logits on the LSB grid whose argmax is `pred`, winning by `margin` LSBs."""
    x = np.zeros((len(pred), K))
    x[np.arange(len(pred)), pred] = margin * LSB
    return x


def scenario():
    """8 clean images (test index 0..7, labels 0..7) and the same 8 with a patch targeting class 3.

    Reference: clean all correct; patched -> 3 on images 0, 1, 2 (image 3 is class 3: not eligible).
    Deployed: clean image 5 predicted 9 (a clean disagreement); patched -> 3 on images 1, 2, 6:
    image 0 flips ref-only, image 6 flips deployed-only.
    """
    labels = np.r_[np.arange(8), np.arange(8)]
    test_index = labels.copy()
    patch = np.r_[np.full(8, -1), np.zeros(8, int)]
    ref_pred = np.r_[np.arange(8), [3, 3, 3, 3, 4, 5, 6, 7]]
    out_pred = np.r_[[0, 1, 2, 3, 4, 9, 6, 7], [0, 3, 3, 3, 4, 5, 3, 7]]
    return onehot(ref_pred), onehot(out_pred), labels, patch, test_index


def test_agreement_flips_and_asr():
    ref, out, labels, patch, test_index = scenario()
    res = compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[3], lsb=LSB, patch_names=["p.npz"])
    assert (res.clean.n, res.clean.agree, res.clean.n_nontie) == (8, 7, 8)
    assert (res.patched.n, res.patched.agree) == (8, 6)  # rows 8 (image 0) and 14 (image 6) differ
    (p,) = res.patches
    assert p.ref_only == (8,) and p.out_only == (14,)
    # ASR: 7 eligible (label != 3); reference hits images 0, 1, 2; deployed 1, 2, 6
    assert (p.asr_ref["asr"]["k"], p.asr_ref["asr"]["n"]) == (3, 7) == (p.asr_out["asr"]["k"], p.asr_out["asr"]["n"])
    assert (p.diff.b, p.diff.c, p.diff.n) == (1, 1, 7) and p.diff.value == 0.0
    want = attack_success(out.argmax(1)[:8], out.argmax(1)[8:], labels[8:], target=3)
    assert p.asr_out == want.to_dict()
    kinds = {d.sample: (d.attack, d.pred_ref, d.pred_out) for d in res.disagreements}
    assert kinds == {5: ("", 5, 9), 8: ("ref-only", 3, 0), 14: ("deployed-only", 6, 3)}
    assert not res and any("clean agreement" in r for r in res.reasons)  # 7/8 < 99%
    assert Gate(min_agree=0.8, max_asr_diff=0.0)  # the config itself is valid
    assert compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[3], lsb=LSB, gate=Gate(0.7, 0.0))
    out[12] = onehot([3])[0]  # deployed also hits image 4: the difference is deployed - reference = +1/7
    p = compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[3], lsb=LSB).patches[0]
    assert (p.diff.b, p.diff.c) == (2, 1) and p.diff.value == pytest.approx(1 / 7) and p.out_only == (12, 14)


def test_untargeted_uses_each_sides_clean_prediction():
    ref, out, labels, patch, test_index = scenario()
    res = compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[None], lsb=LSB)
    (p,) = res.patches
    # reference: clean correct on all 8; patched changes images 0, 1, 2 (-> 3; image 3 stays 3) -> 3/8
    assert (p.asr_ref["asr"]["k"], p.asr_ref["asr"]["n"]) == (3, 8)
    # deployed: clean correct on 7 (not image 5); patched changes images 1, 2, 6 -> 3/7
    assert (p.asr_out["asr"]["k"], p.asr_out["asr"]["n"]) == (3, 7)
    assert p.diff.n == 7 and (p.diff.b, p.diff.c) == (1, 1)  # paired over images correct on both sides
    assert p.asr_out["definition"].startswith("untargeted")


def test_patched_rows_pair_with_their_clean_row_not_their_position():
    ref, out, labels, patch, test_index = scenario()
    order = np.r_[np.arange(8)[::-1], 8 + np.arange(8)]  # clean block reversed: pairing must use test_index
    a = compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[None], lsb=LSB)
    b = compare_outputs(ref[order], out[order], labels[order], patch=patch[order], test_index=test_index[order], targets=[None], lsb=LSB)
    assert a.patches[0].asr_out == b.patches[0].asr_out and a.patches[0].diff == b.patches[0].diff


def test_ties_counted_apart_and_excluded():
    ref, out, labels, patch, test_index = scenario()
    out = out.copy()
    out[5, 5] = out[5, 9]  # deployed clean image 5: classes 5 and 9 now tie exactly; argmax = 5 (lowest index)
    out[2, 4] = out[2, 2] - 0.4 * LSB  # within half an LSB: a tie too, argmax still 2
    res = compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[3], lsb=LSB)
    assert (res.clean.ties_ref, res.clean.ties_out) == (0, 2)
    assert res.clean.n_nontie == 6 and res.clean.agree_nontie == 6 and res.clean.agree == 8
    assert ties(out, LSB)[[2, 5]].all() and not ties(out, None)[2] and ties(out, None)[5]
    assert not any(d.sample == 5 for d in res.disagreements)  # argmax agrees once the tie resolves to 5


def test_logit_delta_in_lsbs_per_class():
    ref, out, labels, patch, test_index = scenario()
    lsb = np.full(K, LSB)
    lsb[7] = 0.1
    out = ref.copy()
    out[3, 7] += 3 * 0.1  # 3 steps of class 7's finer grid, no prediction changes
    out[4, 1] += 2 * LSB
    res = compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[3], lsb=lsb)
    assert res.logits["max_abs_lsb"] == pytest.approx(3.0) and tuple(res.logits["worst_index"]) == (3, 7)
    assert res.logits["max_abs"] == pytest.approx(0.5) and res.logits["lsb"][7] == 0.1  # raw: the 2-LSB one
    assert res and not res.disagreements and res.clean.agree == 8
    raw = compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[3], lsb=None)
    assert raw.logits["max_abs_lsb"] is None and raw.logits["max_abs"] == pytest.approx(0.5)


def test_result_json_and_text():
    ref, out, labels, patch, test_index = scenario()
    res = compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[3], lsb=LSB, ref_name="fakequant",
                          out_name="litert-builtin", patch_names=["w4_t3.npz"])
    d = json.loads(json.dumps(res.to_dict()))
    assert {"tie_rule", "asr_note", "paired_ci", "gate_rule"} <= set(d) and "Tango" in d["paired_ci"]
    assert d["patches"][0]["diff"]["ci95"][0] < 0 < d["patches"][0]["diff"]["ci95"][1]
    text = str(res)
    assert text.startswith("FAILED litert-builtin vs fakequant") and "w4_t3.npz" in text and "gate:" in text


@pytest.mark.parametrize("kwargs, match", [
    (dict(out=np.zeros((16, K + 1))), "must describe the same replay samples"),
    (dict(labels=np.zeros(15, int)), "must describe the same replay samples"),
    (dict(targets=[]), "only 0 patch targets"),
    (dict(test_index=np.r_[np.arange(8), np.arange(8) + 1]), r"no clean sample of test images \[8\]"),
])
def test_bad_inputs(kwargs, match):
    ref, out, labels, patch, test_index = scenario()
    args = dict(ref=ref, out=out, labels=labels, patch=patch, test_index=test_index, targets=[3]) | kwargs
    with pytest.raises(QadtrError, match=match):
        compare_outputs(args.pop("ref"), args.pop("out"), args.pop("labels"), patch=args.pop("patch"),
                        test_index=args.pop("test_index"), targets=args.pop("targets"), lsb=LSB)


@pytest.mark.parametrize("kwargs, match", [(dict(min_agree=1.5), "min_agree"), (dict(max_asr_diff=-0.1), "max_asr"),
                                           (dict(max_extra_ties=2.0), "max_extra_ties")])
def test_gate_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Gate(**kwargs)


def test_collapsed_logits_fail_the_gate():
    """All-zero deployed logits tie everywhere: agreement has nothing left to judge, the tie criterion fails."""
    ref, out, labels, patch, test_index = scenario()
    res = compare_outputs(ref, np.zeros_like(out), labels, patch=patch, test_index=test_index, targets=[3], lsb=LSB)
    assert res.clean.n_nontie == 0 and res.clean.ties_out == 8
    assert not res and any("16 of 16 samples tie on the deployed side only" in r for r in res.reasons)
    assert compare_outputs(ref, np.zeros_like(out), labels, patch=patch, test_index=test_index, targets=[3], lsb=LSB,
                           gate=Gate(max_extra_ties=1.0, max_asr_diff=1.0))


def test_divergence_rows_order_and_fill():
    from eval.compare import _divergence_rows

    ref, out, labels, patch, test_index = scenario()
    res = compare_outputs(ref, out, labels, patch=patch, test_index=test_index, targets=[3], lsb=LSB)
    delta = np.zeros(16)
    delta[[3, 9]] = [0.4, 2.0]  # sample 9: 2 LSB off without changing anything; sample 3: below half an LSB
    why = _divergence_rows(res, delta, 10)
    assert list(why) == [5, 8, 14, 9] and why[5] == "prediction differs" and why[9].startswith("logits differ by 2")
    assert list(_divergence_rows(res, delta, 2)) == [5, 8]


# -- paired difference (Tango score interval) -----------------------------------------------------------
def _quartic(b, c, n, x):
    """Yang, Sun & Hardin (2012): Tango's limits are roots of this quartic (their closed form), scaled."""
    g = Z95 ** 2
    m0 = n ** 2 * (n / g + 1) ** 2
    m1 = -n * (b - c) * (n / g + 1) * (4 * n / g + 1)
    m2 = 2 * n * (b - c) ** 2 * (3 * n / g + 2) / g - n ** 2 * ((b + c) / g + 1)
    m3 = n * (b - c) * (2 * (b + c) / g + 1) - (b - c) ** 3 * (4 * n / g + 1) / g
    m4 = (b - c) ** 2 * ((b - c) ** 2 / g - (b + c)) / g
    return (m0 * x ** 4 + m1 * x ** 3 + m2 * x ** 2 + m3 * x + m4) / m0


@pytest.mark.parametrize("b, c, n", [(1, 7, 21), (10, 3, 50), (5, 0, 100), (0, 0, 1000), (60, 40, 1000), (3, 2, 10)])
def test_paired_ci_solves_tangos_equation(b, c, n):
    d = PairedDifference(b, c, n)
    lo, hi = d.ci95
    assert lo <= d.value <= hi and -1 <= lo and hi <= 1
    for x in (lo, hi):
        assert abs(_quartic(b, c, n, x)) < 1e-12


def test_paired_ci_known_values():
    # Fagerland, Lydersen & Laake (2013), airway hyper-responsiveness example: Tango -0.517 to -0.026
    lo, hi = PairedDifference(1, 7, 21).ci95
    assert (round(lo, 3), round(hi, 3)) == (-0.517, -0.026)
    # no discordant pair: +-z^2/(n+z^2), not a zero-width interval
    lo, hi = PairedDifference(0, 0, 1000).ci95
    assert hi == pytest.approx(Z95 ** 2 / (1000 + Z95 ** 2)) and lo == pytest.approx(-hi)
    # large n: close to the Wald interval
    b, c, n = 600, 400, 10000
    half = Z95 * math.sqrt(b + c - (b - c) ** 2 / n) / n
    lo, hi = PairedDifference(b, c, n).ci95
    assert lo == pytest.approx(0.02 - half, abs=2e-4) and hi == pytest.approx(0.02 + half, abs=2e-4)
    # all discordant one way: the interval reaches the bound
    assert PairedDifference(100, 0, 100).ci95[1] == 1.0


def test_paired_counts_validated():
    with pytest.raises(ValueError, match="b \\+ c <= n"):
        PairedDifference(5, 6, 10)
    assert math.isnan(PairedDifference(0, 0, 0).value)


def test_across_devices_compares_the_same_runtime_logit_by_logit(tmp_path):
    """Same artifact and replay on two devices: identical logits are reported bit-identical, others counted."""
    from eval.compare import across_devices, across_line
    from eval.store import Store

    base = np.arange(12, dtype=np.float32).reshape(4, 3)  # (M, K)
    other = base.copy()
    other[2] = [5.0, 9.0, 0.0]  # one sample changes its argmax and 3 logits

    def run(store, device, runtime, logits):
        r = store.open_run(device=device, runtime=runtime, artifact="m.tflite", artifact_sha256="a" * 64,
                           replay="r.npz", replay_sha256="b" * 64, samples=4, options={}, emulated=device != "local")
        store.write_batch(r.run_id, first=0, logits=logits, seconds=0.1)

    with Store(tmp_path / "s.sqlite") as s:
        for runtime, off in (("onnxrt", base), ("litert-builtin", other)):
            run(s, "local", runtime, base)
            run(s, "board", runtime, off)
        run(s, "local", "fakequant", base)  # the reference runtime is never compared across devices
    rows = {r["runtime"]: r for r in across_devices(tmp_path / "s.sqlite")}
    assert set(rows) == {"onnxrt", "litert-builtin"}
    assert rows["onnxrt"]["identical"] and rows["onnxrt"]["differing"] == 0
    b = rows["litert-builtin"]
    assert not b["identical"] and b["differing"] == 3 and b["argmax_agree"] == 0.75 and b["max_abs"] == 8.0
    assert "bit-identical" in across_line(rows["onnxrt"]) and "3 of 12 logits differ" in across_line(b)


def test_mcnemar_exact_values():
    from qadtr._stats import mcnemar_p

    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert 0.0 <= mcnemar_p(4000, 4300) < 0.05  # big n: exact integers, no float overflow


def test_holm_controls_the_family_not_each_test():
    from qadtr._stats import PairedDifference, family, holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    alone = PairedDifference(b=14, c=4, n=1000)  # p = 0.031: "significant" when tested on its own
    assert alone.p_value < 0.05 and family([alone])[0]["significant"]
    crowd = family([alone] + [PairedDifference(b=3, c=3, n=1000)] * 35)  # one of 36 comparisons, as in the README
    assert not crowd[0]["significant"] and crowd[0]["p_holm"] == pytest.approx(min(1.0, 36 * alone.p_value))
    lo, hi = crowd[0]["ci_family"]
    assert lo < alone.ci95[0] and hi > alone.ci95[1] and lo < 0 < hi  # simultaneous intervals are wider


def test_subset_stability_splits_images_not_rows():
    from qadtr._stats import FOLDS, fold_of, stability

    idx = np.arange(10_000)
    fold = fold_of(idx)
    assert set(fold.tolist()) == set(range(FOLDS))
    assert np.bincount(fold).min() > 1_700  # roughly equal subsets of the test split
    assert np.array_equal(fold_of(idx[::-1]), fold[::-1])  # a property of the image, not of its row
    both = np.ones(1000, bool)
    b = np.zeros(1000, bool)
    b[::10] = True  # deployed-only successes spread over every subset: +10 pp everywhere
    st = stability(b, np.zeros(1000, bool), both, test_index=np.arange(1000))
    assert st["stable"] and st["same_sign"] == st["measured"] == FOLDS and sum(st["n"]) == 1000
    only = fold_of(np.arange(1000)) == 0  # the same +pp, all of it from one subset: not stable
    st = stability(only & (np.arange(1000) % 2 == 0), np.zeros(1000, bool), both, test_index=np.arange(1000))
    assert not st["stable"] and st["same_sign"] == 1


def test_comparison_reports_stability_per_patch():
    labels = np.array([0, 0, 0, 0, 0, 0])
    ref = np.eye(3)[[0, 0, 0, 0, 0, 0]] * 5.0
    out = ref.copy()
    out[3:] = np.eye(3)[[1, 1, 1]] * 5.0  # every patched image fooled on the deployed side only
    res = compare_outputs(ref, out, labels, patch=np.array([-1, -1, -1, 0, 0, 0]), test_index=np.array([0, 1, 2, 0, 1, 2]), targets=[None],
                          lsb=1.0)
    st = res.patches[0].stability
    assert sum(st["n"]) == 3 and st["measured"] >= 1 and st["stable"]
    assert "image subsets" in str(res) and res.to_dict()["patches"][0]["stability"] == st


# -- edited result files (issue 14): refused with one line, never a changed number, never PASSED ------------------
def _write_run(store, runtime: str, artifact, sha: str, replay, replay_path, options: dict, logits) -> str:
    run = store.open_run(device="local", runtime=runtime, artifact=str(artifact), artifact_sha256=sha,
                         replay=str(replay_path), replay_sha256=replay.sha256, samples=len(replay), options=options)
    store.write_batch(run.run_id, first=0, logits=np.asarray(logits, np.float32), seconds=0.1)
    return store.finish(run.run_id).run_id


@pytest.fixture
def two_runs(tiny_dataset, tiny_patches, tmp_path):
    """(store, replay path, reference run id, deployed run id) on a real replay: the deployed logits are the
    reference's rolled by one class, so every prediction differs and the gate fails."""
    from eval.replay import load_replay, make_replay
    from eval.store import Store

    path = make_replay(tiny_patches, "cifar10", eval_subset=16, eval_seed=1, out=tmp_path / "replays")
    replay = load_replay(path)
    ref = np.random.default_rng(0).normal(size=(len(replay), K))
    options = {"bits": [4, 4], "source_sha256": "ab" * 32}  # no checkpoint here: raw units, nothing rerun
    with Store(tmp_path / "s.sqlite") as s:
        a = _write_run(s, "fakequant", tmp_path / "ck/model.pt", "0" * 64, replay, path, options, ref)
        b = _write_run(s, "onnxrt", tmp_path / "w4.onnx", "1" * 64, replay, path, options, np.roll(ref, 1, axis=1))
    return tmp_path / "s.sqlite", path, a, b


def _sql(path, sql: str, *args) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def _cli(store, tmp_path, capsys) -> tuple[int, str]:
    from eval.compare import main

    code = main(["--store", str(store), "--out", str(tmp_path / "cmp"), "--no-report", "--divergence-images", "0"])
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize("columns", ["logits, pred", "logits, pred, digest"])
def test_reference_logits_copied_into_a_deployed_run_never_pass(two_runs, tmp_path, capsys, columns):
    from eval.compare import compare_store
    from eval.store import StoreError

    store, _, ref, out = two_runs
    (res,), _ = compare_store(store, divergence_images=0)
    assert not res and res.clean.agree == 0  # as measured: every prediction differs
    sets = ", ".join(f"{c} = (SELECT o.{c} FROM outputs o WHERE o.run_id = ? AND o.sample = outputs.sample)"
                     for c in columns.split(", "))
    _sql(store, f"UPDATE outputs SET {sets} WHERE run_id = ?", *[ref] * len(columns.split(", ")), out)
    with pytest.raises(StoreError, match=f"run {out[:12]} in .*row checksum does not match") as e:
        compare_store(store, divergence_images=0)
    assert "\n" not in str(e.value) and "--fresh" in str(e.value)
    code, text = _cli(store, tmp_path, capsys)
    assert code == 1 and "row checksum does not match" in text and "PASSED onnxrt" not in text


@pytest.mark.parametrize("sealed", [False, True])
def test_an_edited_replay_is_refused_by_compare_and_report(two_runs, tmp_path, capsys, sealed):
    """The targets of a replay edited after its runs (with or without its own checksum recomputed): the
    comparison is refused, the report shows no ASR for those runs."""
    import json

    from eval.compare import compare_store
    from eval.report import collect
    from eval.replay import description_sha256

    store, path, _, out = two_runs
    js = path.with_suffix(".json")
    d = json.loads(js.read_text())
    patch = next(p for p in d["_data"]["patches"] if p["target"] is not None)
    patch["target"] = (patch["target"] + 1) % 10
    if sealed:
        d["_data"]["sha256"] = description_sha256(d["_data"])
    js.write_text(json.dumps(d))
    match = "is not the replay the run used" if sealed else "was edited: its content no longer matches"
    with pytest.raises(QadtrError, match=f"^run {out[:12]}: .*{match}") as e:
        compare_store(store, divergence_images=0)
    assert "\n" not in str(e.value) and "make_replay" in str(e.value)
    code, text = _cli(store, tmp_path, capsys)
    assert code == 1 and match.split(":")[0] in text and "ASR" not in text
    runs = collect(store)["runs"]
    assert len(runs) == 2 and all(r["replay_error"] and r["asr"] == [] and r["accuracy"] is None for r in runs)


def test_a_replaced_artifact_is_never_rerun(tiny_dataset, tiny_patches, tiny_checkpoint, tiny_exports, tmp_path,
                                            monkeypatch):
    """A run's .onnx replaced after the run: divergence and attribution are skipped, saying why, and nothing of
    the new file runs (its integers would be shown as the run's)."""
    import shutil

    import onnx

    import devices.intexec
    import eval._divergence
    from eval.compare import compare_runs
    from eval.replay import load_replay, make_replay
    from eval.store import Store
    from qadtr._config import sha256_file

    path = make_replay(tiny_patches, "cifar10", eval_subset=16, eval_seed=1, out=tmp_path)
    replay = load_replay(path)
    art = tmp_path / "w8.onnx"
    shutil.copy(tiny_exports["onnx"], art)
    ck = sha256_file(tiny_checkpoint)
    ref = np.random.default_rng(0).normal(size=(len(replay), K))
    with Store(tmp_path / "s.sqlite") as s:
        a = _write_run(s, "fakequant", tiny_checkpoint, ck, replay, path, {"bits": [8, 8]}, ref)
        b = _write_run(s, "onnxrt", art, sha256_file(art), replay, path, {"bits": [8, 8], "source_sha256": ck},
                       np.roll(ref, 1, axis=1))
    m = onnx.load(str(art))
    m.doc_string = "replaced after the run"
    onnx.save(m, str(art))

    def rerun(*args, **kwargs):
        raise AssertionError("the replaced artifact was rerun")

    monkeypatch.setattr(eval._divergence, "first_divergence", rerun)
    monkeypatch.setattr(devices.intexec, "attribute", rerun)
    with Store(tmp_path / "s.sqlite") as s:
        res = compare_runs(s, s.run(a), s.run(b), divergence_images=4)
    assert "sha256 differs" in res.divergence["skipped"] and not res.divergence["images"]
    assert "sha256 differs" in res.attribution["skipped"] and "w8.onnx" in res.attribution["summary"]


def test_a_replaced_source_checkpoint_is_refused(tiny_dataset, tiny_patches, tiny_checkpoint, tmp_path):
    """The runs recorded another checkpoint than the one now at that path: its LSB grid (the tie rule) would be
    another model's, so the comparison is refused."""
    from eval.compare import compare_runs
    from eval.replay import load_replay, make_replay
    from eval.store import Store

    path = make_replay(tiny_patches, "cifar10", eval_subset=16, eval_seed=1, out=tmp_path)
    replay = load_replay(path)
    ref = np.random.default_rng(0).normal(size=(len(replay), K))
    with Store(tmp_path / "s.sqlite") as s:
        a = _write_run(s, "fakequant", tiny_checkpoint, "0" * 64, replay, path, {"bits": [8, 8]}, ref)
        b = _write_run(s, "onnxrt", tmp_path / "w8.onnx", "1" * 64, replay, path,
                       {"bits": [8, 8], "source_sha256": "0" * 64}, ref)
        with pytest.raises(QadtrError, match=f"is not the checkpoint run {a[:12]} was made from") as e:
            compare_runs(s, s.run(a), s.run(b), divergence_images=0)
    assert "\n" not in str(e.value) and "re-run eval.on_device" in str(e.value)


def test_a_damaged_run_is_not_skipped_across_devices(tmp_path):
    """across_devices skips incomplete runs only: a run whose rows fail their checks is refused."""
    from eval.compare import across_devices
    from eval.store import Store, StoreError

    base = np.arange(12, dtype=np.float32).reshape(4, 3)
    with Store(tmp_path / "s.sqlite") as s:
        for device in ("local", "board"):
            r = s.open_run(device=device, runtime="onnxrt", artifact="m.onnx", artifact_sha256="a" * 64,
                           replay="r.npz", replay_sha256="b" * 64, samples=4, options={})
            s.write_batch(r.run_id, first=0, logits=base, seconds=0.1)
            board = r.run_id
    _sql(tmp_path / "s.sqlite", "UPDATE outputs SET logits = ? WHERE run_id = ? AND sample = 2",
         np.array([9, 0, 0], np.float32).tobytes(), board)
    with pytest.raises(StoreError, match=f"run {board[:12]} in .*sample 2's row checksum"):
        across_devices(tmp_path / "s.sqlite")
