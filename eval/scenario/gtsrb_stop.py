"""The stop-sign scenario: a sticker on GTSRB stop signs that makes them read as a chosen sign, through a camera.

    python -m eval.on_device --device local --scenario gtsrb-stop              # every runtime of this host
    python -m eval.on_device --device local,rpi4-emu --scenario gtsrb-stop     # and the emulated board
    python -m eval.on_device --device local --scenario gtsrb-stop --remake     # re-make the stickers first

From the committed model (`zoo/gtsrb_resnet20_sw248` at w4a4) and stickers (`eval/results/stop_sign/patches`):
  1. the sticker: a targeted universal patch (stop -> speed_30 by default) fixed on the sign's centre and
     optimised on the GTSRB training stop signs against the fake-quant network seen through a random camera
     every step (`qadtr.attacks.camera.CameraNet`: rotation, scale, shift, perspective, brightness, contrast,
     blur, JPEG: expectation over the transformations a dashcam brings); a control sticker of uniform noise of
     the same size tells the camera's own effect from the attack's;
  2. the checkpoint exported to ONNX QDQ and TFLite (eval.pipeline's exporters, each proven on test images);
  3. the scene replay (`eval.scenario._scene`): every GTSRB test stop sign through one drawn camera view, without
     a sticker, with the sticker, with the control, the same bytes for every runtime;
  4. replayed on every runtime of every --device into a result store, compared image by image against
     fake-quant (eval.compare: which images a runtime reads differently, and why), the standard report, and
     the scenario page `report/stop_sign.html` with before/after grids per runtime.
Without --remake the committed stickers are used when their recipe is this config; else they are made in OUT.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from eval.scenario._stop_config import StopSignConfig
from qadtr._config import config_to_dict, write_json
from qadtr._errors import QadtrError
from qadtr.bits import bits_name

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "eval" / "results" / "stop_sign" / "patches"  # the committed stickers of the default config
STICKER, CONTROL = "sticker", "control"  # patch file stems in the patches folder


def _checkpoint(cfg: StopSignConfig) -> Path:
    path = Path(cfg.checkpoint)
    return path if path.is_absolute() or path.exists() else REPO / path


def make_stickers(cfg: StopSignConfig, out: Path, *, data_dir: str | None, progress: bool = False) -> list[Path]:
    """Optimise the sticker, draw the control, save both (+ stop_sign.json) into `out`; returns the two .npz."""
    import qadtr.data
    from qadtr.attacks import EOTConfig, Patch, UniversalConfig, patch_side, save_patch, universal_patch
    from qadtr.attacks.camera import CameraNet
    from qadtr.checkpoint import load_checkpoint
    from qadtr.models import deploy_net

    model, ck = load_checkpoint(_checkpoint(cfg))
    if (cfg.bits, cfg.bits) not in ck.model.bits:
        raise QadtrError(f"{cfg.checkpoint} has no {bits_name((cfg.bits, cfg.bits))}; pick one of its bit widths")
    train = qadtr.data.load_split("gtsrb", "train", data_dir)
    signs = train.labels == cfg.source  # (N,) the training stop signs
    h, w = train.images.shape[1:3]
    side = patch_side(cfg.size, (h, w))
    centre = EOTConfig(location="fixed", xy=((w - side) // 2, (h - side) // 2))  # on the sign, which GTSRB centres
    attack = UniversalConfig(size=cfg.size, target=cfg.target, steps=cfg.steps, batch_size=cfg.batch_size,
                             lr=cfg.lr, eot=centre, seed=cfg.seed)
    net = CameraNet(deploy_net(model, cfg.bits, cfg.bits), cfg.camera, seed=cfg.seed)
    sticker = universal_patch(net, train.images[signs], train.labels[signs], cfg=attack, progress=progress)
    noise = np.random.default_rng(cfg.seed + 1).integers(0, 256, (3, side, side)).astype(np.float32) / 255
    control = Patch(values=noise, attack="noise", config=cfg, size=cfg.size, side=side, target=cfg.target,
                    eot=centre, seed=cfg.seed + 1)
    source = dict(model_sha256=ck.sha256, bits=((cfg.bits, cfg.bits),), data="gtsrb/train")
    paths = [save_patch(dataclasses.replace(sticker, config=cfg).with_source(**source), out / STICKER),
             save_patch(control.with_source(**source), out / CONTROL)]
    write_json(out / "stop_sign.json", config_to_dict(cfg))
    return paths


def _stickers(cfg: StopSignConfig, out: Path, *, data_dir: str | None, remake: bool, progress: bool) -> list[Path]:
    """The committed stickers when they were made by `cfg`, else (or with remake) stickers made into OUT/patches."""
    from qadtr.attacks import load_patch

    for folder in ([] if remake else [COMMITTED, out / "patches"]):
        files = [folder / f"{stem}.npz" for stem in (STICKER, CONTROL)]
        if all(f.is_file() for f in files) and all(load_patch(f).config == cfg for f in files):
            return files
    print(f"making the stickers ({cfg.steps} steps on the training stop signs) into {out / 'patches'}")
    return make_stickers(cfg, out / "patches", data_dir=data_dir, progress=progress)


def run(cfg: StopSignConfig, *, device: str, out: Path, data_dir: str | None, runtimes: list[str] | None,
        inventory: str | None, remake: bool, progress: bool) -> dict:
    """The scenario end to end into `out` (see the module docstring); returns the summary it writes."""
    import qadtr.data
    from eval.compare import compare_store, document
    from eval.fleet import json_safe, replay_on_devices
    from eval.pipeline import PROOF_IMAGES, export_checkpoint
    from eval.report import write_report
    from eval.replay import load_replay
    from eval.scenario._page import predictions, summarise, write_page
    from eval.scenario._scene import make_scene_replay

    files = _stickers(cfg, out, data_dir=data_dir, remake=remake, progress=progress)
    proof = qadtr.data.subset(qadtr.data.load_split("gtsrb", "test", data_dir), PROOF_IMAGES).images
    models = [str(p) for p in export_checkpoint(_checkpoint(cfg), cfg.bits, out / "artifacts", images=proof)]
    replay = make_scene_replay(files, dataset="gtsrb", data_dir=data_dir, source=cfg.source, camera=cfg.camera,
                               view_seed=cfg.view_seed, out=out / "replays")
    store = out / "results.sqlite"
    metrics = replay_on_devices(devices=device, models=models, patches=None, data="gtsrb", store_path=store,
                                runtimes=runtimes, inventory=inventory, progress=progress, replay_file=replay)
    write_json(out / "on_device.json", metrics)
    comparisons, skipped = compare_store(store)
    write_json(out / "report" / "compare.json", json_safe(document(comparisons, skipped, store=store)))
    write_report(store, out / "report", compare=out / "report" / "compare.json", patches=files[0].parent)
    scene = load_replay(replay)
    preds = predictions(store, scene)  # every run's predictions, read once for the numbers and the page
    summary = summarise(scene, preds, source=cfg.source, target=cfg.target)
    write_json(out / "scenario.json", json_safe({"config": config_to_dict(cfg), **summary}))
    page = write_page(summary, scene, preds, out=out / "report" / "stop_sign.html")
    return {**summary, "page": str(page), "report": str(out / "report" / "report.html")}

