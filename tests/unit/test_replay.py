"""eval.replay on the tiny model: layout, byte-exact blocks, ASR equal to eval.transfer's, cache, every refusal."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.replay import FORMAT_VERSION, MAGIC, load_replay, make_replay
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
        want = rebuild(test.images[idx], patch.values, eval_placements(patch, len(idx), (8, 8), SEED))
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
    (lambda p: _edit_json(p, lambda d: d.update(_version=FORMAT_VERSION + 1)), "replay format version 2"),
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
