"""Real CIFAR-10 (../shared/data): a short QAT run from the float weights, and the zoo's reported numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from qadtr.checkpoint import load_checkpoint, read_checkpoint_info
from qadtr.data import load_split
from qadtr.predict import accuracy_per_bits
from qadtr.models import ModelConfig
from qadtr.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
PRETRAINED = SHARED / "models" / "resnet20-cifar10-akamaster.th"
ZOO = sorted((ROOT / "zoo").glob("*/model.pt"))

pytestmark = [pytest.mark.data, pytest.mark.skipif(not (DATA / "cifar10-jpg.tar.gz").is_file(),
                                                   reason="needs ../shared/data")]


@pytest.mark.slow  # QAT steps of a real ResNet-20 and 1,000 test images
def test_qat_from_float_weights_on_a_real_subset(tmp_path):
    """Two 8-bit QAT steps from the float ResNet-20: the deployable net keeps float-level accuracy."""
    cfg = TrainConfig(ModelConfig("resnet20", bits=((8, 8),)), epochs=1, lr=0.001, init=str(PRETRAINED),
                      train_subset=256, eval_subset=1000)
    ck = read_checkpoint_info(train(cfg, tmp_path / "w8", data_dir=DATA))
    deploy = ck.metrics["test_acc"]["w8a8"]
    assert deploy["n"] == 1000
    assert deploy["value"] > 0.75  # the float weights score ~81% on this JPEG copy


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ZOO, ids=[p.parent.name for p in ZOO])
def test_zoo_checkpoint_reproduces_its_reported_accuracy(checkpoint):
    model, ck = load_checkpoint(checkpoint)
    test = load_split(ck.train.data, "test", DATA)  # the dataset it was trained and measured on
    recorded_acc = ck.metrics["test_acc"]
    if len(recorded_acc) > 3:  # the defences' 4-bit-width models: the lowest (most fragile) width keeps CI short
        recorded_acc = dict([min(recorded_acc.items())])
    got = accuracy_per_bits(model, test.images, test.labels, keys=tuple(recorded_acc))
    for key, recorded in recorded_acc.items():
        assert got[key].n == recorded["n"] == len(test.labels)  # the whole test split (CIFAR-10 10,000; GTSRB 12,630)
        # the same machine kind reproduces the count exactly; allow 10 images for other CPUs' kernels
        assert abs(got[key].k - recorded["k"]) <= 10, (key, got[key], recorded)
