"""Training: config validation, determinism, exact resume after a crash, CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qadtr import QadtrError
from qadtr.data import DATASETS
from qadtr.models import ModelConfig
from qadtr.train import TrainConfig, parse_bits, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch) -> Path:
    """A CIFAR-10 image-folder layout with 6 train / 2 test 32x32 PNGs per class; the class is a colour."""
    monkeypatch.setenv("QADTR_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for label, name in enumerate(DATASETS["cifar10"].classes):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (32, 32, 3)) + 18 * label  # learnable: brightness = class
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:04d}.png")
    return tmp_path / "data"


def _cfg(**kw) -> TrainConfig:
    base = dict(model=ModelConfig("test_qnet", bits=((2, 2), (4, 4)), per_bit_bn=True), epochs=2, batch_size=16,
                lr=0.05, save_every=3, switch="cycle")
    base.update(kw)
    return TrainConfig(**base)


def _weights(pt: Path) -> dict[str, torch.Tensor]:
    return torch.load(pt, weights_only=True)


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_training_is_deterministic_and_records_metrics(fake_cifar, tmp_path):
    a = train(_cfg(), tmp_path / "a", data_dir=fake_cifar)
    b = train(_cfg(), tmp_path / "b", data_dir=fake_cifar)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    from qadtr.checkpoint import read_checkpoint_info
    ck = read_checkpoint_info(a)
    assert set(ck.metrics["test_acc"]) == {"w2a2", "w4a4"} and ck.metrics["test_acc"]["w4a4"]["n"] == 20
    assert ck.train == _cfg() and ck.metrics["steps"] == 2 * (60 // 16)


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_resume_after_a_crash_ends_where_an_uninterrupted_run_does(fake_cifar, tmp_path, monkeypatch):
    import qadtr.recipes as recipes

    full = train(_cfg(), tmp_path / "full", data_dir=fake_cifar)
    real = recipes.get_recipe("qat")

    def crash_at_step_5(model, x, y, *, step, cfg):
        if step == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(model, x, y, step=step, cfg=cfg)

    monkeypatch.setitem(recipes.RECIPES, "qat", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), tmp_path / "crash", data_dir=fake_cifar)
    assert (tmp_path / "crash" / "last.pt").is_file() and not (tmp_path / "crash" / "model.pt").exists()
    assert torch.load(tmp_path / "crash" / "last.pt", weights_only=True)["step"] == 3  # save_every=3
    monkeypatch.setitem(recipes.RECIPES, "qat", real)
    with pytest.raises(QadtrError, match="holds an interrupted run; pass --resume"):
        train(_cfg(), tmp_path / "crash", data_dir=fake_cifar)
    with pytest.raises(QadtrError, match="started with other settings"):
        train(_cfg(lr=0.01), tmp_path / "crash", data_dir=fake_cifar, resume=True)
    resumed = train(_cfg(), tmp_path / "crash", data_dir=fake_cifar, resume=True)
    wf, wr = _weights(full), _weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    with pytest.raises(QadtrError, match="already holds a finished model"):
        train(_cfg(), tmp_path / "crash", data_dir=fake_cifar)


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_float_training_from_a_checkpoint_init(fake_cifar, tmp_path):
    cfg = _cfg(model=ModelConfig("test_qnet"), recipe="float", switch="all", epochs=1)
    f = train(cfg, tmp_path / "f", data_dir=fake_cifar)
    q = train(_cfg(init=str(f), epochs=1), tmp_path / "q", data_dir=fake_cifar)
    assert _weights(q)["nets.w2a2.conv1.weight"].shape == _weights(f)["conv1.weight"].shape


@pytest.mark.parametrize("kwargs, match", [
    (dict(recipe="magic"), "unknown recipe 'magic'"),
    (dict(recipe="float"), "recipe 'float' trains a float model; drop --bits"),
    (dict(model=ModelConfig("test_qnet")), "needs --bits; for a float model use --recipe float"),
    (dict(data="mnist"), "unknown dataset 'mnist'"),
    (dict(data="gtsrb"), "gtsrb has 43 classes but the model 10; pass --num-classes 43"),
    (dict(epochs=0), "must be >= 1"),
    (dict(lr=0.0), "must be positive"),
    (dict(switch="sometimes"), "switch='sometimes'; choose one of"),
    (dict(train_subset=-1), "must be >= 0"),
])
def test_train_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kwargs)


def test_parse_bits():
    assert parse_bits("") == ()
    assert parse_bits("4") == ((4, 4),)
    assert parse_bits("2,4, 8") == ((2, 2), (4, 4), (8, 8))
    assert parse_bits("w4a8") == ((4, 8),)
    with pytest.raises(ValueError, match="bad bit width 'four'"):
        parse_bits("four")


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["qadtr.train", "--bits", "7", "--out", "x"], "bits (w=7, a=7) not supported"),
    (["qadtr.train", "--model", "vgg", "--out", "x"], "unknown model 'vgg'"),
    (["qadtr.train", "--bits", "4", "--out", "x", "--data-dir", "/nonexistent"], "/nonexistent"),
    (["qadtr.evaluate", "/nonexistent/model.pt"], "not found; train one"),
])
@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_cli_user_errors_are_one_line_and_exit_1(args, message, tmp_path):
    r = _cli(*args)
    assert r.returncode == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("FAILED |")


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_train_and_evaluate_cli(fake_cifar, tmp_path):
    out = tmp_path / "run"
    r = _cli("qadtr.train", "--model", "test_qnet", "--bits", "4", "--epochs", "1", "--batch-size", "16",
             "--data-dir", str(fake_cifar), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASSED |")
    r = _cli("qadtr.evaluate", str(out / "model.pt"), "--data-dir", str(fake_cifar))
    assert r.returncode == 0, r.stderr
    assert "w4a4 deploy" in r.stdout and "w4a4 trained" in r.stdout and "recorded" in r.stdout


# --- user input to the CLIs: one line, exit 1, no traceback, no value replaced by a default -----------------

def _one_line_error(r: subprocess.CompletedProcess, message: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr, r.stderr
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("FAILED |"), r.stderr
    assert message in lines[0], r.stderr


@pytest.mark.parametrize("args, message", [
    (["qadtr.train", "--epochs", "abc", "--out", "x"],
     "argument --epochs: invalid int value: 'abc' (see python -m qadtr.train --help)"),
    (["qadtr.train", "--bits", "4"], "the following arguments are required: --out (see python -m qadtr.train --help)"),
    (["qadtr.train", "--switch", "often", "--out", "x"], "argument --switch: invalid choice: 'often'"),
    (["qadtr.evaluate", "m.pt", "--limit", "ten"], "argument --limit: invalid int value: 'ten' (see python -m "
                                                   "qadtr.evaluate --help)"),
    (["qadtr.evaluate"], "the following arguments are required: checkpoint"),
    (["qadtr.attack", "m.pt", "--out", "x", "--steps", "many"], "argument --steps: invalid int value: 'many' (see "
                                                                 "python -m qadtr.attack --help)"),
    (["qadtr.zoo", "--bogus"], "unrecognized arguments: --bogus (see python -m qadtr.zoo --help)"),
])
@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_cli_flag_errors_are_one_line_and_exit_1_not_usage_and_2(args, message):
    _one_line_error(_cli(*args), message)


@pytest.mark.parametrize("flag, value, message", [
    ("--num-classes", "0", "num_classes=0; a classifier needs at least 2"),  # was replaced by the dataset's 10
    ("--seed", "-1", "--seed -1: must be >= 0"),  # numpy refused it with a traceback after the data loaded
])
@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_train_refuses_counts_it_would_replace_or_misread(flag, value, message, tmp_path):
    _one_line_error(_cli("qadtr.train", "--model", "test_qnet", "--bits", "4", "--data-dir", "/nonexistent",
                         "--out", str(tmp_path / "run"), flag, value), message)


def _file(tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    return tmp_path / "a_file"


@pytest.mark.parametrize("out, message", [
    (lambda t: _file(t), "is a file, not a folder; pass a folder path"),  # FileExistsError traceback before
    (lambda t: _file(t) / "run", "a_file is a file, not a folder; pass a path under a folder"),
])
def test_train_out_is_checked_before_training(out, message, tmp_path):
    path = out(tmp_path)
    _one_line_error(_cli("qadtr.train", "--model", "test_qnet", "--bits", "4", "--data-dir", "/nonexistent",
                         "--out", str(path)), message)  # refused before the data directory is even looked at
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_train_out_on_a_read_only_location_is_refused_before_training(tmp_path):
    import tempfile

    try:
        tempfile.TemporaryFile(dir="/sys").close()
        pytest.skip("/sys is writable here: no read-only location to test with")
    except OSError:
        pass
    _one_line_error(_cli("qadtr.train", "--model", "test_qnet", "--bits", "4", "--data-dir", "/nonexistent",
                         "--out", "/sys/qadtr-run"), "--out /sys/qadtr-run: cannot write in /sys")


def test_evaluate_refuses_a_negative_limit_other_classes_and_a_folder_for_json(tiny_checkpoint, tiny_dataset,
                                                                               tmp_path, capsys):
    from qadtr.evaluate import main

    assert main([str(tiny_checkpoint), "--limit", "-1"]) == 1  # evaluated all images before
    assert "error: --limit -1: must be >= 0 (0 = all images)" in capsys.readouterr().err
    assert main([str(tiny_checkpoint), "--data", "gtsrb"]) == 1  # reported 0.00%-ish accuracy before
    err = capsys.readouterr().err
    assert "--data gtsrb has 43 classes but the checkpoint 10" in err and "Traceback" not in err
    assert main([str(tiny_checkpoint), "--json", str(tmp_path)]) == 1  # IsADirectoryError after the work before
    out = capsys.readouterr()
    assert "--json" in out.err and "is a folder; pass a file path" in out.err and "top-1" not in out.out
    assert main([str(tiny_checkpoint), "--limit", "8", "--json", str(tmp_path / "acc.json")]) == 0
    assert (tmp_path / "acc.json").is_file()


def test_zoo_refuses_entry_names_it_does_not_plan(tmp_path):
    r = _cli("qadtr.zoo", "--only", "resnet20_w4a", "--out", str(tmp_path / "zoo"))  # built nothing and PASSED before
    _one_line_error(r, "--only resnet20_w4a: not zoo entries; choose from resnet20_float, ")


# --- devices (issue 18): --device cpu|cuda|auto ------------------------------------------------------------

def test_train_config_refuses_an_unknown_device_and_resume_ignores_the_device():
    from qadtr._trainer import _resume_json

    with pytest.raises(ValueError, match="device='tpu'; choose one of"):
        _cfg(device="tpu")
    assert _resume_json(_cfg(device="auto")) == _resume_json(_cfg())  # a run may resume on another device
    assert _resume_json(_cfg(lr=0.01)) != _resume_json(_cfg())


@pytest.mark.parametrize("args", [
    ["qadtr.train", "--model", "test_qnet", "--bits", "4", "--data-dir", "/nonexistent", "--out", "x"],
    ["qadtr.evaluate", "/nonexistent/model.pt"],
    ["qadtr.attack", "/nonexistent/model.pt", "--out", "x"],
])
@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_device_cuda_without_a_gpu_is_one_line_naming_the_fix(args):
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU: --device cuda is valid here")
    _one_line_error(_cli(*args, "--device", "cuda"), "--device cuda: torch")  # before the data or checkpoint
    _one_line_error(_cli(*args, "--device", "tpu"), "'tpu'")


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_evaluate_on_device_auto_matches_cpu(tiny_checkpoint, tiny_dataset, capsys):
    from qadtr.evaluate import main

    assert main([str(tiny_checkpoint), "--limit", "8"]) == 0
    cpu = capsys.readouterr().out
    assert main([str(tiny_checkpoint), "--limit", "8", "--device", "auto"]) == 0
    auto = capsys.readouterr().out
    if not torch.cuda.is_available():  # auto is the cpu here: the same lines
        assert [ln for ln in auto.splitlines() if "top-1" in ln] == [ln for ln in cpu.splitlines() if "top-1" in ln]
