"""qadtr.attacks on toy models (seconds): placement, replay, attacks, ASR, patch files, CLI errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from qadtr import QadtrError
from qadtr.attacks import (AqapaConfig, EOTConfig, LavanConfig, LocationConfig, Placement, UniversalConfig,
                           apply_patch, aqapa_patch, attack_success, eval_placements, evaluate_patch, index_map,
                           lavan_patch, load_patch, location_patch, patch_side, rebuild, sample_placements,
                           save_patch, universal_patch)
from qadtr.attacks import _place
from qadtr.attacks.patchfile import FORMAT_VERSION, MAGIC
from qadtr.predict import to_tensor

ROOT = Path(__file__).resolve().parents[2]
EOT_ALL = EOTConfig(max_angle=40.0, scale=(0.8, 1.2), brightness=(0.9, 1.3))


def _images(n: int, hw: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)  # (N, H, W, 3)


# --- placement and replay -------------------------------------------------------------------------------

def test_patch_side_rounds_area_fraction():
    assert [patch_side(f, (32, 32)) for f in (0.02, 0.05, 0.1)] == [5, 7, 10]
    with pytest.raises(ValueError, match="fraction of the image area"):
        patch_side(1.5, (32, 32))


def test_identity_placement_pastes_the_patch_exactly():
    images = _images(2)
    patch = np.random.default_rng(1).uniform(0, 1, (3, 5, 5)).astype(np.float32)
    out = rebuild(images, patch, Placement.fixed(2, x=7, y=3))
    expected = images.copy()
    expected[:, 3:8, 7:12] = np.rint(patch.transpose(1, 2, 0) * np.float32(255)).astype(np.uint8)
    assert np.array_equal(out, expected)


def test_rebuild_is_deterministic_and_equals_the_differentiable_path():
    images = _images(16)
    patch = np.random.default_rng(2).uniform(0, 1, (3, 10, 10)).astype(np.float32)
    pl = sample_placements(16, side=10, hw=(32, 32), eot=EOT_ALL, rng=np.random.default_rng(3))
    a, b = rebuild(images, patch, pl), rebuild(images.copy(), patch.copy(), pl[np.arange(16)])
    assert a.dtype == np.uint8 and a.tobytes() == b.tobytes()
    diff = apply_patch(to_tensor(images), torch.from_numpy(patch), pl)  # forward of the attack path
    assert torch.equal(diff, to_tensor(a))  # bit for bit, not approximately


def test_rebuild_matches_golden_hash():
    """A fixed input's bytes, hashed once: any change of geometry or rounding (or a platform whose float
    arithmetic differs) breaks replay of stored patch files, and this test."""
    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    patch = rng.uniform(0, 1, (3, 10, 10)).astype(np.float32)
    pl = Placement(x=[3, 10, 0, 20, 5, 11], y=[4, 0, 12, 20, 7, 9], angle=[0, 17.5, -33.25, 90, 45, -120.5],
                   scale=[1, 0.8, 1.15, 1, 0.9, 1.05], brightness=[1, 0.7, 1.3, 1, 1.1, 0.95])
    digest = hashlib.sha256(rebuild(images, patch, pl).tobytes()).hexdigest()
    assert digest == "12c3c5027d5b9f7144024f6b2fb7dbbf942346f44dcec2ff1bfab96512b097af"


def test_cos_sin_polynomial_is_accurate():
    for deg in (-180.0, -120.5, -33.25, 0.0, 17.5, 45.0, 90.0, 179.0):
        c, s = _place._cos_sin(deg)
        assert abs(c - math.cos(math.radians(deg))) < 1e-12 and abs(s - math.sin(math.radians(deg))) < 1e-12


def test_eot_ranges_are_respected_and_patch_stays_inside():
    side, n = 8, 400
    pl = sample_placements(n, side=side, hw=(32, 32), eot=EOT_ALL, rng=np.random.default_rng(0))
    assert np.all(np.abs(pl.angle) <= 40.0) and np.abs(pl.angle).max() > 30.0
    assert np.all((pl.scale >= 0.8) & (pl.scale <= 1.2)) and np.all((pl.brightness >= 0.9) & (pl.brightness <= 1.3))
    for i in range(n):  # every corner of the rotated, scaled square lies in the image
        c, s = math.cos(math.radians(pl.angle[i])), math.sin(math.radians(pl.angle[i]))
        half = side * pl.scale[i] / 2
        cx, cy = pl.x[i] + half, pl.y[i] + half
        for u, v in ((-half, -half), (half, -half), (-half, half), (half, half)):
            px, py = cx + c * u - s * v, cy + s * u + c * v
            assert -1e-6 <= px <= 32 + 1e-6 and -1e-6 <= py <= 32 + 1e-6
    covered = (index_map(pl, side, (32, 32)) >= 0).sum((1, 2))  # pixels under each patch
    assert np.allclose(covered, (side * pl.scale) ** 2, rtol=0.25)
    xs = sample_placements(n, side=side, hw=(32, 32), eot=EOTConfig(), rng=np.random.default_rng(1)).x
    assert xs.min() == 0 and xs.max() == 32 - side  # random location spans the whole image


def test_eot_config_validation():
    with pytest.raises(ValueError, match="location="):
        EOTConfig(location="corner")
    with pytest.raises(ValueError, match=r"max_angle=200"):
        EOTConfig(max_angle=200)
    with pytest.raises(ValueError, match=r"scale=.*0 < lo <= hi"):
        EOTConfig(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match=r"brightness=.*0 < lo <= hi"):
        EOTConfig(brightness=(0.0, 1.0))
    with pytest.raises(ValueError, match="xy="):
        EOTConfig(location="fixed", xy=(-1, 0))
    with pytest.raises(ValueError, match="fixed location takes no rotation"):
        EOTConfig(location="fixed", max_angle=10)
    with pytest.raises(QadtrError, match="leaves the"):
        sample_placements(1, side=10, hw=(32, 32), eot=EOTConfig(location="fixed", xy=(25, 0)),
                          rng=np.random.default_rng(0))
    with pytest.raises(QadtrError, match="does not fit"):
        sample_placements(1, side=30, hw=(32, 32), eot=EOTConfig(max_angle=45), rng=np.random.default_rng(0))


# --- attacks --------------------------------------------------------------------------------------------

class CornerNet(nn.Module):
    """A toy classifier where a targeted patch can succeed: class 3 fires on any magenta pixel.

    A 1x1 conv scores each pixel per class, global max pooling takes the strongest pixel. Class 0 has a
    bias that wins on the dull clean images (pixels <= 0.4); class 3 scores 4r + 4b - 8g - 6, so only a
    pixel near magenta (1, 0, 1), at brightness >= 0.9, anywhere in the image beats it. A random patch
    almost never has one (P(r + b - 2g > 1.75) ~ 0.1% per pixel).
    """

    def __init__(self):
        super().__init__()
        self.score = nn.Conv2d(3, 10, 1)
        with torch.no_grad():
            self.score.weight.zero_()
            self.score.bias.zero_()
            self.score.bias[0] = 1.0
            self.score.weight[3, :, 0, 0] = torch.tensor([4.0, -8.0, 4.0])
            self.score.bias[3] = -6.0
            self.score.weight[5, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3])

    def forward(self, x):  # (B, 3, H, W) -> (B, 10)
        return self.score(x).amax((2, 3))


@pytest.fixture(scope="module")
def dull_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 100, (64, 16, 16, 3), dtype=np.uint8)  # pixels <= 0.39: class 0 wins
    return images, np.zeros(64, dtype=np.int64)


def _random_patch_asr(net, patch, images, labels):
    noise = np.random.default_rng(9).uniform(0, 1, patch.values.shape).astype(np.float32)
    return evaluate_patch(net, dataclasses.replace(patch, values=noise), images, labels=labels).rate.value


@pytest.mark.slow  # a universal patch optimised to its target: ~15 s each, loaded
@pytest.mark.parametrize("optimizer,lr", [("adam", 0.2), ("sign", 0.05)])
def test_universal_patch_reaches_the_target(dull_images, optimizer, lr):
    images, labels = dull_images
    net = CornerNet()
    cfg = UniversalConfig(size=0.05, target=3, steps=30, batch_size=16, optimizer=optimizer, lr=lr, eot=EOT_ALL)
    patch = universal_patch(net, images, labels, cfg=cfg)
    assert patch.values.dtype == np.float32 and patch.values.shape == (3, 4, 4)
    assert patch.values.min() >= 0.0 and patch.values.max() <= 1.0
    assert _random_patch_asr(net, patch, images, labels) < 0.3
    asr = evaluate_patch(net, patch, images, labels=labels, seed=5)
    assert asr.rate.value > 0.9 and asr.rate.n == 64
    assert all(p.requires_grad for p in net.parameters())  # attack_mode restored the model


@pytest.mark.slow  # two attacks optimised to their target: ~25 s loaded
def test_lavan_and_location_patches_reach_the_target(dull_images):
    images, labels = dull_images
    net = CornerNet()
    patch = lavan_patch(net, images, labels, cfg=LavanConfig(size=0.05, target=3, steps=30, batch_size=16, lr=0.2))
    assert patch.eot.location == "fixed" and patch.eot.xy == (12, 12)  # bottom-right corner of 16x16
    assert evaluate_patch(net, patch, images, labels=labels).rate.value > 0.9
    per_image = location_patch(net, images[:8], labels[:8], cfg=LocationConfig(size=0.05, target=3, steps=10, lr=0.1))
    assert per_image.values.shape == (8, 3, 4, 4) and len(per_image.placement) == 8
    assert evaluate_patch(net, per_image, images[:8], labels=labels[:8]).rate.value == 1.0


@pytest.mark.slow  # ~13 s loaded
def test_location_search_moves_patches_downhill():
    """A model that prefers the patch near the top-left: the greedy search walks it there."""
    class TopLeft(nn.Module):
        def forward(self, x):  # (B, 3, 16, 16): class 1 rises with brightness near (0, 0)
            weight = torch.linspace(1.0, 0.0, 16)
            ramp = weight.view(1, 1, 16, 1) * weight.view(1, 1, 1, 16)
            score = (x * ramp).sum((1, 2, 3))
            return torch.stack([torch.full_like(score, 20.0), score], 1)

    images = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    cfg = LocationConfig(size=0.05, target=1, steps=20, lr=0.2, stride=2, move_every=1, seed=3)
    patch = location_patch(TopLeft(), images, np.zeros(4, dtype=np.int64), cfg=cfg)
    rng = np.random.default_rng(3)  # replay location_patch's draws: patch values, then start placements
    rng.uniform(0.0, 1.0, (4, 3, 4, 4))
    start = sample_placements(4, side=4, hw=(16, 16), eot=EOTConfig(), rng=rng)
    assert np.all(start.x + start.y > 2)  # the search had somewhere to go
    assert np.all(patch.placement.x + patch.placement.y <= start.x + start.y)
    assert np.all(patch.placement.x + patch.placement.y <= 2)


@pytest.mark.slow  # patches optimised at three bit widths: ~50 s on a loaded 2-core host
def test_aqapa_weights_the_weakest_bit_width(tiny_checkpoint):
    from qadtr.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    images = _images(48, hw=8, seed=4)
    labels = np.random.default_rng(4).integers(0, 10, 48)
    cfg = AqapaConfig(size=0.1, target=2, steps=15, batch_size=16, temperature=0.05, momentum=0.0)
    patch = aqapa_patch(model, images, labels, cfg=cfg)
    assert patch.bits == ((2, 2), (4, 4), (8, 8)) and model.active == "w2a2"
    for entry in patch.log:  # momentum 0, T small: the weight sits on this step's highest loss
        alpha, losses = entry["alpha"], entry["loss_per_bits"]
        assert abs(sum(alpha.values()) - 1.0) < 1e-3
        assert max(alpha, key=alpha.get) == max(losses, key=losses.get)
    assert patch.log[-1]["loss"] < patch.log[0]["loss"]
    with pytest.raises(QadtrError, match="needs a quantized"):
        aqapa_patch(CornerNet(), images, labels, cfg=cfg)
    with pytest.raises(QadtrError, match="no bit widths"):
        aqapa_patch(model, images, labels, cfg=dataclasses.replace(cfg, bits=((6, 6),)))


@pytest.mark.parametrize("cls,kwargs,match", [
    (UniversalConfig, dict(size=0.0), "fraction of the image area"),
    (UniversalConfig, dict(target=-1), "class index"),
    (UniversalConfig, dict(steps=0), "steps=0"),
    (UniversalConfig, dict(optimizer="sgd"), "optimizer="),
    (UniversalConfig, dict(lr=0.0), "lr=0.0"),
    (LavanConfig, dict(xy=(-1, 2)), "xy="),
    (LocationConfig, dict(stride=0), "stride=0"),
    (AqapaConfig, dict(temperature=0.0), "temperature=0.0"),
    (AqapaConfig, dict(momentum=1.0), "momentum=1.0"),
])
def test_attack_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_attack_rejects_bad_data():
    with pytest.raises(QadtrError, match="uint8"):
        universal_patch(CornerNet(), np.zeros((2, 8, 8, 3), np.float32), np.zeros(2), cfg=UniversalConfig(steps=1))
    with pytest.raises(QadtrError, match="every image is of the target class"):
        universal_patch(CornerNet(), _images(2, 16), np.full(2, 3), cfg=UniversalConfig(target=3, steps=1))


# --- ASR ------------------------------------------------------------------------------------------------

def test_asr_definitions_on_hand_made_predictions():
    labels = np.array([0, 1, 2, 3, 3, 1, 0, 2])
    clean = np.array([0, 1, 2, 3, 1, 1, 2, 2])  # correct: indexes 0, 1, 2, 3, 5, 7 (6 of 8)
    adv = np.array([3, 1, 3, 3, 3, 0, 3, 2])  # changed among correct: 0, 2, 5 -> 3 of 6
    un = attack_success(clean, adv, labels)
    assert (un.rate.k, un.rate.n, un.target) == (3, 6, None) and "originally correct" in un.definition
    tg = attack_success(clean, adv, labels, target=3)  # non-target: 6 images; as 3: indexes 0, 2, 6
    assert (tg.rate.k, tg.rate.n, tg.target) == (3, 6, 3) and "not the target" in tg.definition
    assert tg.to_dict()["asr"]["ci95"][0] < 0.5 < tg.to_dict()["asr"]["ci95"][1]
    assert str(tg).startswith("targeted (target 3) ASR 50.00%")
    with pytest.raises(QadtrError, match="same images"):
        attack_success(clean, adv[:3], labels)


# --- patch files ----------------------------------------------------------------------------------------

@pytest.fixture
def saved_patch(tmp_path, dull_images):
    images, labels = dull_images
    cfg = UniversalConfig(size=0.05, target=3, steps=2, batch_size=8, eot=EOT_ALL)
    patch = universal_patch(CornerNet(), images, labels, cfg=cfg).with_source(model_sha256="ab" * 32, bits=((8, 8),),
                                                                        data="toy/train")
    return patch, save_patch(patch, tmp_path / "p")


def test_patch_file_roundtrip_rebuilds_identical_bytes(saved_patch, dull_images):
    patch, path = saved_patch
    assert path.suffix == ".npz" and path.with_suffix(".png").is_file() and path.with_suffix(".json").is_file()
    back = load_patch(path)
    assert back.values.tobytes() == patch.values.tobytes() and back.config == patch.config
    assert (back.target, back.eot, back.bits, back.side, back.model_sha256) == (3, EOT_ALL, ((8, 8),), 4, "ab" * 32)
    images = dull_images[0]
    a = rebuild(images, patch.values, eval_placements(patch, len(images), (16, 16), seed=7))
    b = rebuild(images, back.values, eval_placements(back, len(images), (16, 16), seed=7))
    assert a.tobytes() == b.tobytes()


def test_per_image_patch_file_roundtrip(tmp_path, dull_images):
    images, labels = dull_images
    patch = location_patch(CornerNet(), images[:4], labels[:4], cfg=LocationConfig(size=0.05, steps=2))
    back = load_patch(save_patch(patch, tmp_path / "loc"))
    assert back.per_image and np.array_equal(back.indices, np.arange(4))
    a = rebuild(images[:4], patch.values, patch.placement)
    assert a.tobytes() == rebuild(images[:4], back.values, back.placement).tobytes()


def _rewrite(path: Path, **changes) -> Path:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("changes,match", [
    (dict(magic=np.frombuffer(b"NOT-A-PATCH", np.uint8)), "bad magic"),
    (dict(version=np.array(FORMAT_VERSION + 1)), "format version 2.*HINT: re-create"),
    (dict(values=np.full((3, 4, 4), 1.5, np.float32)), r"outside \[0, 1\].*HINT"),
    (dict(values=np.full((3, 4, 4), np.nan, np.float32)), "NaN"),
    (dict(values=np.zeros((3, 5, 5), np.float32)), r"shape \(3, 5, 5\), expected \(3, 4, 4\)"),
    (dict(values=np.zeros((3, 4, 4), np.float64)), "float64, expected float32"),
    (dict(values=np.zeros((2, 3, 4, 4), np.float32)), "without placements"),
    (dict(meta=np.array("{not json")), "unreadable metadata"),
    (dict(values=None), r"lacks \['values'\]"),
])
def test_patch_file_validation_errors(saved_patch, changes, match):
    _, path = saved_patch
    with pytest.raises(QadtrError, match=match):
        load_patch(_rewrite(path, **changes))


def test_patch_file_not_found_or_not_npz(tmp_path):
    with pytest.raises(QadtrError, match="not found"):
        load_patch(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(QadtrError, match="not a readable .npz"):
        load_patch(tmp_path / "junk.npz")
    assert MAGIC == b"QADTR-PATCH"


# --- CLI ------------------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qadtr.attack", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args,match", [
    (["--size", "1.5"], "fraction of the image area"),
    (["--target", "cat"], "class index"),
    (["--target", "12"], "has 10 classes"),
    (["--attack", "fgsm"], "unknown attack"),
    (["--bits", "3"], "the model has"),
    (["--scale", "1"], "two numbers"),
])
@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_cli_bad_input_exits_1_with_one_line(tiny_checkpoint, tmp_path, args, match):
    res = _cli(str(tiny_checkpoint), "--out", str(tmp_path), *args)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("FAILED |")
    assert match in lines[0]


def test_cli_missing_checkpoint_exits_1(tmp_path):
    res = _cli(str(tmp_path / "nope"), "--out", str(tmp_path))
    assert res.returncode == 1 and "Traceback" not in res.stderr and "not found" in res.stderr


def _fake_split(name, split, data_dir=None, **kw):
    """An in-memory 8x8 dataset standing in for `qadtr.data.load_split` in the CLI tests."""
    import qadtr.data

    n = 64 if split == "train" else 32
    return qadtr.data.Split(_images(n, hw=8, seed=len(split)), np.arange(n) % 10, tuple("abcdefghij"),
                            name, split, "memory")


def test_cli_writes_patch_files(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """The whole CLI path on the 8x8 test model, with an in-memory 8x8 dataset."""
    import qadtr.data
    from qadtr.attack import main

    monkeypatch.setattr(qadtr.data, "load_split", _fake_split)
    rc = main([str(tiny_checkpoint), "--attack", "universal", "--bits", "4", "--size", "0.05,0.1", "--target", "1",
               "--steps", "3", "--out", str(tmp_path)])
    assert rc == 0
    names = sorted(p.name for p in tmp_path.glob("*.npz"))
    assert names == ["w4a4_universal_s05_t1.npz", "w4a4_universal_s10_t1.npz"]
    patch = load_patch(tmp_path / names[1])
    assert patch.bits == ((4, 4),) and patch.data == "cifar10/train" and len(patch.model_sha256) == 64
    report = json.loads((tmp_path / "w4a4_universal_s10_t1.asr.json").read_text())
    assert report["asr"]["w4a4"]["asr"]["n"] > 0 and "targeted ASR" in report["asr"]["w4a4"]["definition"]
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_transfer_evaluates_every_patch_on_every_bit_width(tiny_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import qadtr.data
    from eval.transfer import main as transfer_main
    from qadtr.attack import main as attack_main

    monkeypatch.setattr(qadtr.data, "load_split", _fake_split)
    patches = tmp_path / "patches"
    for bits in ("2", "8"):
        assert attack_main([str(tiny_checkpoint), "--bits", bits, "--size", "0.1", "--target", "1", "--steps", "2",
                            "--out", str(patches)]) == 0
    assert attack_main([str(tiny_checkpoint), "--attack", "location", "--bits", "4", "--size", "0.1", "--steps", "2",
                        "--eval-subset", "8", "--out", str(patches)]) == 0
    out = tmp_path / "transfer"
    assert transfer_main(["--patches", str(patches), "--checkpoints", str(tiny_checkpoint), "--out", str(out)]) == 0
    rows = json.loads((out / "transfer.json").read_text())["rows"]
    assert len(rows) == 3 * 3  # 3 patches x 3 bit widths of one checkpoint
    assert {r["evaluated_on"].split(":")[1] for r in rows} == {"w2a2", "w4a4", "w8a8"}
    assert {r["source"].split(":")[1] for r in rows} == {"w2a2", "w4a4", "w8a8"}
    location = [r for r in rows if r["attack"] == "location"]
    assert all(r["target_class"] is None and r["asr"]["n"] <= 8 for r in location)
    assert len((out / "transfer.csv").read_text().splitlines()) == 1 + len(rows)
    assert sorted(p.name for p in out.glob("*.png")) == ["heatmap_location_s10_untargeted.png",
                                                        "heatmap_universal_s10_t1.png"]


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_strength_sweep_writes_rows_and_resumes(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """eval.strength on the 8x8 test model: one row per (bits, eot, target); a re-run makes nothing new."""
    import qadtr.data
    from eval.strength import main as strength_main

    monkeypatch.setattr(qadtr.data, "load_split", _fake_split)
    args = ["--checkpoints", str(tiny_checkpoint), "--targets", "1,3", "--eot", "plain,rotscale", "--steps", "2",
            "--batch-size", "8", "--out", str(tmp_path)]
    assert strength_main(args) == 0
    rows = json.loads((tmp_path / "strength.json").read_text())["rows"]
    assert len(rows) == 3 * 2 * 2  # 3 bit widths x 2 EOT variants x 2 targets
    assert {(r["bits"], r["eot"], r["target"]) for r in rows} == {
        (b, e, t) for b in ("w2a2", "w4a4", "w8a8") for e in ("plain", "rotscale") for t in (1, 3)}
    rot = load_patch(tmp_path / next(r["patch"] for r in rows if r["eot"] == "rotscale"))
    assert rot.eot.max_angle == 22.5 and rot.eot.scale == (0.9, 1.1)
    assert all(0 <= r["asr"]["value"] <= 1 and r["asr"]["n"] > 0 for r in rows)
    assert len((tmp_path / "strength.md").read_text().splitlines()) == 2 + len(rows)
    capsys.readouterr()
    assert strength_main(args) == 0  # resumed: every row exists, nothing is redone
    assert "12 row(s) already" in capsys.readouterr().out
    assert strength_main(["--checkpoints", str(tiny_checkpoint), "--eot", "spin", "--out", str(tmp_path)]) == 1


# --- patch files and CLI input from outside: one line, exit 1, no traceback, nothing computed lost -----------

def _with_meta(path: Path, **changes) -> Path:
    """The patch file with its `meta` JSON changed: a value of None deletes the key, `_raw` replaces the whole
    JSON value, `_text` the text."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    meta = changes.pop("_raw", meta)
    text = changes.pop("_text", None)
    for key, value in changes.items():
        meta.pop(key) if value is None else meta.__setitem__(key, value)
    return _rewrite(path, meta=np.array(json.dumps(meta) if text is None else text))


@pytest.mark.parametrize("changes, match", [
    (dict(attack=None), r"metadata lacks \['attack'\]"),  # KeyError traceback before
    (dict(seed=None), r"metadata lacks \['seed'\]"),
    (dict(surprise=1), r"unknown fields \['surprise'\]"),
    (dict(target="3"), "patch target is a string '3', expected an integer or null"),  # loaded, then ASR 0.00%
    (dict(target=True), "patch target is a boolean True"),
    (dict(target=-1), "target -1 is no class: must be >= 0"),
    (dict(size="0.1"), "patch size is a string '0.1', expected a finite number"),
    (dict(size=1.5), "size 1.5 / side 4: expected a fraction in"),
    (dict(side=[4]), "patch side is a list"),
    (dict(bits=[[8]]), r"patch bits\[0\] has 1 items"),
    (dict(log=[1]), r"patch log\[0\] is an integer 1, expected an object"),
    (dict(config=7), "patch config is int, expected a typed attack config"),
    (dict(config={"_type": "UniversalConfig", "_version": 2, "_data": [1]}), "_data is a list"),
    (dict(eot={"_type": 5, "_version": 1, "_data": {}}), "_type is an integer 5"),
    (dict(_raw=[1, 2]), "metadata is list, expected an object"),
    (dict(_text="[" * 100_000), "nests too deeply"),  # RecursionError before
])
def test_patch_metadata_is_validated_on_load(saved_patch, changes, match):
    _, path = saved_patch
    with pytest.raises(QadtrError, match=f"{match}.*HINT: re-create it"):
        load_patch(_with_meta(path, **changes))


def test_patch_target_out_of_range_is_refused_not_scored_zero(saved_patch, dull_images, tmp_path):
    _, path = saved_patch
    images, labels = dull_images
    far = load_patch(_with_meta(path, target=99))  # made on "toy" images: the class count is unknown here
    with pytest.raises(QadtrError, match=r"targets class 99 but the model has 10 classes \(0..9\)"):
        evaluate_patch(CornerNet(), far, images, labels=labels)  # was ASR 0.00% (n=64)
    with pytest.raises(QadtrError, match=r"target 99 is no class: the model has 10 classes \(0..9\)"):
        load_patch(path, num_classes=10)
    with pytest.raises(QadtrError, match=r"target 10 is no class: cifar10 has 10 classes \(0..9\)"):
        load_patch(_with_meta(path, target=10, data="cifar10/train"))
    assert load_patch(_with_meta(path, target=9), num_classes=10).target == 9


def test_per_image_patch_arrays_are_validated(tmp_path, dull_images):
    images, labels = dull_images
    path = save_patch(location_patch(CornerNet(), images[:4], labels[:4], cfg=LocationConfig(size=0.05, steps=2)),
                      tmp_path / "loc")
    cases = [(dict(placement_y=None), "without placements"),  # KeyError traceback before
             (dict(indices=np.array([0.5, 1, 2, 3])), r"indices are float64 \(4,\), expected \(N,\) integers"),
             (dict(indices=np.array([-1, 0, 1, 2])), "integers >= 0"),
             (dict(placement_x=np.array(["a", "b", "c", "d"])), "unreadable placements"),
             (dict(values=np.zeros((0, 3, 4, 4), np.float32)), "holds no patch values")]  # ValueError before
    for changes, match in cases:
        case = tmp_path / "case.npz"
        case.write_bytes(path.read_bytes())
        with pytest.raises(QadtrError, match=match):
            load_patch(_rewrite(case, **changes))


def _main(args, monkeypatch, capsys) -> tuple[int, str, str]:
    import qadtr.data
    from qadtr.attack import main

    monkeypatch.setattr(qadtr.data, "load_split", _fake_split)
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("args, match", [
    (["--batch-size", "0"], "batch_size must be >= 1"),  # was replaced by 64
    (["--attack", "location", "--batch-size", "0"], "batch_size must be >= 1"),  # was replaced by 100
    (["--train-subset", "-1"], "--train-subset -1: must be >= 0 (0 = all)"),  # meant "all images"
    (["--eval-subset", "-1"], "--eval-subset -1: must be >= 0 (0 = all)"),
    (["--seed", "-1"], "--seed -1: must be >= 0"),  # numpy's traceback before
    (["--eval-seed", "-1"], "--eval-seed -1: must be >= 0"),  # after the patch was computed, before
    (["--attack", "location", "--max-angle", "30"], "--attack location takes no --max-angle; drop it or pick an "
                                                    "attack that does (aqapa, universal)"),  # silently ignored
    (["--attack", "lavan", "--temperature", "0.1"], "--attack lavan takes no --temperature"),
    (["--data", "gtsrb"], "--data gtsrb has 43 classes but the model 10"),
])
def test_cli_counts_seeds_and_flags_are_refused_not_replaced(tiny_checkpoint, tmp_path, monkeypatch, capsys,
                                                             args, match):
    rc, out, err = _main([str(tiny_checkpoint), "--steps", "1", "--bits", "4", "--out", str(tmp_path / "p"), *args],
                         monkeypatch, capsys)
    assert rc == 1 and match in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("FAILED |") and not (tmp_path / "p").exists()


@pytest.mark.parametrize("make_out, match", [
    (lambda t: t / "a_file", "is a file, not a folder"),
    (lambda t: t / "a_file" / "patches", "a_file is a file, not a folder; pass a path under a folder"),
    (lambda t: Path("/sys/qadtr-patches"), "cannot write in /sys"),  # read-only: lost the computed patch before
])
def test_cli_out_is_checked_before_any_patch_is_computed(tiny_checkpoint, tmp_path, monkeypatch, capsys, make_out,
                                                         match):
    import qadtr.attacks

    import tempfile

    (tmp_path / "a_file").write_text("keep me")
    if "/sys" in str(make_out(tmp_path)):
        try:
            tempfile.TemporaryFile(dir="/sys").close()
            pytest.skip("/sys is writable here: no read-only location to test with")
        except OSError:
            pass

    def no_work(*a, **kw):
        raise AssertionError("the attack ran before --out was checked")

    monkeypatch.setitem(qadtr.attacks.ATTACKS, "universal", (UniversalConfig, no_work))
    rc, _, err = _main([str(tiny_checkpoint), "--bits", "4", "--out", str(make_out(tmp_path))], monkeypatch, capsys)
    assert rc == 1 and f"error: --out {make_out(tmp_path)}" in err and match in err, err
    assert (tmp_path / "a_file").read_text() == "keep me"
