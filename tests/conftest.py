"""Shared fixtures: a tiny trained checkpoint every exporter, runner and attack test can use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# --- markers: registered, and deselected by default, in pyproject.toml ([tool.pytest.ini_options]) ---------
FOLDER_MARKS = {"emu": "emu", "ssh": "ssh"}  # a folder whose every test is of one kind: tests/<folder> -> marker
TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before pytest's own `-m` deselection sees the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every test of a FOLDER_MARKS folder, and `gpu` on a test parametrized as `name` over the runtimes
    (tests/unit/test_runner_contract.py) where that runtime needs an NVIDIA GPU."""
    from devices.runtimes import RUNTIMES

    gpu = {name for name, info in RUNTIMES.items() if info.gpu}
    for item in items:
        path = Path(item.path).resolve()
        folder = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else None
        if folder in FOLDER_MARKS:
            item.add_marker(FOLDER_MARKS[folder])
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("name") in gpu:
            item.add_marker("gpu")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """Says what the default selection left out and how to run it, so that a deselected test is never silent."""
    deselected = terminalreporter.stats.get("deselected", [])
    if deselected and config.option.markexpr:
        terminalreporter.write_line(f"{len(deselected)} tests deselected by -m {config.option.markexpr!r} (without -m: "
                                    "the fast set, pyproject.toml addopts); `make test` or `python -m pytest -m ''` "
                                    "runs every test")


BN_WARMUP_PASSES = 20  # train-mode passes before calibration: running statistics 1 - 0.9^20 = 88% of the data's


def make_tiny_checkpoint(out: Path, bits=((2, 2), (4, 4), (8, 8)), steps: int = 5, seed: int = 0,
                         arch: str = "test_qnet") -> Path:
    """Calibrate and briefly train a switchable `arch` (a tiny test_* model) on random 8x8 images; returns model.pt.

    A few SGD steps in train mode give BatchNorm statistics and biases away from their defaults, so
    folding and export are exercised on non-trivial values.
    """
    from qadtr.checkpoint import save_checkpoint
    from qadtr.predict import to_tensor
    from qadtr.models import ModelConfig, create_model, set_bits
    from qadtr.models._calibrate import calibrate_

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)  # (N, H, W, 3)
    labels = torch.from_numpy(rng.integers(0, 10, 64))
    cfg = ModelConfig(arch, bits=bits, per_bit_bn=len(bits) > 1)
    model = create_model(cfg)
    if arch != "test_qnet":  # BN statistics from data first, so calibration sees normalised activations (a
        model.train()       # deeper net's untrained thresholds otherwise make int32 biases overflow float32)
        with torch.no_grad():
            for _ in range(BN_WARMUP_PASSES):
                for w, a in bits:
                    set_bits(model, w, a)
                    model(to_tensor(images))
    calibrate_(model, images, batch_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        for w, a in bits:
            set_bits(model, w, a)
            loss = torch.nn.functional.cross_entropy(model(to_tensor(images)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return save_checkpoint(model, out / "model.pt", model_cfg=cfg)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.pt of a switchable test_qnet at w2a2, w4a4 and w8a8 (8x8 inputs, 10 classes)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def edge_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch -> model.pt of a switchable w2a2/w4a4/w8a8 test_mbv2 and test_resnet18 (8x8 inputs, 10 classes)."""
    return {arch: make_tiny_checkpoint(tmp_path_factory.mktemp(arch), arch=arch)
            for arch in ("test_mbv2", "test_resnet18")}


@pytest.fixture(scope="session")
def tiny_images() -> np.ndarray:
    """32 random (8, 8, 3) uint8 images."""
    return np.random.default_rng(1).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)


# --- replay fixtures (eval.replay, eval.on_device): an in-memory 8x8 "cifar10" and patches for test_qnet ---

def tiny_split(name: str, split: str, data_dir=None, **kw):
    """A stand-in for `qadtr.data.load_split`: 64 train / 40 test random 8x8 images, labels 0..9."""
    import qadtr.data

    n = 64 if split == "train" else 40
    images = np.random.default_rng(10 + len(split)).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return qadtr.data.Split(images, np.arange(n, dtype=np.int64) % 10, tuple("abcdefghij"), name, split, "memory")


@pytest.fixture
def tiny_dataset(monkeypatch):
    """Every `qadtr.data.load_split` call in the test gets `tiny_split`'s 8x8 images."""
    import qadtr.data

    monkeypatch.setattr(qadtr.data, "load_split", tiny_split)
    return tiny_split


@pytest.fixture(scope="session")
def tiny_patches(tiny_checkpoint, tmp_path_factory) -> Path:
    """A folder with three patch files made on test_qnet in a few steps: a targeted universal patch (w4a4,
    EOT with rotation and scale), an untargeted one (w8a8), and per-image location patches (w2a2) on test
    images 0..5 (some inside, some outside a 16-image eval subset)."""
    import dataclasses

    from qadtr.attacks import EOTConfig, LocationConfig, UniversalConfig, location_patch, save_patch, \
        universal_patch
    from qadtr.checkpoint import load_checkpoint
    from qadtr.models import deploy_net

    model, ck = load_checkpoint(tiny_checkpoint)
    train, test = tiny_split("cifar10", "train"), tiny_split("cifar10", "test")
    out = tmp_path_factory.mktemp("patches")
    eot = EOTConfig(max_angle=20.0, scale=(0.9, 1.1))
    for (w, a), target, name in (((4, 4), 1, "w4a4_universal_t1"), ((8, 8), None, "w8a8_universal_untargeted")):
        cfg = UniversalConfig(size=0.1, target=target, steps=3, batch_size=16, eot=eot)
        patch = universal_patch(deploy_net(model, w, a), train.images, train.labels, cfg=cfg)
        save_patch(patch.with_source(model_sha256=ck.sha256, bits=((w, a),), data="cifar10/train"), out / name)
    idx = np.arange(6)
    patch = location_patch(deploy_net(model, 2, 2), test.images[idx], test.labels[idx],
                           cfg=LocationConfig(size=0.1, steps=2))
    patch = dataclasses.replace(patch, indices=idx).with_source(model_sha256=ck.sha256, bits=((2, 2),),
                                                                 data="cifar10/test")
    save_patch(patch, out / "w2a2_location_untargeted")
    return out


@pytest.fixture(scope="session")
def tiny_exports(tiny_checkpoint, tiny_images, tmp_path_factory) -> dict[str, Path]:
    """{"onnx": w8.onnx (QDQ), "tflite": w8.tflite (full integer)} of the tiny checkpoint at w8a8, built the fast
    way (no exporter proofs); skips when onnx or ai_edge_litert is missing."""
    pytest.importorskip("onnx")
    pytest.importorskip("ai_edge_litert")
    from export._common import deploy_model
    from export.onnx import export_qcdq
    from export.tflite import build_tflite
    from qadtr.predict import to_tensor

    out = tmp_path_factory.mktemp("tiny_exports")
    net = deploy_model(tiny_checkpoint, 8)[0]
    export_qcdq(net, out / "w8.onnx", to_tensor(tiny_images[:1]))
    (out / "w8.tflite").write_bytes(build_tflite(net, 8, 8).data)
    return {"onnx": out / "w8.onnx", "tflite": out / "w8.tflite"}
