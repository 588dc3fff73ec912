"""The scenario layer (eval.scenario): the scene replay's rows, the stop-sign run end to end on the tiny model, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from qadtr.attacks.camera import CameraConfig

# a camera that moves every stage on 8x8 images: small shifts, some tilt, blur on half, JPEG on all
CAMERA = CameraConfig(max_angle=10.0, scale=(0.9, 1.1), shift=1.0, perspective=0.1, brightness=(0.8, 1.2),
                      contrast=(0.8, 1.2), blur=0.5, jpeg=(70, 90))


def _cfg(tiny_checkpoint, **kw):
    from eval.scenario.gtsrb_stop import StopSignConfig

    return StopSignConfig(**{"checkpoint": str(tiny_checkpoint), "bits": 4, "source": 2, "target": 1, "size": 0.1,
                             "steps": 3, "batch_size": 8, "camera": CAMERA, **kw})


def _save(tmp_path, values, *, name="p", target=1):
    from qadtr.attacks import EOTConfig, Patch, UniversalConfig, save_patch

    eot = EOTConfig(location="fixed", xy=(3, 3))
    return save_patch(Patch(values=values, attack="universal", config=UniversalConfig(size=0.1, target=target),
                            size=0.1, side=values.shape[-1], target=target, eot=eot, data="gtsrb/train"), tmp_path / name)


def test_scene_rows_share_one_view_per_image(tiny_dataset, tmp_path):
    """Clean rows are the class's test images through their views; a sticker equal to the pixels it covers
    leaves every patched row byte-equal to its clean row (same view), and a real sticker changes them."""
    from eval.replay import load_replay
    from eval.scenario._scene import make_scene_replay

    test = tiny_dataset("gtsrb", "test")
    idx = np.flatnonzero(test.labels == 2)
    first = test.images[idx[0]]
    invisible = first[3:6, 3:6].transpose(2, 0, 1).astype(np.float32) / 255  # (3, 3, 3): the covered pixels
    files = [_save(tmp_path, invisible, name="invisible"), _save(tmp_path, np.ones((3, 3, 3), np.float32), name="w")]
    path = make_scene_replay(files, dataset="gtsrb", data_dir=None, source=2, camera=CAMERA, view_seed=1,
                             out=tmp_path / "replays")
    r = load_replay(path)
    n = len(idx)
    assert r.info.n_subset == n and r.info.samples == 3 * n and list(r.test_index[:n]) == list(idx)
    assert json.loads(r.info.scene)["source"] == 2 and (r.labels == 2).all()
    assert np.array_equal(r.images[n], r.images[0])  # invisible sticker on image 0: the same bytes as its clean row
    assert not np.array_equal(r.images[2 * n:], r.images[:n])  # a white sticker shows
    assert not np.array_equal(r.images[:n], test.images[idx])  # the camera did something
    again = make_scene_replay(files, dataset="gtsrb", data_dir=None, source=2, camera=CAMERA, view_seed=1,
                              out=tmp_path / "replays")
    other = make_scene_replay(files, dataset="gtsrb", data_dir=None, source=2, camera=CAMERA, view_seed=2,
                              out=tmp_path / "replays")
    assert again == path and other != path  # reused for the same inputs, rebuilt for another view seed


def test_scene_refuses_a_class_without_images_and_a_foreign_patch(tiny_dataset, tmp_path):
    from eval.scenario._scene import make_scene_replay
    from qadtr import QadtrError

    ok = _save(tmp_path, np.ones((3, 3, 3), np.float32))
    with pytest.raises(QadtrError, match="has no image of class 12"):
        make_scene_replay([ok], dataset="gtsrb", data_dir=None, source=12, camera=CAMERA, view_seed=1, out=tmp_path)
    from qadtr.attacks import load_patch, save_patch

    foreign = save_patch(dataclasses.replace(load_patch(ok), data="cifar10/train"), tmp_path / "foreign")
    with pytest.raises(QadtrError, match="made on cifar10/train"):
        make_scene_replay([foreign], dataset="gtsrb", data_dir=None, source=2, camera=CAMERA, view_seed=1,
                          out=tmp_path)


@pytest.mark.slow
def test_stop_sign_scenario_end_to_end(tiny_dataset, tiny_checkpoint, tmp_path):
    """Stickers made, exported, replayed on every local runtime, compared, summarised and paged; a re-run reuses
    the stickers and every stored run."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    from eval.scenario.gtsrb_stop import run

    cfg = _cfg(tiny_checkpoint)
    kw = dict(device="local", out=tmp_path / "s", data_dir=None, runtimes=None, inventory=None, remake=False,
              progress=False)
    res = run(cfg, **kw)
    runs = {r["runtime"]: r for r in res["runs"]}
    assert set(runs) == {"fakequant", "onnxrt", "litert-xnnpack", "litert-builtin"}
    n = res["n"]
    for r in runs.values():
        assert set(r["patches"]) == {"sticker", "control"} and r["stop_before"]["n"] == n
        assert r["patches"]["sticker"]["asr_target"]["n"] == n  # no stop sign is of the target class
    assert runs["onnxrt"]["vs_fakequant"]["rows"] == 3 * n
    page = (tmp_path / "s" / "report" / "stop_sign.html").read_text()
    differing = sum(len({r % n for r in run["vs_fakequant"]["differ_rows"] if r < 2 * n}) for run in runs.values())
    assert page.count('class="pair"') == 4 * min(16, n) + differing and "litert-builtin" in page  # + differing signs
    assert (tmp_path / "s" / "report" / "report.html").is_file()
    saved = json.loads((tmp_path / "s" / "scenario.json").read_text())
    assert saved["config"]["_data"]["source"] == 2 and len(saved["runs"]) == 4
    assert run(cfg, **kw)["runs"] == res["runs"]  # the same stickers, the same stored predictions


def test_on_device_scenario_flags(capsys):
    from eval.on_device import main

    assert main(["--scenario", "nope"]) == 1
    assert "unknown scenario 'nope'; known: gtsrb-stop" in capsys.readouterr().err
    assert main(["--scenario", "gtsrb-stop", "--model", "x.onnx"]) == 1
    assert "drop --model" in capsys.readouterr().err
    assert main(["--remake"]) == 1
    assert "pass it with --scenario" in capsys.readouterr().err


def test_stop_sign_config_is_validated():
    from eval.scenario.gtsrb_stop import StopSignConfig

    for bad, says in (({"bits": 3}, "bits=3"), ({"target": 14}, "two different"), ({"size": 0.6}, "size=0.6"),
                      ({"steps": 0}, "steps=0")):
        with pytest.raises(ValueError, match=says):
            StopSignConfig(**bad)


def test_the_committed_stickers_are_the_default_configs():
    """`--scenario gtsrb-stop` uses the committed stickers only when the default config made them: a changed default
    without re-made stickers would silently make them in OUT instead."""
    from eval.scenario.gtsrb_stop import COMMITTED, CONTROL, STICKER, StopSignConfig
    from qadtr._config import config_from_dict, read_json
    from qadtr.attacks import load_patch

    for stem in (STICKER, CONTROL):
        assert load_patch(COMMITTED / f"{stem}.npz").config == StopSignConfig()
    assert config_from_dict(read_json(COMMITTED / "stop_sign.json")) == StopSignConfig()
