"""Shared fixtures: a tiny trained checkpoint every exporter, runner and attack test can use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "data: needs the real datasets in ../shared/data (skipped when absent)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (real data or real models)")


def make_tiny_checkpoint(out: Path, bits=((2, 2), (4, 4), (8, 8)), steps: int = 5, seed: int = 0) -> Path:
    """Calibrate and briefly train a switchable test_qnet on random 8x8 images; returns model.pt.

    A few SGD steps in train mode give BatchNorm statistics and biases away from their defaults, so
    folding and export are exercised on non-trivial values.
    """
    from qadtr.checkpoint import save_checkpoint
    from qadtr.evaluate import to_tensor
    from qadtr.models import ModelConfig, create_model, set_bits
    from qadtr.models._calibrate import calibrate_

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)  # (N, H, W, 3)
    labels = torch.from_numpy(rng.integers(0, 10, 64))
    cfg = ModelConfig("test_qnet", bits=bits, per_bit_bn=len(bits) > 1)
    model = create_model(cfg)
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
def tiny_images() -> np.ndarray:
    """32 random (8, 8, 3) uint8 images."""
    return np.random.default_rng(1).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
