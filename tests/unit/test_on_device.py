"""eval.on_device on the tiny model (fakequant and null runtimes): metrics, resume after an interruption,
misbehaving devices, and every user error as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devices import Availability, Batch, BatchStream
from devices.local import LocalDevice
from eval import fleet as od
from eval import on_device
from eval.replay import load_replay
from eval.store import Store
from qadtr import QadtrError

ROOT = Path(__file__).resolve().parents[2]
SUBSET = 16
REAL_REPLAY = LocalDevice.replay


def _evaluate(tiny_checkpoint, tiny_patches, tmp_path, *, store="s.sqlite", models=None, **kw):
    return od.replay_on_devices(models=models or [f"{tiny_checkpoint}@w4a4"], patches=str(tiny_patches),
                       eval_subset=SUBSET, store_path=tmp_path / store, replay_dir=tmp_path / "replays",
                       batch_size=kw.pop("batch_size", 8), warmup=kw.pop("warmup", 1), **kw)


def _fakequant_preds(tiny_checkpoint, replay, bits):
    from qadtr.checkpoint import load_checkpoint
    from qadtr.predict import predict
    from qadtr.models import deploy_net

    model, _ = load_checkpoint(tiny_checkpoint)
    return predict(deploy_net(model, *bits), replay.images)


@pytest.mark.slow  # a CLI in a subprocess or a real training loop: 5-30 s on 2 cores
def test_cli_fakequant_every_bit_width(tiny_dataset, tiny_checkpoint, tiny_patches, tmp_path, capsys):
    store, out = tmp_path / "res" / "s.sqlite", tmp_path / "m.json"
    rc = on_device.main(["--model", str(tiny_checkpoint.parent), "--patches", str(tiny_patches), "--eval-subset", str(SUBSET),
                  "--store", str(store), "--out", str(out), "--batch-size", "8", "--warmup", "1"])
    printed = capsys.readouterr().out
    assert rc == 0 and "PASSED" in printed and "ASR w4a4_universal_t1.npz" in printed
    result = json.loads(out.read_text())
    assert [r["bits"] for r in result["runs"]] == ["w2a2", "w4a4", "w8a8"]  # a switchable checkpoint: each width
    replay = load_replay(result["replay"]["path"])
    assert Path(result["replay"]["path"]).parent == store.parent / "replays"
    for run in result["runs"]:
        assert run["runtime"] == "fakequant" and run["kernels"].endswith(f"deploy_net {run['bits']}")
        bits = (int(run["bits"][1]), int(run["bits"][3]))
        pred = _fakequant_preds(tiny_checkpoint, replay, bits)
        acc = replay.clean_accuracy(pred)
        assert (run["clean_accuracy"]["k"], run["clean_accuracy"]["n"]) == (acc.k, acc.n) == (acc.k, SUBSET)
        want = [(a.rate.k, a.rate.n) for _, a in replay.asr(pred)]
        assert [(a["asr"]["k"], a["asr"]["n"]) for a in run["asr"]] == want
        assert all(a["asr"]["value"] is None for a in run["asr"] if a["asr"]["n"] == 0)  # JSON has no NaN
        assert [a["patch"] for a in run["asr"]] == [p.file for p in replay.info.patches]
        assert run["asr"][0]["definition"].startswith("untargeted ASR")
        lat = run["latency"]
        assert lat["batches"] == -(-len(replay) // 8) and 0 < lat["per_image_ms"]["p50"] <= lat["per_image_ms"]["p99"]
        assert run["throughput_img_per_s"] > 0 and run["energy_per_inference_j"] is None
        assert run["energy_note"].startswith("no power meter readable") or "metered" not in run["energy_note"]
        assert run["replayed_now"] == len(replay)
    with Store(store) as s:
        assert all(r.complete for r in s.runs()) and len(s.runs()) == 3
    # the same command again: nothing is replayed, the metrics come from the store
    assert on_device.main(["--model", str(tiny_checkpoint.parent), "--patches", str(tiny_patches), "--eval-subset",
                    str(SUBSET), "--store", str(store), "--out", str(out), "--batch-size", "8", "--warmup", "1"]) == 0
    again = json.loads(out.read_text())
    assert [r["replayed_now"] for r in again["runs"]] == [0, 0, 0]
    assert [r["asr"] for r in again["runs"]] == [r["asr"] for r in result["runs"]]
    capsys.readouterr()
    assert on_device.main(["--list-runs", "--store", str(store)]) == 0
    assert capsys.readouterr().out.count("done") == 3


def _flaky(monkeypatch, after: int, error: type[BaseException] = RuntimeError):
    """LocalDevice.replay whose batches stop with `error` after `after` batches (a killed run, a lost board)."""
    real = LocalDevice.replay

    def replay(self, *args, **kwargs):
        inner = real(self, *args, **kwargs)

        def produce(outer: BatchStream):
            for i, batch in enumerate(inner):
                if i == after:
                    raise error("connection lost")
                outer.runner, outer.kernels, outer.feed = inner.runner, inner.kernels, inner.feed
                yield batch

        return BatchStream(produce)

    monkeypatch.setattr(LocalDevice, "replay", replay)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_run_resumes_without_loss_or_double_count(tiny_dataset, tiny_checkpoint, tiny_patches, tmp_path,
                                                              monkeypatch, error):
    whole = _evaluate(tiny_checkpoint, tiny_patches, tmp_path, store="whole.sqlite")
    _flaky(monkeypatch, after=3, error=error)
    with pytest.raises(error, match="connection lost"):
        _evaluate(tiny_checkpoint, tiny_patches, tmp_path)
    with Store(tmp_path / "s.sqlite") as s:
        (run,) = s.runs()
        assert not run.complete and s.done_samples(run.run_id) == set(range(24))  # 3 whole batches of 8
    monkeypatch.setattr(LocalDevice, "replay", REAL_REPLAY)
    resumed = _evaluate(tiny_checkpoint, tiny_patches, tmp_path)
    (r,) = resumed["runs"]
    replay = load_replay(resumed["replay"]["path"])
    assert r["replayed_now"] == len(replay) - 24 and r["latency"]["batches"] == -(-len(replay) // 8)
    with Store(tmp_path / "s.sqlite") as s, Store(tmp_path / "whole.sqlite") as w:
        count = s._db.execute("SELECT count(*), count(DISTINCT sample) FROM outputs").fetchone()
        assert count == (len(replay), len(replay))  # each sample once
        assert np.array_equal(s.logits(r["run_id"]), w.logits(whole["runs"][0]["run_id"]))
    for key in ("clean_accuracy", "asr", "samples", "kernels", "run_id"):
        assert r[key] == whole["runs"][0][key], key


def test_kill_mid_run_cli_exit_code_then_resume(tiny_dataset, tiny_checkpoint, tiny_patches, tmp_path, monkeypatch,
                                                capsys):
    args = ["--model", f"{tiny_checkpoint}@w8a8", "--patches", str(tiny_patches), "--eval-subset", str(SUBSET),
            "--store", str(tmp_path / "s.sqlite"), "--batch-size", "8", "--warmup", "0"]
    _flaky(monkeypatch, after=2, error=KeyboardInterrupt)
    assert on_device.main(args) == 130 and "INTERRUPTED" in capsys.readouterr().err
    monkeypatch.setattr(LocalDevice, "replay", REAL_REPLAY)
    assert on_device.main(args) == 0
    result = json.loads((tmp_path / "on_device.json").read_text())
    assert result["runs"][0]["replayed_now"] == result["runs"][0]["samples"] - 16


class Board:
    """A duck-typed remote device (issue 6 shape): streams Batches it computed elsewhere."""

    name, emulated = "rpi4-emu", True

    def __init__(self, batches):
        self._batches = batches

    def describe(self):
        return {"name": self.name, "cpu": "cortex-a72 (emulated)"}

    def status(self):
        return [Availability("runtime", "null", True, ""), Availability("power", "none", False, "emulated")]

    def replay(self, runtime, artifact, images, *, batch_size, warmup, start, options):
        def produce(rep):
            rep.kernels = "null on the board"
            yield from self._batches(images, start)
        return BatchStream(produce)


def _null_job(tiny_checkpoint):
    return od.Job("null", Path(tiny_checkpoint), "model.pt", "c" * 64, (4, 4), "c" * 64)


@pytest.fixture
def replay(tiny_dataset, tiny_patches, tmp_path):
    from eval.replay import make_replay

    return load_replay(make_replay(tiny_patches, "cifar10", eval_subset=SUBSET, out=tmp_path))


def _zeros(first, n):
    return Batch(first, np.zeros((n, 10), np.float32), 0.001)


def test_a_remote_board_plugs_into_the_same_loop(replay, tiny_checkpoint, tmp_path):
    board = Board(lambda images, start: (_zeros(i, min(5, len(images) - i)) for i in range(start, len(images), 5)))
    with Store(tmp_path / "s.sqlite") as s:
        out = od.replay_run(s, board, _null_job(tiny_checkpoint), replay=replay, batch_size=5, warmup=0)
        assert out.run.complete and out.run.emulated and out.run.kernels == "null on the board"
        m = od.run_metrics(s, out.run.run_id, replay, energy_reason=od.energy_note(board))
    assert m["energy_per_inference_j"] is None and m["energy_note"] == "emulated device: its energy cannot be observed"
    assert m["clean_accuracy"]["k"] == int((replay.labels[:SUBSET] == 0).sum())  # zeros -> class 0


@pytest.mark.parametrize("stream, match", [
    (lambda images, start: (_zeros(i, 5) for i in range(start, 20, 5)), r"stopped after 20 of \d+ samples; re-run"),
    (lambda images, start: (_zeros(i, 4) for i in range(start, len(images), 5)), "returned rows from 5, expected 4"),
    (lambda images, start: iter([_zeros(0, 4), _zeros(0, 4)]), "returned rows from 0, expected 4"),
])
def test_misbehaving_devices_are_refused(replay, tiny_checkpoint, tmp_path, stream, match):
    with Store(tmp_path / "s.sqlite") as s:
        with pytest.raises(QadtrError, match=match):
            od.replay_run(s, Board(stream), _null_job(tiny_checkpoint), replay=replay, batch_size=5, warmup=0)
        (run,) = s.runs()
        assert not run.complete and len(s.done_samples(run.run_id)) in (4, 20)  # what arrived in order stays


def test_energy_is_averaged_when_every_batch_is_metered(replay, tiny_checkpoint, tmp_path):
    board = Board(lambda images, start: (Batch(i, np.zeros((min(8, len(images) - i), 10), np.float32), 0.01, 0.5)
                                         for i in range(start, len(images), 8)))
    with Store(tmp_path / "s.sqlite") as s:
        out = od.replay_run(s, board, _null_job(tiny_checkpoint), replay=replay, batch_size=8, warmup=0)
        m = od.run_metrics(s, out.run.run_id, replay)
    batches = -(-len(replay) // 8)
    assert m["energy_per_inference_j"] == pytest.approx(0.5 * batches / len(replay))
    assert m["throughput_img_per_s"] == pytest.approx(len(replay) / (0.01 * batches))


def test_kernels_changing_mid_run_needs_fresh(replay, tiny_checkpoint, tmp_path):
    first = Board(lambda images, start: iter([_zeros(0, 5)]))
    with Store(tmp_path / "s.sqlite") as s:
        with pytest.raises(QadtrError, match="stopped after 5"):
            od.replay_run(s, first, _null_job(tiny_checkpoint), replay=replay, batch_size=5, warmup=0)
        s.set_kernels(s.runs()[0].run_id, "older kernels")
        board = Board(lambda images, start: (_zeros(i, min(5, len(images) - i)) for i in range(start, len(images), 5)))
        with pytest.raises(QadtrError, match="now runs 'null on the board', the run started on 'older kernels'"):
            od.replay_run(s, board, _null_job(tiny_checkpoint), replay=replay, batch_size=5, warmup=0)
        out = od.replay_run(s, board, _null_job(tiny_checkpoint), replay=replay, batch_size=5, warmup=0, fresh=True)
        assert out.run.complete and out.replayed == len(replay)


def test_null_runtime_through_the_cli(tiny_dataset, tiny_checkpoint, tiny_patches, tmp_path):
    result = _evaluate(tiny_checkpoint, tiny_patches, tmp_path, runtimes=["null"], models=[str(tiny_checkpoint)])
    (run,) = result["runs"]
    assert run["runtime"] == "null" and run["kernels"].startswith("none (null runner")
    assert all(a["asr"]["k"] == 0 for a in run["asr"])  # a constant prediction never changes


def test_plan_leaves_out_what_cannot_run_here(tiny_checkpoint):
    class Offline(Board):
        def status(self):
            return [Availability("runtime", "fakequant", True, ""), Availability("runtime", "null", False, "no agent")]

    jobs, skipped = od.plan(Offline(None), [f"{tiny_checkpoint}@w2a2"], ["fakequant", "null"], data="cifar10")
    assert [(j.runtime, j.label, j.bits) for j in jobs] == [("fakequant", "model.pt@w2a2", (2, 2))]
    assert skipped == [{"runtime": "null", "model": f"{tiny_checkpoint}@w2a2",
                        "reason": "not available on rpi4-emu: no agent"}]
    with pytest.raises(QadtrError, match="nothing can run on rpi4-emu: null for .*: not available on rpi4-emu"):
        od.plan(Offline(None), [str(tiny_checkpoint)], ["null"], data="cifar10")


def _cli_error(capsys, args) -> str:
    assert on_device.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: ") and err[1].startswith("FAILED |"), err
    return err[0]


def test_user_errors_are_one_line(tiny_dataset, tiny_checkpoint, tiny_patches, tmp_path, capsys):
    base = ["--patches", str(tiny_patches), "--store", str(tmp_path / "s.sqlite")]
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"not a model")
    ssh = tmp_path / "devices.toml"
    ssh.write_text('[devices.jetson]\nkind = "ssh"\nhost = "127.0.0.1"\nport = 1\n')  # nothing listens: refused
    cases = [
        (["--model", str(tmp_path / "nope.onnx")], "nope.onnx not found; export one"),
        (["--model", str(tiny_checkpoint), "--device", "jetson"], "no device or group 'jetson'"),
        (["--model", str(tiny_checkpoint), "--runtimes", "onnxrt"], "runtime 'onnxrt' takes .onnx, not model.pt"),
        (["--model", str(tflite), "--runtimes", "onnxrt,fakequant"], "no runtime takes --model"),
        (["--model", str(tiny_checkpoint), "--runtimes", "ort"], "unknown runtime 'ort'"),
        (["--model", f"{tiny_checkpoint}@w3a3"], "has no w3a3; it was trained at w2a2, w4a4, w8a8"),
        (["--model", str(tiny_checkpoint), "--data", "gtsrb"],
         "not gtsrb/test; re-run `python -m qadtr.attack --attack location --data gtsrb` or pass --data cifar10"),
        (["--model", str(tiny_checkpoint), "--device", "jetson", "--inventory", str(ssh)],
         "device 'jetson' is unreachable at 127.0.0.1:1"),
        (["--model", str(tiny_checkpoint), "--batch-size", "0"], "--batch-size 0"),
        (["--model", str(tiny_checkpoint), "--checkpoint", str(tiny_checkpoint)], "--checkpoint is for the pipeline"),
        (["--checkpoint", str(tmp_path / "nothing")], "nothing"),
    ]
    for args, match in cases:
        assert match in _cli_error(capsys, base + args), match


def test_missing_artifact_exits_1_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "eval.on_device", "--model", str(tmp_path / "x.onnx"), "--patches",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "x.onnx not found" in r.stderr


def test_list_devices(capsys):
    assert on_device.main(["--list-devices"]) == 0
    out = capsys.readouterr().out
    assert "local" in out and "runtime fakequant" in out and "power" in out


def test_pipeline_cli_refuses_a_negative_subset_naming_its_own_command(capsys):
    from eval.pipeline import main

    assert main(["--eval-subset", "-1"]) == 1
    err = capsys.readouterr().err
    assert "error: --eval-subset -1: give a count of test images, or 0 for all of them" in err
    assert err.strip().splitlines()[-1].endswith("| python -m eval.pipeline --eval-subset -1")  # not pytest's argv


def test_pipeline_replays_patches_made_on_the_checkpoints_dataset(tiny_checkpoint, tiny_patches, tmp_path,
                                                                  monkeypatch):
    """A GTSRB checkpoint is not replayed with the committed CIFAR-10 patches: they are used for their own dataset
    only, a --patches folder of another dataset is refused, and otherwise one patch is made on the checkpoint."""
    import qadtr.attacks.make
    from eval import pipeline
    from qadtr._errors import QadtrError

    assert pipeline._patches(str(tiny_patches), tiny_checkpoint, tmp_path, data="cifar10", bits=(4, 4),
                              data_dir=None) == \
        tiny_patches
    with pytest.raises(QadtrError, match="holds patches made on cifar10, the checkpoints were trained on gtsrb: "
                                         "pass patches made on gtsrb"):
        pipeline._patches(str(tiny_patches), tiny_checkpoint, tmp_path, data="gtsrb", bits=(4, 4), data_dir=None)
    monkeypatch.setattr(pipeline, "DEFAULT_PATCHES", str(tiny_patches))  # stands in for the committed folder
    assert pipeline._patches(None, tiny_checkpoint, tmp_path, data="cifar10", bits=(4, 4),
                              data_dir=None) == tiny_patches
    made = []

    def make(checkpoint, configs, *, out, bits, data_dir):
        made.append((checkpoint, bits))
        out.mkdir(parents=True)
        (out / "p.npz").write_bytes(b"")

    monkeypatch.setattr(qadtr.attacks.make, "make_patches", make)
    made_dir = pipeline._patches(None, tiny_checkpoint, tmp_path, data="gtsrb", bits=(4, 4), data_dir=None)
    assert made_dir == tmp_path / "patches"
    assert made == [(tiny_checkpoint, "w4a4")]


def test_the_default_subset_is_the_whole_test_set_on_this_host_and_a_subset_with_a_board():
    from eval.on_device import BOARD_SUBSET, default_subset

    assert default_subset("local", None) == 0  # every runtime here replays 10,000 images in minutes
    assert default_subset("local,rpi4-emu", None) == BOARD_SUBSET == 2000  # the slowest device decides
    assert default_subset("rpi4-emu", None) == BOARD_SUBSET


def test_without_eval_subset_a_local_replay_covers_every_test_image(tiny_dataset, tiny_checkpoint, tiny_patches,
                                                                    tmp_path):
    from eval.on_device import main
    from eval.replay import load_replay
    from qadtr.data import load_split

    store = tmp_path / "r.sqlite"
    assert main(["--model", str(tiny_checkpoint), "--patches", str(tiny_patches), "--data-dir", str(tiny_dataset),
                 "--runtimes", "null", "--store", str(store)]) == 0
    (replay,) = sorted((tmp_path / "replays").glob("*.npz"))
    info = load_replay(replay).info
    n_test = len(load_split("cifar10", "test", str(tiny_dataset)).labels)
    assert info.eval_subset == 0 and info.n_subset == n_test  # 0 = all of them, each clean once
