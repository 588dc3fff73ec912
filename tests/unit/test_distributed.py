"""Training under torchrun: 2 CPU processes (gloo) against one process, rank-0-only writes, exact resume.

The launches run `python -m torch.distributed.run --nproc_per_node 2 HELPER ...`, where HELPER (written below)
swaps in conftest's tiny 8x8 dataset, records each rank's batches, writes and final state, shifts rank 1's
weights and buffers (Brevitas scales, BatchNorm statistics) before DDP wraps the model, which must broadcast
rank 0's over them, then calls `qadtr.train.main` unchanged.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qadtr import QadtrError
from qadtr._distributed import GlobalBatchNorm2d, World, global_batchnorm, resolve_device

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_BATCH, STEPS_PER_EPOCH, EPOCHS = 16, 4, 2  # conftest.tiny_split: 64 training images = 4 batches of 16
ARGS = [  # switch random: a bit width per step from the seeded (seed, step) generator, on every rank
    "--model", "test_qnet", "--bits", "2,4", "--per-bit-bn", "--switch", "random", "--epochs", str(EPOCHS),
    "--batch-size", str(GLOBAL_BATCH), "--lr", "0.05", "--save-every", "100", "--seed", "3"]
# |2-process - 1-process| on the final weights and buffers: the runs differ only in the order of float32 sums
# (the gradient mean over 2 shards of 8 vs over 16; BatchNorm statistics summed over ranks vs torch's kernel).
# Measured on this host (AMD EPYC, AVX2): 3.6e-7 at most. 1e-3 leaves room for a quantizer rounding a value that
# sits on a rounding boundary the other way on another host (one flipped activation moves a weight by about
# lr * step / B ~ 1e-3 here); per-rank BatchNorm statistics (plain DDP) measured 2.7e-2, and fail this.
ATOL, RTOL = 1e-3, 1e-3

HELPER = r'''
import os, sys
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
import conftest, qadtr.data, qadtr.recipes as recipes, qadtr._trainer as trainer
trace, crash_at, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rank = int(os.environ.get("RANK", 0))
qadtr.data.load_split = conftest.tiny_split  # the trainer reads datasets.load_split at call time
seen, writes, final = [], [], {{}}
real_recipe, real_fit, real_wrap = recipes.RECIPES["qat"], trainer.fit, trainer.wrap

def traced(model, x, y, *, step, cfg):
    if step == crash_at:
        raise KeyboardInterrupt("simulated kill")
    seen.append((step, x.clone(), y.clone()))
    return real_recipe(model, x, y, step=step, cfg=cfg)

def recording(name, real):
    def write(*a, **kw):  # save_checkpoint(model, path, ...); the others (path, ...)
        writes.append((name, str(next(v for v in a if isinstance(v, (str, Path))))))
        return real(*a, **kw)
    return write

def wrap(module, world):  # rank 1 starts from other weights and buffers: DDP must replace them with rank 0's
    if world.rank == 1:
        with torch.no_grad():
            for v in module.state_dict().values():
                if v.is_floating_point():
                    v.add_(0.5)
    return real_wrap(module, world)

def fit(model, *a, **kw):
    try:
        return real_fit(model, *a, **kw)
    finally:
        final.update({{k: v.detach().cpu().clone() for k, v in model.state_dict().items()}})

recipes.RECIPES["qat"] = traced
trainer.fit, trainer.wrap = fit, wrap
for name in ("atomic_write_bytes", "write_json", "save_checkpoint"):
    setattr(trainer, name, recording(name, getattr(trainer, name)))
from qadtr.train import main
try:
    rc = main(argv)
finally:
    torch.save({{"seen": seen, "writes": writes, "final": final}}, trace / f"rank{{rank}}.pt")
sys.exit(rc)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, name: str, *, procs: int, crash_at: int = -1, extra=()) -> tuple[Path, Path, int]:
    """Run the helper in `procs` processes (1: plain python, no torchrun); returns (out, trace, returncode)."""
    helper = tmp / "helper.py"
    helper.write_text(HELPER.format(tests=str(ROOT / "tests")))
    out, trace = tmp / name, tmp / f"{name}_trace"
    trace.mkdir(exist_ok=True)
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())] if procs > 1 else []
    cmd = [sys.executable, *launcher, str(helper), str(trace), str(crash_at), *ARGS, "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # one thread: the same sums each run
    # generous: 3 interpreters importing torch and Brevitas on a loaded 2-core host
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if crash_at < 0:
        assert r.returncode == 0, r.stderr[-4000:]
    return out, trace, r.returncode


def _trace(trace: Path, rank: int) -> dict:
    return torch.load(trace / f"rank{rank}.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    one = _launch(tmp, "one", procs=1)
    two = _launch(tmp, "two", procs=2)
    crashed = _launch(tmp, "crash", procs=2, crash_at=STEPS_PER_EPOCH)  # killed in epoch 2's first step
    left = {p.name: p for p in crashed[0].iterdir()}
    left["last.pt"] = torch.load(left["last.pt"], weights_only=True)["step"] if "last.pt" in left else None
    resumed = _launch(tmp, "crash", procs=2, extra=("--resume",))
    return {"one": one, "two": two, "crashed": crashed, "left": left, "resumed": resumed}


@pytest.mark.slow
def test_each_rank_trains_on_its_slice_of_the_single_process_batches(runs, tiny_dataset):
    from qadtr._trainer import epoch_order

    labels = tiny_dataset("cifar10", "train").labels  # conftest.tiny_split, what the helper trained on
    one, ranks = _trace(runs["one"][1], 0)["seen"], [_trace(runs["two"][1], r)["seen"] for r in (0, 1)]
    assert [s for s, _, _ in one] == list(range(STEPS_PER_EPOCH * EPOCHS))
    half = GLOBAL_BATCH // 2
    for step, x, y in one:
        epoch, i = divmod(step, STEPS_PER_EPOCH)
        idx = epoch_order(len(labels), 3, epoch)[i * GLOBAL_BATCH:(i + 1) * GLOBAL_BATCH].numpy()
        assert torch.equal(y, torch.from_numpy(labels[idx]))  # the global batch of (seed, epoch, step)
        for r in (0, 1):
            s, xr, yr = ranks[r][step]
            assert s == step and xr.shape == (half, 3, 8, 8)
            assert torch.equal(xr, x[r * half:(r + 1) * half]) and torch.equal(yr, y[r * half:(r + 1) * half])


@pytest.mark.slow
def test_two_processes_end_where_one_does_and_in_lock_step(runs):
    w1 = torch.load(runs["one"][0] / "model.pt", weights_only=True)
    w2 = torch.load(runs["two"][0] / "model.pt", weights_only=True)
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k].double(), w2[k].double(), atol=ATOL, rtol=RTOL), k
    moved = max((w2[k].double() - w1[k].double()).abs().max().item() for k in w1 if w1[k].is_floating_point())
    assert moved < ATOL
    final = [_trace(runs["two"][1], r)["final"] for r in (0, 1)]  # parameters and buffers of each replica
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert all(torch.equal(final[0][k], w2[k]) for k in w2)


@pytest.mark.slow
def test_only_rank_0_writes(runs):
    out, trace, _ = runs["two"]
    assert _trace(trace, 1)["writes"] == []
    names = {Path(p).name for _, p in _trace(trace, 0)["writes"]}
    assert names == {"last.pt", "history.json", "model.pt"}
    assert {p.name for p in out.iterdir()} == {"last.pt", "history.json", "model.pt", "model.json"}


@pytest.mark.slow
def test_two_processes_resumed_after_epoch_1_equal_an_uninterrupted_run(runs):
    assert runs["crashed"][2] != 0
    assert runs["left"]["last.pt"] == STEPS_PER_EPOCH and "model.pt" not in runs["left"]  # epoch 1's state
    resumed_trace = runs["resumed"][1]
    assert [s for s, _, _ in _trace(resumed_trace, 1)["seen"]] == list(range(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH))
    wf = torch.load(runs["two"][0] / "model.pt", weights_only=True)
    wr = torch.load(runs["resumed"][0] / "model.pt", weights_only=True)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


# --- fast: no launches -------------------------------------------------------------------------------------

def test_shards_split_the_global_batch_and_refuse_a_remainder():
    assert [World(rank=r, size=4).shard(16) for r in range(4)] == [slice(0, 4), slice(4, 8), slice(8, 12),
                                                                      slice(12, 16)]
    with pytest.raises(QadtrError, match="--batch-size 10 .* over 4 processes; pass a multiple of 4"):
        World(rank=1, size=4).shard(10)


def test_augmenting_a_shard_gives_its_rows_of_the_augmented_global_batch():
    from qadtr._trainer import augment

    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # (16, 3, 8, 8)
    whole = augment(x, 3, 5, hflip=True)
    for rows in (slice(0, 8), slice(8, 16), slice(4, 12)):
        assert torch.equal(augment(x[rows], 3, 5, hflip=True, rows=rows, n=16), whole[rows])


def test_cuda_without_a_gpu_is_one_line_naming_the_fix():
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU: --device cuda is valid here")
    with pytest.raises(QadtrError, match="sees no CUDA GPU here; .* or pass --device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(QadtrError, match="--device 'tpu': choose one of cpu, cuda, auto"):
        resolve_device("tpu")


def test_global_batchnorm_in_a_one_process_group_is_batchnorm(tmp_path):
    """The all_reduce path (taken only inside a process group) computes BatchNorm2d's outputs, gradients and
    running statistics; outside the block the module is a BatchNorm2d again."""
    import torch.distributed as dist

    torch.manual_seed(0)
    ref, bn = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        for m in (ref, bn):
            m.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
            m.bias.copy_(torch.tensor([0.0, 0.1, -0.2, 0.3]))
    x = (torch.randn(6, 4, 5, 5) * 3 + 1).requires_grad_(True)  # (B, C, H, W)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with global_batchnorm(bn, World(size=2)):  # size 2: the swap happens; the group itself has one rank
            assert type(bn) is GlobalBatchNorm2d
            out = bn(x)
            (g_out,) = torch.autograd.grad((out * torch.arange(4.0)[None, :, None, None]).sum(), x)
    finally:
        dist.destroy_process_group()
    assert type(bn) is torch.nn.BatchNorm2d
    want = ref(x)
    (g_ref,) = torch.autograd.grad((want * torch.arange(4.0)[None, :, None, None]).sum(), x)
    assert torch.allclose(out, want, atol=1e-5)  # float32 sums in another order
    assert torch.allclose(g_out, g_ref, atol=1e-5)
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref.running_var, atol=1e-5)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 1


@pytest.mark.gpu
def test_training_and_evaluation_on_cuda(tiny_dataset, tmp_path, capsys):
    """On a CUDA host: a short QAT run on the GPU ends close to the same run on the CPU (other kernels, other
    sums) and its checkpoint evaluates on both devices."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this host")
    from qadtr.evaluate import main as evaluate
    from qadtr.models import ModelConfig
    from qadtr.train import TrainConfig, train

    cfgs = {d: TrainConfig(model=ModelConfig("test_qnet", bits=((4, 4),)), epochs=1, batch_size=16, device=d)
            for d in ("cpu", "cuda")}
    pts = {d: train(cfg, tmp_path / d) for d, cfg in cfgs.items()}
    w = {d: torch.load(pt, weights_only=True) for d, pt in pts.items()}
    assert all(w["cuda"][k].device.type == "cpu" for k in w["cuda"])  # saved from the CPU: loads anywhere
    assert all(torch.allclose(w["cpu"][k].double(), w["cuda"][k].double(), atol=ATOL, rtol=RTOL) for k in w["cpu"])
    assert evaluate([str(pts["cuda"]), "--limit", "8", "--device", "cuda"]) == 0
    assert evaluate([str(pts["cuda"]), "--limit", "8", "--device", "cpu"]) == 0
