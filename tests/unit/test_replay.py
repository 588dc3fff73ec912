"""eval.replay on the tiny model: layout, byte-exact blocks, ASR equal to eval.transfer's, cache, every refusal."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.replay import FORMAT_VERSION, MAGIC, ReplayInfo, load_replay, make_replay
from qadtr import QadtrError
from qadtr.data import subset_indices
from qadtr.attacks import eval_placements, load_patch, rebuild, save_patch

SUBSET, SEED = 16, 3


@pytest.fixture
def replay_path(tiny_dataset, tiny_patches, tmp_path) -> Path:
    return make_replay(tiny_patches, "cifar10", eval_subset=SUBSET, eval_seed=SEED, out=tmp_path)


def test_layout_and_bytes(replay_path, tiny_dataset, tiny_patches):
    r = load_replay(replay_path)
    test = tiny_dataset("cifar10", "test")
    subset = subset_indices(40, SUBSET, seed=1)
    info = r.info
    assert (info.dataset, info.eval_subset, info.eval_seed, info.n_subset) == ("cifar10", SUBSET, SEED, 16)
    assert info.hw == (8, 8)
    extra = sorted(set(range(6)) - set(subset.tolist()))
    assert extra and info.n_clean == 16 + len(extra)  # per-image images outside the subset get clean rows
    assert np.array_equal(r.test_index[:info.n_clean], np.concatenate([subset, extra]))
    assert np.array_equal(r.images[:info.n_clean], test.images[r.test_index[:info.n_clean]])  # clean = untouched
    assert np.array_equal(r.labels, test.labels[r.test_index])
    assert [p.file for p in info.patches] == sorted(p.name for p in tiny_patches.glob("*.npz"))
    assert [p.n for p in info.patches] == [6, 16, 16] and info.samples == info.n_clean + 38 == len(r)
    for k, ref in enumerate(info.patches):
        rows = slice(ref.first, ref.first + ref.n)
        assert np.all(r.patch[rows] == k)
        patch = load_patch(tiny_patches / ref.file)
        idx = patch.indices if patch.per_image else subset
        assert np.array_equal(r.test_index[rows], idx) and ref.per_image == patch.per_image
        want = rebuild(test.images[idx], patch.values, eval_placements(patch, len(idx), (8, 8), seed=SEED))
        assert r.images[rows].tobytes() == want.tobytes()
        assert (ref.target, ref.bits, ref.attack) == (patch.target, patch.bits, patch.attack)
    assert np.all(r.patch[:info.n_clean] == -1)


def _pixel_sum(images: np.ndarray) -> np.ndarray:
    return images.astype(np.int64).sum((1, 2, 3)) % 10  # (N,)


class PixelSumNet(torch.nn.Module):
    """Predicts (sum of pixel values) mod 10: any change of a patched image's bytes changes its class
    with probability 0.9, so ASRs are far from 0% and 100% (the tiny model predicts one class only)."""

    def forward(self, x):  # (B, 3, H, W) in [0, 1] -> (B, 10) one-hot
        s = torch.round(x * 255).sum((1, 2, 3))  # integer sums, exact in float32 (< 2^24)
        return torch.nn.functional.one_hot((s % 10).long(), 10).float()


def test_asr_equals_eval_transfer(replay_path, tiny_dataset, tiny_patches, tiny_checkpoint, monkeypatch):
    """Predictions on the replay rows give eval.transfer's ASRs (k and n) and clean accuracy exactly: for the
    tiny model's fake-quant networks, and for a network whose predictions vary from image to image."""
    import eval.transfer
    import qadtr.data
    from qadtr.checkpoint import load_checkpoint
    from qadtr.predict import predict
    from qadtr.models import deploy_net

    def split(name, which, data_dir=None, **kw):  # labels mostly equal to PixelSumNet's clean prediction
        s = tiny_dataset(name, which)
        labels = (_pixel_sum(s.images) + (np.arange(len(s.images)) % 3 == 0)) % 10
        return dataclasses.replace(s, labels=labels)

    monkeypatch.setattr(qadtr.data, "load_split", split)
    path = make_replay(tiny_patches, "cifar10", eval_subset=SUBSET, eval_seed=SEED, out=replay_path.parent / "sum")
    model, ck = load_checkpoint(tiny_checkpoint)
    nets = {f"tiny:w{w}a{a}": deploy_net(model, w, a) for w, a in ((2, 2), (4, 4), (8, 8))}
    nets["sum:float"] = PixelSumNet()
    monkeypatch.setattr(eval.transfer, "_targets", lambda _: [(k, v, ck.sha256, "cifar10") for k, v in nets.items()])
    rows = eval.transfer.transfer(tiny_patches, ["unused"], data_dir=None, eval_subset=SUBSET, eval_seed=SEED)
    r = load_replay(path)
    test = split("cifar10", "test")
    subset = subset_indices(40, SUBSET, seed=1)
    for label, net in nets.items():
        pred = predict(net, r.images)  # (M,): what a runtime returns, in row order
        ours = {ref.file: asr for ref, asr in r.asr(pred)}
        theirs = [row for row in rows if row["evaluated_on"] == label]
        assert len(theirs) == 3
        for row in theirs:
            asr = ours[row["patch"]]
            assert (asr.rate.k, asr.rate.n, asr.definition) == (row["asr"]["k"], row["asr"]["n"], row["definition"])
        want = int((predict(net, test.images[subset]) == test.labels[subset]).sum())
        assert (r.clean_accuracy(pred).k, r.clean_accuracy(pred).n) == (want, SUBSET)
    varied = [row["asr"] for row in rows if row["evaluated_on"] == "sum:float"]
    assert all(a["k"] > 0 for a in varied) and any(a["k"] < a["n"] for a in varied), varied  # not 0 == 0


def test_cache_reuses_and_inputs_rename(replay_path, tiny_dataset, tiny_patches, tmp_path, monkeypatch):
    import qadtr.attacks

    calls, real = [], qadtr.attacks.rebuild
    monkeypatch.setattr(qadtr.attacks, "rebuild", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = replay_path.stat().st_mtime_ns
    again = make_replay(tiny_patches, "cifar10", eval_subset=SUBSET, eval_seed=SEED, out=tmp_path)
    assert again == replay_path and replay_path.stat().st_mtime_ns == before and not calls  # reused
    other = make_replay(tiny_patches, "cifar10", eval_subset=SUBSET, eval_seed=SEED + 1, out=tmp_path)
    assert calls and other != replay_path and load_replay(other).info.key != load_replay(replay_path).info.key
    explicit = make_replay(tiny_patches, "cifar10", eval_subset=SUBSET, eval_seed=SEED, out=tmp_path / "r.npz")
    assert explicit.name == "r.npz" and load_replay(explicit).sha256 == load_replay(replay_path).sha256


def test_corrupt_cache_is_rebuilt(replay_path, tiny_dataset, tiny_patches, tmp_path):
    good = replay_path.read_bytes()
    replay_path.write_bytes(good[:-10] + b"0123456789")
    assert make_replay(tiny_patches, "cifar10", eval_subset=SUBSET, eval_seed=SEED, out=tmp_path) == replay_path
    assert replay_path.read_bytes() == good  # deterministic: the same bytes again


def _rewrite_npz(path: Path, **changes) -> None:
    """Rewrite the .npz with changed arrays and fix the sha256 in the .json, so only the content check fires."""
    import hashlib
    import io

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    js = path.with_suffix(".json")
    d = json.loads(js.read_text())
    d["_data"]["npz_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    js.write_text(json.dumps(d))


def _edit_json(path: Path, fn) -> None:
    js = path.with_suffix(".json")
    d = json.loads(js.read_text())
    fn(d)
    js.write_text(json.dumps(d))


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"x"), "sha256 differs"),
    (lambda p: p.with_suffix(".json").unlink(), "not found"),
    (lambda p: p.with_suffix(".json").write_text("{"), "not valid JSON"),
    (lambda p: _edit_json(p, lambda d: d.update(_version=ReplayInfo.VERSION + 1)),
     f"replay format version {ReplayInfo.VERSION + 1}"),
    (lambda p: _edit_json(p, lambda d: d.update(_type="Patch")), "not a replay description"),
    (lambda p: _edit_json(p, lambda d: d["_data"].pop("eval_seed")), "unreadable replay description"),
    (lambda p: _rewrite_npz(p, magic=np.frombuffer(b"QADTR-PATCH", dtype=np.uint8)), "bad magic"),
    (lambda p: _rewrite_npz(p, version=np.array(FORMAT_VERSION + 1)), "replay format version 2, this code"),
    (lambda p: _rewrite_npz(p, labels=np.zeros(3, dtype=np.int64)), "do not hold"),
    (lambda p: _rewrite_npz(p, images=np.zeros((3, 8, 8, 3), dtype=np.float32)), "not uint8"),
    (lambda p: _rewrite_npz(p, patch=np.zeros(load_replay(p).info.samples, dtype=np.int32)), "patch column"),
])
def test_load_refuses_damaged_files_with_a_hint(replay_path, damage, match):
    damage(replay_path)
    with pytest.raises(QadtrError, match=match) as e:
        load_replay(replay_path)
    assert "HINT" in str(e.value) and "\n" not in str(e.value)


def test_magic_is_in_the_npz(replay_path):
    with np.load(replay_path) as z:
        assert z["magic"].tobytes() == MAGIC and int(z["version"]) == FORMAT_VERSION


def test_refuses_patches_from_another_dataset(tiny_dataset, tiny_patches, tmp_path):
    for f in tiny_patches.glob("*universal*.npz"):
        save_patch(dataclasses.replace(load_patch(f), data="gtsrb/train"), tmp_path / "p" / f.stem)
    with pytest.raises(QadtrError, match=r"made on gtsrb/train, not cifar10; pass --data gtsrb"):
        make_replay(tmp_path / "p", "cifar10", out=tmp_path)
    loc = load_patch(next(tiny_patches.glob("*location*.npz")))
    save_patch(dataclasses.replace(loc, data="cifar10/train"), tmp_path / "q" / "loc")
    with pytest.raises(QadtrError, match=r"per-image patch made on cifar10/train, not cifar10/test"):
        make_replay(tmp_path / "q", "cifar10", out=tmp_path)
    save_patch(dataclasses.replace(loc, indices=loc.indices + 100), tmp_path / "r" / "loc")
    with pytest.raises(QadtrError, match=r"test indices up to 105 but cifar10/test has 40"):
        make_replay(tmp_path / "r", "cifar10", out=tmp_path)


def test_refuses_missing_or_empty_patch_folders(tiny_dataset, tmp_path):
    with pytest.raises(QadtrError, match="patch folder .* not found; make patches"):
        make_replay(tmp_path / "nowhere", "cifar10", out=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QadtrError, match=r"no patch files \(\*.npz\)"):
        make_replay(tmp_path / "empty", "cifar10", out=tmp_path)


# -- a description edited after the fact (issue 14): refused on load, never read into a changed ASR ----------------
def _seal(path: Path, fn) -> None:
    """Edit the description and recompute its own checksum, as someone who knows the format would."""
    from eval.replay import description_sha256

    def edit(d):
        fn(d["_data"])
        d["_data"]["sha256"] = description_sha256(d["_data"])

    _edit_json(path, edit)


def _targeted(d: dict) -> dict:
    return next(p for p in d["patches"] if p["target"] is not None)


def _refused(path: Path, match: str, **kw) -> str:
    with pytest.raises(QadtrError, match=match) as e:
        load_replay(path, **kw)
    assert "\n" not in str(e.value) and ("HINT" in str(e.value) or "make_replay" in str(e.value))
    return str(e.value)


@pytest.mark.parametrize("edit", [
    lambda d: _targeted(d).update(target=_targeted(d)["target"] + 1),  # every ASR of that patch changes
    lambda d: d.update(n_subset=d["n_subset"] - 4),  # clean accuracy's denominator changes
    lambda d: d["patches"][0].update(per_image=not d["patches"][0]["per_image"]),
    lambda d: d.update(eval_seed=d["eval_seed"] + 1),
])
def test_edited_description_is_refused(replay_path, edit):
    before = load_replay(replay_path)
    _edit_json(replay_path, lambda d: edit(d["_data"]))
    _refused(replay_path, "was edited: its content no longer matches its checksum")
    _edit_json(replay_path, lambda d: d.update(_data=before.info.to_dict()["_data"]))  # undone: it loads again
    assert load_replay(replay_path).sha256 == before.sha256


def test_a_resealed_edit_is_refused_against_the_runs_checksum(replay_path):
    """An edit with its checksum recomputed still loads alone, but not as the replay a run recorded."""
    recorded = load_replay(replay_path).sha256  # what eval.on_device stores as the run's replay_sha256
    _seal(replay_path, lambda d: _targeted(d).update(target=_targeted(d)["target"] + 1))
    assert load_replay(replay_path).sha256 != recorded
    _refused(replay_path, "is not the replay the run used", sha256=recorded)


def test_make_replay_rebuilds_an_edited_description(replay_path, tiny_dataset, tiny_patches, tmp_path):
    good = load_replay(replay_path)
    _seal(replay_path, lambda d: _targeted(d).update(target=_targeted(d)["target"] + 1))
    again = make_replay(tiny_patches, "cifar10", eval_subset=SUBSET, eval_seed=SEED, out=tmp_path)
    assert again == replay_path and load_replay(again).info.patches == good.info.patches  # not the edited one
    assert load_replay(again).sha256 == good.sha256  # rebuilt from the same inputs: the runs' checksum again


@pytest.mark.parametrize("edit, match", [
    (lambda d: _targeted(d).update(target=10), "targets class 10, outside the 10 classes"),
    (lambda d: _targeted(d).update(target=-1), "targets class -1"),
    (lambda d: _targeted(d).update(target="1"), "target is a str of the wrong kind"),
    (lambda d: _targeted(d).update(target=True), "target is a bool of the wrong kind"),
    (lambda d: d.update(n_subset=0), r"needs 1 <= n_subset \(0\)"),
    (lambda d: d.update(n_subset=d["n_clean"] + 1), "needs 1 <= n_subset"),
    (lambda d: d.update(n_clean=d["samples"] + 1), r"<= samples"),
    (lambda d: d.update(samples=d["samples"] + 1), "the blocks end at row"),
    (lambda d: d["patches"][1].update(first=d["patches"][1]["first"] + 1), "patch 1 starts at row"),
    (lambda d: d["patches"][0].update(n=-1), "patch 0 starts at row"),
    (lambda d: d.update(num_classes=0), "class count 0"),
    (lambda d: d.update(num_classes=2), "outside the 2 classes|labels outside the 2 classes"),
    (lambda d: d.update(hw=[8]), "hw is a list of the wrong kind"),
    (lambda d: d["patches"][0].update(bits=[[0, 2]]), r"bits \(\(0, 2\),\) out of range"),
    (lambda d: d["patches"][0].update(size=float("nan")), "size is a float of the wrong kind"),
    (lambda d: d["patches"][0].update(made_on=1), "made_on is a int of the wrong kind"),
    (lambda d: d["patches"][0].pop("made_on"), r"missing \['made_on'\]"),  # a description from before made_on
    (lambda d: d.update(patches={}), "patches is a dict of the wrong kind"),
    (lambda d: d["patches"].__setitem__(0, [1]), r"patch 0: not an object"),
    (lambda d: d.update(extra=1), r"unknown \['extra'\]"),
    (lambda d: d.pop("num_classes"), r"missing \['num_classes'\]"),
])
def test_a_resealed_description_is_still_checked(replay_path, edit, match):
    _seal(replay_path, edit)
    _refused(replay_path, match)


def _unused(r) -> int:
    """A test image with no clean row in the replay."""
    return next(i for i in range(40) if i not in set(r.test_index[:r.info.n_clean].tolist()))


@pytest.mark.parametrize("arrays, match", [
    (lambda r: dict(labels=np.where(np.arange(len(r)) == 0, 10, r.labels)), "labels outside the 10 classes"),
    (lambda r: dict(labels=np.where(np.arange(len(r)) == len(r) - 1, (r.labels + 1) % 10, r.labels)),
     "label differs from its clean row's"),
    (lambda r: dict(test_index=np.where(np.arange(len(r)) == len(r) - 1, _unused(r), r.test_index)),
     "has no clean row"),
    (lambda r: dict(test_index=np.where(np.arange(len(r)) == 1, r.test_index[0], r.test_index)), "distinct"),
])
def test_arrays_that_do_not_fit_the_description_are_refused(replay_path, arrays, match):
    """Arrays rewritten with the .npz sha256 fixed up: each refused on load, never a KeyError in Replay.asr."""
    _rewrite_npz(replay_path, **arrays(load_replay(replay_path)))
    _refused(replay_path, match)


def test_a_description_without_checksum_is_refused(replay_path, tiny_dataset, tiny_patches, tmp_path):
    """A replay written before descriptions had a checksum is refused with the fix, and make_replay rebuilds it."""
    _edit_json(replay_path, lambda d: [d["_data"].pop(k) for k in ("sha256", "num_classes")])
    _refused(replay_path, r"missing \['num_classes', 'sha256'\]")
    assert load_replay(make_replay(tiny_patches, "cifar10", eval_subset=SUBSET, eval_seed=SEED, out=tmp_path))
