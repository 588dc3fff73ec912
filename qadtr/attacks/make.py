"""Make, save and score patches for one checkpoint: the library behind `python -m qadtr.attack`.

    >>> from qadtr.attacks import UniversalConfig
    >>> from qadtr.attacks.make import make_patches
    >>> make_patches("zoo/resnet20_w8a8", [UniversalConfig(size=0.1, target=3)], bits="8", out="patches")

Universal, LaVAN and A-QAPA patches are optimised on training images and evaluated on test images;
location-optimised patches are per-image, made for (and stored with the indices of) test images.
Quantized models are attacked through `deploy_net` (BN folded, int32 bias), the integer runtimes' function.
Each patch is written as OUT/<bits>_<attack>_s<size>_<target>.npz (+ .png, .json, .asr.json).
Errors name the `qadtr.attack` flag to change, as the CLI's user sees them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

import qadtr.data  # load_split is looked up at call time (the CLI tests stand an in-memory dataset in for it)
from qadtr._cli import check_count, check_writable
from qadtr._config import write_json
from qadtr._distributed import OnDevice, resolve_device
from qadtr._errors import QadtrError
from qadtr._registry import resolve
from qadtr.attacks._registry import attack_for_config
from qadtr.attacks.asr import evaluate_patch
from qadtr.attacks.patchfile import Patch, patch_name, save_patch
from qadtr.bits import bits_name, parse_bits
from qadtr.checkpoint import Checkpoint, load_checkpoint
from qadtr.models import bits_of, deploy_net

BitPairs = tuple[tuple[int, int], ...]  # ((w, a), ...): the bit widths a patch is made for


def check_job(*, out: str | Path, train_subset: int, eval_subset: int, seed: int = 0, eval_seed: int = 1) -> Path:
    """The counts, seeds and the output folder, refused before a checkpoint is loaded or a patch computed."""
    check_count(train_subset, "--train-subset", zero="all")
    check_count(eval_subset, "--eval-subset", zero="all")
    for flag, value in (("--seed", seed), ("--eval-seed", eval_seed)):
        if value < 0:  # numpy's generators refuse it, after the patch has been computed (--eval-seed)
            raise QadtrError(f"{flag} {value}: must be >= 0")
    return check_writable(out, "folder")


def check_device(attack: str, device: str | torch.device) -> torch.device:
    """`device` ("cpu" | "cuda" | "auto", or a torch.device) as a torch.device the attack can run on."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if device.type != "cpu" and attack == "aqapa":
        raise QadtrError("--attack aqapa runs on the CPU only so far (it switches the bit widths of the whole model); "
                         "pass --device cpu")
    return device


def make_patches(checkpoint: str | Path, configs: Sequence[Any], *, out: str | Path, bits: str = "",
                 data: str | None = None, data_dir: str | Path | None = None, train_subset: int = 0,
                 eval_subset: int = 2000, eval_seed: int = 1, device: str | torch.device = "cpu") -> list[Path]:
    """One patch per config (all of one attack, e.g. several sizes), saved into `out` with its ASR on the test
    images at each bit width it was made for (.asr.json). Returns the .npz paths.

    Args:
        checkpoint: model.pt (with model.json beside it) or its folder.
        configs: attack configs of one attack (UniversalConfig, ...); the attack is the row of their type.
        bits: the bit width(s) to attack as `--bits` writes them ("8", "w4a4"; aqapa "2,4,8"); "" (or "float",
            "32"): a float model, or the one bit width of a one-width model, or (aqapa) all of the model's.
        data: dataset name (default: the checkpoint's); data_dir: where it is (qadtr.data.resolve_data_dir).
        train_subset, eval_subset: training images to optimise on / test images to evaluate on (0 = all).
        eval_seed: seed of the evaluation placements; device: where the network runs (patches stay on the CPU).

    Raises:
        QadtrError: a bad count, seed, output folder, device, bit width, target or dataset, before any patch is made.
    """
    if not configs or len({type(c) for c in configs}) != 1:
        raise ValueError(f"configs: pass one or more configs of one attack, got {[type(c).__name__ for c in configs]}")
    attack = attack_for_config(configs[0])
    check_job(out=out, train_subset=train_subset, eval_subset=eval_subset, seed=min(c.seed for c in configs),
              eval_seed=eval_seed)
    device = check_device(attack.name, device)
    try:
        wanted = parse_bits(bits if bits not in ("float", "32") else "")
    except ValueError as e:
        raise QadtrError(f"--bits {bits}: {e}") from None
    model, ck = load_checkpoint(checkpoint)
    target = configs[0].target
    if target is not None and target >= ck.model.num_classes:
        raise QadtrError(f"--target {target}: the model has {ck.model.num_classes} classes (0..{ck.model.num_classes - 1})")

    def placed(net: nn.Module) -> nn.Module:  # the attacks build their tensors on the CPU; the network runs on device
        return net if device.type == "cpu" else OnDevice(net, device)

    net, src_bits = _attacked_net(model, attack.name, wanted, bits=bits, checkpoint=checkpoint, placed=placed)
    have = bits_of(model)
    data = _dataset(data, ck)
    test = qadtr.data.load_split(data, "test", data_dir)
    eval_idx = qadtr.data.subset_indices(len(test.labels), eval_subset, seed=1)
    fn = resolve(attack.function)
    written = []
    for cfg in configs:
        if attack.name == "location":  # per-image: attack the evaluation images themselves
            patch = fn(net, test.images[eval_idx], test.labels[eval_idx], cfg=cfg, progress=True)
            patch, source = dataclasses.replace(patch, indices=eval_idx), f"{data}/test"
        else:
            train = qadtr.data.load_split(data, "train", data_dir)
            idx = qadtr.data.subset_indices(len(train.labels), train_subset, seed=0)
            patch, source = fn(net, train.images[idx], train.labels[idx], cfg=cfg, progress=True), f"{data}/train"
        patch = patch.with_source(model_sha256=ck.sha256, bits=src_bits, data=source)
        path = save_patch(patch, Path(out) / patch_name(patch))
        eval_nets = ([(bits_name((w, a)), placed(deploy_net(model, w, a))) for w, a in src_bits] if have
                     else [("float", net)])
        _score(patch, path, eval_nets, test=test, eval_idx=eval_idx, data=data, eval_seed=eval_seed)
        written.append(path)
    return written


def _attacked_net(model: nn.Module, attack: str, wanted: BitPairs, *, bits: str, checkpoint: str | Path,
                  placed: Callable[[nn.Module], nn.Module]) -> tuple[nn.Module, BitPairs]:
    """The network the attack optimises against and the bit widths the patch is made for."""
    have = bits_of(model)
    if attack == "aqapa":
        return model, tuple(wanted) or tuple(have)  # aqapa_patch checks the bit widths itself
    if not have:
        if wanted:
            raise QadtrError(f"--bits {bits}: {checkpoint} is a float model; drop --bits")
        return placed(model), ()
    if len(wanted) != 1 and len(have) != 1:
        raise QadtrError(f"--bits: pick one of the model's bit widths {have} (e.g. --bits {have[0][0]}), "
                         "or use --attack aqapa to attack several")
    (w, a) = wanted[0] if wanted else have[0]
    if (w, a) not in have:
        raise QadtrError(f"--bits {bits}: the model has {have}")
    return placed(deploy_net(model, w, a)), ((w, a),)


def _dataset(data: str | None, ck: Checkpoint) -> str:
    """`data`, else the checkpoint's training set; refused when its class count is not the model's."""
    data = data or (ck.train.data if ck.train is not None else "cifar10")
    info = qadtr.data.DATASETS.get(data)  # an unknown name: load_split refuses it with the known ones
    if info is not None and info.num_classes != ck.model.num_classes:
        raise QadtrError(f"--data {data} has {info.num_classes} classes but the model {ck.model.num_classes}; attack "
                         "it on the dataset it was trained on (omit --data)")
    return data


def _score(patch: Patch, path: Path, eval_nets: list[tuple[str, nn.Module]], *, test: Any, eval_idx: Any, data: str,
           eval_seed: int) -> None:
    """The patch's ASR on every network of `eval_nets`, printed and written beside it as .asr.json."""
    report = {}
    for key, eval_net in eval_nets:
        asr = evaluate_patch(eval_net, patch, test.images[eval_idx], labels=test.labels[eval_idx], seed=eval_seed)
        report[key] = asr.to_dict()
        print(f"{path.name} on {key}, {data}/test ({len(eval_idx)} images, placement seed {eval_seed}): {asr}")
    write_json(path.with_suffix(".asr.json"), {"patch": path.name, "eval_seed": eval_seed,
                                                "eval_images": len(eval_idx), "asr": report})
