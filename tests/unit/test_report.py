"""eval.report from a synthetic store: every section, inline PNGs that decode, every file-borne string escaped."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil

import pytest

from eval.compare import TIE_RULE, compare_outputs
from eval.report import SECTIONS, main, write_report


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_sections_images_and_json(report_inputs, tmp_path):
    from PIL import Image

    store, cmp, transfer, pdir = report_inputs
    path = write_report(store, tmp_path / "report", compare=cmp, transfer=transfer, patches=pdir)
    page = path.read_text()
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>{title}</h2>' in page
    assert "<title>qadtr-edge report" in page and html.escape(TIE_RULE.split(";")[0]) in page and "Tango" in page
    imgs = _images(page)
    # fake-quant vs deployed ASR, flip matrix, latency plot, 1 transfer heatmap, 3 patches x (patch file +
    # patched replay image); no ASR-vs-bit-width plot: both runs are w4a4, a single point per line
    assert len(imgs) == page.count("<img ") == 3 + 1 + 3 * 2
    for data in imgs:
        im = Image.open(io.BytesIO(data))
        im.load()
        assert im.format == "PNG" and im.width > 0
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    onnx = next(r for r in data["runs"] if r["runtime"] == "onnxrt")
    assert onnx["emulated"] and len(onnx["asr"]) == 3 and onnx["bits"] == [4, 4] and len(onnx["latency_ms"]) > 1
    assert onnx["energy_j"] is None and "(emulated)" in page and "not measured" in page
    assert page.count("<tr><td>") >= 3 + 3  # disagreement rows and more


def test_every_file_string_escaped(report_inputs, tmp_path):
    store, cmp, transfer, pdir = report_inputs
    page = write_report(store, tmp_path / "r", compare=cmp, transfer=transfer, patches=pdir).read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page and "<i>evil" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6  # device, artifact, method, layer, reason, ...
    assert "&lt;img src=x onerror=alert(2)&gt;" in page and "&lt;/pre&gt;&lt;script&gt;alert(3)" in page
    assert "&lt;i&gt;evil&amp;&quot;$q&#x27;.npz" in page


def test_without_compare_or_patches(report_inputs, tmp_path):
    store, *_ = report_inputs
    page = write_report(store, tmp_path / "bare").read_text()
    assert all(f'id="{sid}"' in page for sid, _ in SECTIONS)
    assert "No comparisons" in page and "No transfer.json given" in page
    assert "patch file not given" in page and len(_images(page)) == 1 + 3  # latency plot + patched replay images


def test_cli(report_inputs, tmp_path, capsys):
    store, cmp, _, _ = report_inputs
    (tmp_path / "compare.json").write_text(json.dumps(cmp))
    assert main(["--store", str(store), "--out", str(tmp_path / "c"), "--compare", str(tmp_path / "compare.json")]) == 0
    assert "PASSED" in capsys.readouterr().out and (tmp_path / "c" / "report.html").is_file()
    assert main(["--store", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "missing.sqlite not found" in err and "FAILED" in err and "Traceback" not in err


# -- the verdict, the page's order and folding, the host fingerprint ------------------------------------------
def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start:page.index("</section>", start)]


def _attribution(runtime: str, semantics: str, exact: int, images: int) -> dict:
    """devices.intexec.attribute()'s shape: one candidate, exact on `exact` of `images` images."""
    row = {"semantics": semantics, "models": "m", "rounding": "one rounding in float", "images": images,
           "exact": exact, "argmax_agree": 1.0, "first_unexplained": []}
    return {"method": "executor", "expected": semantics, "candidates": [row],
            "explained_by": semantics if exact == images else None, "summary": f"{runtime} = {semantics}"}


@pytest.fixture
def two_runs(report_inputs, tmp_path):
    """(store, compare.json dict): onnxrt agreeing bit for bit, litert-builtin fooled by every patch."""
    from eval.compare import document
    from eval.replay import load_replay
    from eval.store import Store

    store, *_ = report_inputs
    with Store(store) as s:
        run = next(r for r in s.runs() if r.runtime == "fakequant")
        ref = s.logits(run.run_id)
    replay = load_replay(run.replay)
    targets = [p.target for p in replay.info.patches]
    out = ref.copy()
    for i, k in enumerate(replay.patch):  # every patched image goes to its patch's target (or away from its label)
        if k >= 0:
            out[i] = -5.0
            out[i, targets[k] if targets[k] is not None else (replay.labels[i] + 1) % out.shape[1]] = 5.0
    args = {"patch": replay.patch, "test_index": replay.test_index, "targets": targets}
    names = [p.file for p in replay.info.patches]
    same = compare_outputs(ref, ref.copy(), replay.labels, **args, lsb=0.1, out_name="onnxrt", patch_names=names)
    bad = compare_outputs(ref, out, replay.labels, **args, lsb=0.1, out_name="litert-builtin", patch_names=names)
    assert same and not bad
    doc = document([same, bad], [], store=store)
    n = len(replay)
    for c, rt, sem in zip(doc["comparisons"], ("onnxrt", "litert-builtin"), ("single", "double")):
        c["info"] = {"model": "tiny_w4a4 w4a4", "device": "local", "bits": [4, 4], "source_sha256": "ab" * 32,
                     "checkpoint": "ck/tiny_w4a4/model.pt"}
        c["attribution"] = _attribution(rt, sem, n, n)
    return store, doc


def test_verdict_agreeing_and_diverging(two_runs, tmp_path):
    store, doc = two_runs
    page = write_report(store, tmp_path / "v", compare=doc).read_text()
    verdict = _section(page, "verdict")
    assert page.index('<section id="verdict">') < page.index('<section id="summary">')  # the page leads with it
    n = doc["comparisons"][0]["n"]
    assert verdict.index("litert-builtin<br>") < verdict.index("onnxrt<br>")  # rows in runtime order
    bad_cell = verdict[verdict.index("litert-builtin<br>"):verdict.index("onnxrt<br>")]
    ok_cell = verdict[verdict.index("onnxrt<br>"):]
    assert 'class="fail"' in bad_cell and "\u2717 DIVERGES" in bad_cell and "diverges from its simulation" in bad_cell
    assert "Largest ASR gap +" in bad_cell and "Holm p" in bad_cell and ", significant;" in bad_cell
    assert "family-wise CI [" in bad_cell and "same sign in" in bad_cell and "Gate failed:" in bad_cell
    assert f"litert-builtin = double: {n:,} of {n:,} images bit-exact" in bad_cell
    assert 'class="pass"' in ok_cell and "\u2713 AGREES" in ok_cell and "behaves like its simulation" in ok_cell
    k = sum(p["diff"]["value"] == p["diff"]["value"] for p in doc["comparisons"][0]["patches"])  # NaN: no image
    assert k >= 2 and f"ASR identical on all {k} patches" in ok_cell and f"onnxrt = single: {n:,} of {n:,} images bit-exact" in ok_cell
    assert "Gate failed" not in ok_cell and "clean 100.0%, patched 100.00%" in ok_cell
    findings = verdict[verdict.index('<ul class="findings">'):verdict.index("</ul>")]
    assert "litert-builtin on local does not behave like fake-quant for tiny w4a4" in findings
    assert "ASR differences are significant after Holm" in findings and "onnxrt behaves like the simulation" in findings
    assert "\u2713 AGREES</span> 1 of 2" in verdict and "\u2717 DIVERGES</span> 1 of 2" in verdict
    summary = _section(page, "summary")
    assert '<span class="badge pass">\u2713 PASSED</span>' in summary and '<span class="badge fail">\u2717 FAILED</span>' in summary


def test_one_model_label_on_every_side(two_runs, tmp_path):
    store, doc = two_runs
    page = write_report(store, tmp_path / "n", compare=doc).read_text()
    # the store's runs are named after ck/model.pt ("ck w4a4"); compare.json's checkpoint of the same sha256
    # names the model on every side, the bit width once
    assert "tiny w4a4" in _section(page, "kernels") and "tiny w4a4" in _section(page, "latency")
    assert "ck w4a4" not in page and "tiny_w4a4 w4a4" not in page


def test_bit_widths_in_numeric_order(two_runs, tmp_path):
    from eval._report_names import bits_key, label_key
    from eval.report import collect, render

    assert sorted(["m w8a8", "m float", "m w16a16", "m w2a2", "m w4a4"], key=label_key) == \
        ["m w2a2", "m w4a4", "m w8a8", "m w16a16", "m float"]
    assert sorted([None, (8, 8), (16, 16), (2, 2)], key=bits_key) == [(2, 2), (8, 8), (16, 16), None]
    store, doc = two_runs
    data = collect(store, compare=doc)
    base = data["comparisons"][0]
    cmps = [{**base, "info": {**base["info"], "bits": b, "checkpoint": "ck/tiny/model.pt", "source_sha256": "cd" * 32}}
            for b in ([8, 8], [16, 16], None, [2, 2], [4, 4])]
    page = render({**data, "comparisons": cmps})
    head = _section(page, "verdict")
    head = head[head.index('<table class="verdict">'):head.index("</thead>")]
    pos = [head.index(f"<th>{b}</th>") for b in ("w2a2", "w4a4", "w8a8", "w16a16", "float")]
    assert pos == sorted(pos)
    rows = _section(page, "summary")
    pos = [rows.index(f"<td>tiny {b}</td>") for b in ("w2a2", "w4a4", "w8a8", "w16a16", "float")]
    assert pos == sorted(pos)


def test_long_tables_fold_into_details(two_runs, tmp_path):
    from eval._report_html import SHOW_ROWS

    store, doc = two_runs
    page = write_report(store, tmp_path / "d", compare=doc).read_text()
    dis = _section(page, "disagreements")
    bad = dis[dis.index("litert-builtin vs fakequant"):]
    total = len(doc["comparisons"][1]["disagreements"])
    assert total > 2 * SHOW_ROWS
    shown, folded = bad.split("<details", 1)
    assert shown.count("<tr><td>") == SHOW_ROWS  # the first rows stay in view
    assert f"Show the other {total - SHOW_ROWS} of {total} samples</summary>" in folded
    assert folded[:folded.index("</details>")].count("<tr><td>") == total - SHOW_ROWS
    assert "<details" not in dis[:dis.index("litert-builtin vs fakequant")]  # a short table stays whole


def test_no_plot_with_a_single_point(two_runs, tmp_path):
    from eval._report_figures import fig_asr_pairs, fig_asr_vs_bits, fig_flips, fig_latency
    from eval.report import collect

    store, doc = two_runs
    data = collect(store, compare=doc)
    one = [{**doc["comparisons"][1], "patches": doc["comparisons"][1]["patches"][:1]}]
    assert fig_asr_pairs(one) is None and fig_flips(one) is None
    assert fig_latency([{**data["runs"][0], "latency_ms": [1.0], "latency_n": [8]}]) is None
    assert fig_asr_vs_bits(data["runs"]) is None  # every runtime at w4a4 only: no trend to draw
    w8 = [{**r, "bits": [8, 8]} for r in data["runs"]]
    assert fig_asr_vs_bits(data["runs"] + w8) is not None  # two bit widths per runtime: one plot
    page = write_report(store, tmp_path / "p", compare=doc).read_text()
    assert 'alt="ASR vs bit width"' not in page and 'alt="fake-quant vs deployed ASR per patch"' in page
    assert 'alt="flip matrix"' in page


def test_host_fingerprint_in_devices(two_runs, tmp_path):
    from eval.report import collect, render

    store, doc = two_runs
    data = collect(store, compare=doc)
    host = {"cpu": "AMD EPYC 9B14", "machine": "x86_64", "cores": 2, "isa": ["avx", "avx2", "avx512_vnni", "fma"],
            "int8_dot": "vnni", "ort_u8s8": "exact", "versions": {"onnxruntime": "1.31.1", "ai-edge-litert": "2.3.0"}}
    runs = [{**r, "device_info": {"name": r["device"], "host": host}} for r in data["runs"]]
    page = render({**data, "runs": runs})
    dev = _section(page, "devices")
    for text in ("AMD EPYC 9B14 (2 cores)", "avx2 yes", "avx512f no", "avx512_vnni yes", "avx_vnni no",
                 "<td>int8 dot-product kind</td><td>vnni</td>", "ORT u8s8 sums</td><td>exact",
                 "ai-edge-litert 2.3.0, onnxruntime 1.31.1"):
        assert text in dev, text
    assert "int8 dot product: vnni" in _section(page, "verdict")  # the verdict names the host it holds for
    bare = _section(render(data), "devices")  # a run without a fingerprint says so
    assert "not recorded (the run predates the host fingerprint)" in bare


def test_rerender_from_report_json(two_runs, tmp_path, capsys):
    store, doc = two_runs
    first = write_report(store, tmp_path / "a", compare=doc).read_text()
    (tmp_path / "compare.json").write_text(json.dumps(doc))
    store.unlink()  # the page comes back from report.json alone
    assert main(["--from-report", str(tmp_path / "a" / "report.json"), "--compare", str(tmp_path / "compare.json"),
                 "--out", str(tmp_path / "b")]) == 0
    again = (tmp_path / "b" / "report.html").read_text()
    assert _section(again, "verdict") == _section(first, "verdict") and len(_images(again)) == len(_images(first))
    assert "rendered" in again and "wrote" in capsys.readouterr().out
    assert main(["--from-report", str(tmp_path / "compare.json"), "--out", str(tmp_path / "c")]) == 1
    assert "is not a report.json of eval.report" in capsys.readouterr().err


# -- attacks on the deployed artifact (a patch file's made_on) -------------------------------------------------
def test_attacks_on_the_deployed_artifact(report_inputs, tiny_patches, tmp_path):
    """A patch made on a deployed artifact (its file's made_on) gets a row with its ASR on every run that replayed
    it, the run it attacked marked; a store whose patches were all made on fake-quant says so in one sentence."""
    import dataclasses

    import numpy as np

    from eval._report_html import pct
    from eval.replay import load_replay, make_replay
    from eval.store import Store
    from qadtr.attacks import load_patch, save_patch
    from qadtr.attacks.patchfile import deployed_on

    bare = _section(write_report(report_inputs[0], tmp_path / "bare").read_text(), "deployed-attacks")
    assert bare.count("<p>") == 1 and "No patch in this store was made on a deployed artifact" in bare
    assert "<table" not in bare
    pdir = tmp_path / "p"
    pdir.mkdir()
    shutil.copy(tiny_patches / "w4a4_universal_t1.npz", pdir / "a.npz")  # fake-quant: made_on ""
    made_on = deployed_on("onnxrt", "art/m.onnx", "ab" * 32)
    assert made_on == "onnxrt m.onnx " + "ab" * 8
    per_image = load_patch(tiny_patches / "w2a2_location_untargeted.npz")
    save_patch(dataclasses.replace(per_image, made_on=made_on), pdir / "q.npz")
    replay_path = make_replay(pdir, "cifar10", eval_subset=16, eval_seed=1, out=tmp_path / "replays")
    replay = load_replay(replay_path)
    assert [p.made_on for p in replay.info.patches] == ["", made_on]
    fooled = np.where(replay.patch == 1, (replay.labels + 1) % 10, replay.labels)  # q fools onnxrt on every image
    logits = {"onnxrt": np.eye(10)[fooled], "litert-builtin": np.eye(10)[replay.labels]}  # and litert-builtin on none
    with Store(tmp_path / "s.sqlite") as store:
        for rt, art, sha in (("onnxrt", "art/m.onnx", "ab" * 32), ("litert-builtin", "art/m.tflite", "cd" * 32)):
            run = store.open_run(device="local", runtime=rt, artifact=art, artifact_sha256=sha, replay=str(replay_path),
                                 replay_sha256=replay.sha256, samples=len(replay),
                                 options={"bits": [2, 2], "source_sha256": "ab" * 32}, emulated=False, kernels="k",
                                 device_info={"kind": "local"})
            store.write_batch(run.run_id, first=0, logits=logits[rt].astype(np.float32), seconds=1e-3)
            store.finish(run.run_id)
    page = write_report(tmp_path / "s.sqlite", tmp_path / "r").read_text()
    sec = _section(page, "deployed-attacks")
    want = {rt: dict(replay.asr(lg.argmax(1)))[replay.info.patches[1]].to_dict()["asr"] for rt, lg in logits.items()}
    assert sec.count("<tr><td>") == 1 and "<td>q</td>" in sec and f"<td>{made_on}</td>" in sec and "a.npz" not in sec
    assert f"<td>{pct(want['onnxrt'])} (attacked)</td>" in sec  # the runtime the attack queried
    assert f"<td>{pct(want['litert-builtin'])}</td>" in sec and sec.count("(attacked)</td>") == 1
    assert want["onnxrt"]["value"] == 1.0 and want["litert-builtin"]["value"] == 0.0 and want["onnxrt"]["n"] == 6
    assert "<th>litert-builtin \u00b7 ? w2a2</th><th>onnxrt \u00b7 ? w2a2</th>" in sec  # runtime, model (no checkpoint)
    assert "<h3>? w2a2: 1 patch</h3>" in sec  # one table per set of runs that replayed the same patches
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {a["patch"]: a["made_on"] for a in data["runs"][0]["asr"]} == {"a.npz": "", "q.npz": made_on}
    assert {p["patch"]: p["made_on"] for p in data["patches"]} == {"a.npz": "", "q.npz": made_on}
