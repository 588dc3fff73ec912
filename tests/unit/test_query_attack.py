"""Query attacks on deployed artifacts (eval/query): through real runners on the tiny 8x8 exports, and through a
numpy runner whose class is the patch's colour, where success is reachable by construction."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devices._runner import Runner, TensorSpec
from devices.runtimes import make_runner
from eval.query._search import paste
from eval.query.decision import DecisionConfig, decision_attack
from eval.query.refine import milestones, reference_asr, start_from_patch
from eval.query.sparse_rs import SparseRSConfig, sparse_rs
from qadtr._errors import QadtrError
from qadtr.attacks import EOTConfig, Patch, UniversalConfig, attack_success, eval_placements, rebuild

ROOT = Path(__file__).resolve().parents[2]
LABELS = np.arange(32) % 10


class ColourRunner(Runner):
    """A 4-class 'model' over NHWC float32 images: logits are the mean red, green and blue minus 0.5 plus a
    constant class 3 at 0.15; random images read as class 3, a patch of one strong colour wins its class."""

    name = "colour"
    kernels = "numpy colour means (test model)"

    def __init__(self, artifact=None):
        super().__init__()

    def _activate(self) -> None:
        pass

    def _input_spec(self):
        return [TensorSpec("pixels", np.dtype(np.float32), (None, None, None, 3))]

    def _infer(self, feed):
        x = feed["pixels"]  # (B, H, W, 3)
        rgb = (x ** 4).mean(axis=(1, 2)) - 0.2  # (B, 3): strong colours dominate
        return {"logits": np.concatenate([rgb, np.full((len(x), 1), 0.05, np.float32)], axis=1).astype(np.float32)}


class Wrapped(Runner):
    """A real runner behind the contract, counting rows and calls; optionally scrambling all but the top-1
    (`scramble`) or dying with SIGKILL at call `kill_at` (a kill -9 in the middle of an attack)."""

    def __init__(self, inner, *, scramble: bool = False, kill_at: int | None = None, raise_at: int | None = None):
        super().__init__()
        self.inner, self.scramble, self.kill_at, self.raise_at = inner, scramble, kill_at, raise_at
        self.name, self.kernels = inner.name, inner.kernels
        self.rows, self.calls = 0, 0
        self._rng = np.random.default_rng(123)

    def _activate(self) -> None:
        self.inner.activate()

    def _deactivate(self) -> None:
        self.inner.deactivate()

    def _input_spec(self):
        return self.inner.input_spec()

    def _infer(self, feed):
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at:
            os.kill(os.getpid(), 9)
        if self.calls == self.raise_at:
            raise KeyboardInterrupt  # an interruption the process survives: the state file is all that is kept
        out = self.inner.infer(feed)
        name, logits = next(iter(out.items()))
        self.rows += len(logits)
        if self.scramble:  # same argmax, every other value and every margin replaced by noise
            top = logits.reshape(len(logits), -1).argmax(axis=1)
            noise = self._rng.random((len(logits), logits.shape[-1])).astype(np.float32)
            noise[np.arange(len(top)), top] = 2.0
            out = {name: noise}
        return out


@pytest.fixture(scope="module")
def tiny_images8():
    return np.random.default_rng(1).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)


def onnx_runner(tiny_exports):
    pytest.importorskip("onnxruntime")
    return make_runner("onnxrt", tiny_exports["onnx"])


def test_loss_strictly_falls_to_success_on_a_reachable_model(tiny_images8):
    """Targeted at red (class 0) on the colour model: every accepted step lowers the mean margin, and it ends fooled."""
    labels = np.full(32, 3)
    with ColourRunner() as r:
        out = sparse_rs(r, tiny_images8, labels, cfg=SparseRSConfig(size=0.5, target=0, budget=80, seed=1))
    losses = out.extra["losses"]  # (T,) mean margin after each iteration
    assert (np.diff(losses) <= 0).all() and losses[-1] < losses[0]
    assert out.asr(labels).rate.value == 1.0
    assert (out.first_success[out.eligible] >= 2).all() and (out.first_success <= 80).all()


@pytest.mark.parametrize("universal,target", [(False, None), (False, 3), (True, 3), (True, None)])
def test_budget_and_asr_definitions_on_onnxrt(tiny_exports, tiny_images8, universal, target):
    budget = 12
    with Wrapped(onnx_runner(tiny_exports)) as r:
        out = sparse_rs(r, tiny_images8, LABELS, cfg=SparseRSConfig(size=0.2, target=target, budget=budget,
                                                               universal=universal, batch=64))
        rows, calls = r.rows, r.calls
        again = r.inner.infer(_feed(r, paste(tiny_images8, out.patches, out.xy)))
    assert rows <= len(tiny_images8) * budget and out.queries.max() <= budget and rows == out.queries.sum()
    assert calls <= budget  # batched: one call per iteration (64-row batches hold all 32 images)
    adv = next(iter(again.values())).argmax(axis=1)
    eligible = LABELS != target if target is not None else out.clean_pred == LABELS
    assert (out.eligible == eligible).all()
    assert (adv[eligible] == out.adv_pred[eligible]).all()  # the recorded predictions are the patched bytes'
    assert out.asr(LABELS) == attack_success(out.clean_pred, np.where(eligible, adv, out.clean_pred), LABELS,
                                             target=target)


def _feed(runner, images):
    from devices.runtimes import feed_format

    return feed_format(runner).feed(images)


@pytest.mark.parametrize("attack", ["per-image", "universal", "decision", "decision-universal"])
def test_resume_after_interruption_is_bit_identical(tmp_path, tiny_images8, attack):
    labels = np.full(32, 3)
    if attack.startswith("decision"):
        cfg = DecisionConfig(size=0.3, target=1, budget=40, save_every=5, universal=attack == "decision-universal")
        run = decision_attack
    else:
        cfg, run = SparseRSConfig(size=0.3, target=1, budget=40, universal=attack == "universal", save_every=5), \
            sparse_rs
    with ColourRunner() as r:
        whole = run(r, tiny_images8, labels, cfg=cfg, state_path=tmp_path / "a.npz")
    with Wrapped(ColourRunner(), raise_at=14) as r:  # after two checkpoints (every 5 iterations), mid-iteration
        with pytest.raises(KeyboardInterrupt):
            run(r, tiny_images8, labels, cfg=cfg, state_path=tmp_path / "b.npz")
    with ColourRunner() as r:
        resumed = run(r, tiny_images8, labels, cfg=cfg, state_path=tmp_path / "b.npz")
    _same(whole, resumed)


def test_resume_after_kill_9_is_bit_identical(tmp_path, tiny_exports, tiny_images8):
    """A real SIGKILL in a child process mid-attack, then a resume here: the same bytes as one uninterrupted run."""
    pytest.importorskip("onnxruntime")
    cfg = SparseRSConfig(size=0.2, target=3, budget=30, save_every=4)
    np.save(tmp_path / "images.npy", tiny_images8)
    script = (f"import numpy as np, sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]\n"
              "from test_query_attack import Wrapped, LABELS\nfrom devices.runtimes import make_runner\n"
              "from eval.query.sparse_rs import SparseRSConfig, sparse_rs\n"
              f"with Wrapped(make_runner('onnxrt', {str(tiny_exports['onnx'])!r}), kill_at=15) as r:\n"
              f"    sparse_rs(r, np.load({str(tmp_path / 'images.npy')!r}), LABELS, cfg=SparseRSConfig(size=0.2, "
              f"target=3, budget=30, save_every=4), state_path={str(tmp_path / 'b.npz')!r})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (tmp_path / "b.npz").is_file()
    with onnx_runner(tiny_exports) as r:
        resumed = sparse_rs(r, tiny_images8, LABELS, cfg=cfg, state_path=tmp_path / "b.npz")
    with onnx_runner(tiny_exports) as r:
        whole = sparse_rs(r, tiny_images8, LABELS, cfg=cfg)
    _same(whole, resumed)


def _same(a, b) -> None:
    for field in ("patches", "xy", "clean_pred", "adv_pred", "queries", "first_success", "trace"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


def test_decision_attack_reads_only_the_top1(tiny_images8):
    """Scrambling every logit but the argmax changes nothing: the attack saw labels only."""
    labels, cfg = np.full(32, 3), DecisionConfig(size=0.3, target=2, budget=40)
    with ColourRunner() as r:
        plain = decision_attack(r, tiny_images8, labels, cfg=cfg)
    with Wrapped(ColourRunner(), scramble=True) as r:
        scrambled = decision_attack(r, tiny_images8, labels, cfg=cfg)
    _same(plain, scrambled)
    assert plain.asr(labels).rate.k > 0  # it did find adversarial patches, then shrank them
    vis = plain.extra["visible_pixels"][(plain.first_success >= 0) & (plain.clean_pred != 2)]
    assert len(vis) and (vis > 0).all() and (vis <= plain.extra["side"] ** 2).all()  # clean-fooled ones shrink to 0
    assert vis.min() < plain.extra["side"] ** 2


def test_universal_decision_attack_reads_only_the_top1_and_climbs_the_fooled_share(tiny_images8):
    """One patch for all images from labels only: scrambling all but the argmax changes nothing (while the
    score-based search on the same runner does change), ties are kept, and the fooled count never falls."""
    labels = np.full(32, 3)
    cfg = DecisionConfig(size=0.3, target=2, budget=40, universal=True, location="shared")
    with ColourRunner() as r:
        plain = decision_attack(r, tiny_images8, labels, cfg=cfg)
    with Wrapped(ColourRunner(), scramble=True) as r:
        scrambled = decision_attack(r, tiny_images8, labels, cfg=cfg)
    _same(plain, scrambled)
    assert plain.patches.shape == (3, 4, 4) and plain.universal  # one 4x4 patch: 30% of 8x8, rounded down
    assert plain.asr(labels).rate.k == 32  # blue wins the colour model once the patch is blue enough
    fooled_per_iteration = plain.trace[:, 2]
    assert (np.diff(fooled_per_iteration) >= 0).all()
    assert plain.queries.max() <= cfg.budget
    score = SparseRSConfig(size=0.3, target=2, budget=40, universal=True, location="shared")
    with ColourRunner() as r:
        by_score = sparse_rs(r, tiny_images8, labels, cfg=score)
    with Wrapped(ColourRunner(), scramble=True) as r:
        by_scrambled_score = sparse_rs(r, tiny_images8, labels, cfg=score)
    assert not np.array_equal(by_score.patches, by_scrambled_score.patches)  # the check fails on a score-based search


def test_label_only_search_needs_a_universal_patch():
    with pytest.raises(ValueError, match="scores='top1' is the universal decision-based search"):
        SparseRSConfig(scores="top1")
    with pytest.raises(ValueError, match="choose one of"):
        SparseRSConfig(universal=True, scores="margins")
    with pytest.raises(ValueError, match="location='shared' moves one place for all images: it needs universal"):
        DecisionConfig(location="shared")


def test_refine_starts_from_the_replayed_bytes(tiny_exports, tiny_images8):
    side = 3
    values = np.random.default_rng(0).random((3, side, side)).astype(np.float32)
    patch = Patch(values=values, attack="universal", config=UniversalConfig(size=0.15), size=0.15, side=side,
                  target=3, eot=EOTConfig())
    start = start_from_patch(patch, 32, (8, 8), eval_seed=1)
    placement = eval_placements(patch, 32, (8, 8), seed=1)
    assert np.array_equal(paste(tiny_images8, start.patches, start.xy), rebuild(tiny_images8, values, placement))
    with onnx_runner(tiny_exports) as r:
        out = sparse_rs(r, tiny_images8, LABELS, cfg=SparseRSConfig(size=0.15, target=3, budget=10, universal=True),
                        start=start)
    m = milestones(out, reference=None)
    assert m["replayed_asr"] == out.trace[0, 2] / out.eligible.sum() and m["final_asr"] >= m["replayed_asr"]
    rotated = Patch(values=values, attack="universal", config=UniversalConfig(size=0.15), size=0.15, side=side,
                    target=3, eot=EOTConfig(max_angle=10.0))
    with pytest.raises(QadtrError, match="axis-aligned"):
        start_from_patch(rotated, 32, (8, 8), eval_seed=1)


def test_bad_input_is_one_line(tiny_exports, tiny_images8):
    with pytest.raises(ValueError, match="budget=0: must be >= 2"):
        SparseRSConfig(budget=0)
    with pytest.raises(ValueError, match="needs universal=True"):
        SparseRSConfig(location="shared")
    with onnx_runner(tiny_exports) as r:
        with pytest.raises(QadtrError, match="target 10 is no class of this model"):
            sparse_rs(r, tiny_images8, LABELS, cfg=SparseRSConfig(size=0.2, target=10, budget=5))
        big = np.zeros((4, 16, 16, 3), np.uint8)
        with pytest.raises(QadtrError, match="takes 8x8 images"):
            sparse_rs(r, big, LABELS[:4], cfg=SparseRSConfig(size=0.2, budget=5))


def test_cli_writes_a_typed_result_and_resumes(tmp_path, tiny_dataset, tiny_exports, capsys):
    pytest.importorskip("onnxruntime")
    from eval.query_attack import main

    argv = ["--artifact", str(tiny_exports["onnx"]), "--runtime", "onnxrt", "--images", "12", "--budget", "6",
            "--size", "0.2", "--out", str(tmp_path / "q")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "q" / "result.json").read_text())
    assert result["_type"] == "QueryResult" and result["_data"]["budget"] == 6
    assert set(result["_data"]["asr"]["asr"]) == {"value", "k", "n", "ci95"} and result["_data"]["host"]["machine"]
    from qadtr.attacks import load_patch  # the patch file names the runtime and artifact it was made on

    sha = result["_data"]["artifact_sha256"]
    assert load_patch(tmp_path / "q" / "patch.npz").made_on == f"onnxrt {tiny_exports['onnx'].name} {sha[:16]}"
    assert main(argv) == 1 and "already holds a finished query attack" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    capsys.readouterr()
    assert main([*argv[:6], "--budget", "0", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: budget=0") and err[1].startswith("FAILED") and len(err) == 2


@pytest.mark.parametrize("attack", ["sparse-rs", "decision"])
@pytest.mark.parametrize("location", ["shared", "per-image"])
def test_a_universal_patch_is_measured_on_images_it_never_queried(tmp_path, tiny_dataset, tiny_exports, capsys,
                                                                  location, attack):
    """--holdout: the refined patch's ASR on the attacked images is optimistic (it was fitted to them); the held-out
    ASR comes from images disjoint from them, through the same runner, placed as the result says. The same for the
    universal patch of the decision attack (top-1 labels only)."""
    pytest.importorskip("onnxruntime")
    from eval.query_attack import main
    from qadtr.attacks import EOTConfig, load_patch
    from qadtr.data import heldout_indices

    out = tmp_path / "q"
    argv = ["--artifact", str(tiny_exports["onnx"]), "--runtime", "onnxrt", "--images", "16", "--budget", "8",
            "--size", "0.2", "--target", "3", "--universal", "--location", location, "--holdout", "20",
            "--attack", attack, "--out", str(out)]
    assert main(argv) == 0
    assert "held out: ASR" in capsys.readouterr().out
    res = json.loads((out / "result.json").read_text())
    assert res["_version"] == 2
    held, attacked = res["_data"]["holdout"], res["_data"]["indices"]
    assert not set(held["indices"]) & set(attacked) and len(held["indices"]) == 20
    assert held["indices"] == heldout_indices(40, 16, 20, seed=1).tolist()
    # recomputed here from the written patch file: the same ASR on the same held-out images
    patch = load_patch(out / "patch.npz")
    if location == "per-image":
        assert "seeded random placements" in held["placement"]
        patch = dataclasses.replace(patch, values=patch.values[0], indices=None, placement=None, eot=EOTConfig())
    else:  # the patch file stores the shared place once per image where ineligible images kept their first one
        placed, labels = patch.placement, tiny_dataset("cifar10", "test").labels[attacked]
        k = int(np.flatnonzero(labels != 3)[0])  # an eligible image: it carries the shared place
        x, y = (int(placed.x[k]), int(placed.y[k])) if placed is not None else patch.eot.xy
        assert held["placement"].startswith("the attack's shared location")
        patch = dataclasses.replace(patch, values=patch.values if patch.values.ndim == 3 else patch.values[0],
                                    indices=None, placement=None, eot=EOTConfig(location="fixed", xy=(x, y)))
    test = tiny_dataset("cifar10", "test")
    idx = np.array(held["indices"])
    with make_runner("onnxrt", tiny_exports["onnx"]) as r:
        want = reference_asr(r, test.images[idx], test.labels[idx],
                             start=start_from_patch(patch, len(idx), (8, 8), eval_seed=1), target=3)
    assert held["asr"] == want.to_dict()


def test_holdout_is_refused_where_it_means_nothing(tmp_path, tiny_dataset, tiny_exports, capsys):
    pytest.importorskip("onnxruntime")
    from eval.query_attack import main

    base = ["--artifact", str(tiny_exports["onnx"]), "--runtime", "onnxrt", "--budget", "4", "--size", "0.2"]
    for extra, msg in ((["--images", "16", "--holdout", "5"], "add --universal or drop --holdout"),
                       (["--images", "30", "--holdout", "20", "--universal"], "leave none of the 40 images"),
                       (["--images", "0", "--holdout", "5", "--universal"], "leave none of the 40 images"),
                       (["--images", "16", "--holdout", "-1", "--universal"], "--holdout -1")):
        assert main(base + extra + ["--out", str(tmp_path / "x")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert msg in err[0] and err[0].startswith("error:") and len(err) == 2, err


def test_a_refined_patch_is_paired_with_its_start_on_the_held_out_images(tmp_path, tiny_dataset, tiny_exports):
    """Transfer-then-refine with --holdout: the start patch's held-out ASR at the very same places as the refined
    one's, so the two numbers are a paired comparison (did refining on the attacked images carry over?)."""
    pytest.importorskip("onnxruntime")
    from eval.query.run import run_query_attack
    from qadtr.attacks import save_patch
    from qadtr.data import heldout_indices

    side = 3
    values = np.random.default_rng(0).random((3, side, side)).astype(np.float32)
    init = Patch(values=values, attack="universal", config=UniversalConfig(size=0.15), size=0.15, side=side,
                 target=3, eot=EOTConfig())
    save_patch(init, tmp_path / "init.npz")
    test = tiny_dataset("cifar10", "test")
    a, h = np.arange(16), heldout_indices(40, 16, 20, seed=1)
    res = run_query_attack(attack="sparse-rs", cfg=SparseRSConfig(size=0.15, target=3, budget=6, universal=True),
                           runtime="onnxrt", artifact=tiny_exports["onnx"], images=test.images[a],
                           labels=test.labels[a], indices=a, data="cifar10/test", out=tmp_path / "q",
                           init=tmp_path / "init.npz", reference=tiny_exports["onnx"],
                           holdout=(test.images[h], test.labels[h], h))
    with onnx_runner(tiny_exports) as r:
        want = reference_asr(r, test.images[h], test.labels[h], start=start_from_patch(init, 20, (8, 8), eval_seed=1),
                             target=3)
    assert res.holdout["start_asr"] == want.to_dict() and res.holdout["asr"]["asr"]["n"] == want.rate.n


@pytest.mark.parametrize("universal", [False, True])
@pytest.mark.parametrize("device, prefix", [(None, ""), ({"name": "local", "kind": "local"}, ""),
                                            ({"name": "rpi4-emu", "kind": "arm-emu"}, "rpi4-emu/")])
def test_the_patch_file_says_which_artifact_and_device_it_was_made_on(tmp_path, tiny_images8, device, prefix,
                                                                      universal):
    """made_on: "<runtime> <artifact file> <sha256[:16]>", a remote device's name before the runtime."""
    from eval.query.run import run_query_attack
    from qadtr.attacks import load_patch

    art = tmp_path / "colour.bin"
    art.write_bytes(b"the colour model")
    res = run_query_attack(attack="sparse-rs", cfg=SparseRSConfig(size=0.3, target=1, budget=4, universal=universal,
                                                                  location="shared" if universal else "per-image"),
                           runtime="colour", artifact=art, images=tiny_images8[:4], labels=np.full(4, 3),
                           indices=np.arange(4), data="cifar10/test", out=tmp_path / "q", device=device,
                           open_runner=lambda runtime, path, **kw: ColourRunner(path))
    patch = load_patch(tmp_path / "q" / "patch.npz")
    assert patch.per_image != universal and patch.made_on == f"{prefix}colour colour.bin {res.artifact_sha256[:16]}"
