"""Devices and processes for training: `--device cpu|cuda|auto` and torchrun's process group.

`torchrun --nproc_per_node N -m qadtr.train ...` sets RANK, WORLD_SIZE and LOCAL_RANK in each process's
environment (and MASTER_ADDR/MASTER_PORT; `--nnodes` is torchrun's own); `join_world` reads them and joins the
group (gloo on CPU, NCCL on CUDA). Without them it returns the one-process world, which the trainer runs
through the same loop: nothing here changes a single-process run.

BatchNorm across ranks (`global_batchnorm`): every rank normalises with the statistics of the whole global
batch, so a W-process run computes what one process computes on the same global batch, up to the order of
floating-point sums. torch's SyncBatchNorm does the same but refuses CPU tensors (torch 2.13), so this one is
built from torch.distributed's all_reduce and runs on gloo and NCCL alike.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from qadtr._errors import QadtrError

DEVICES = ("cpu", "cuda", "auto")
# a rank waits this long for the others at a collective: rank 0 alone evaluates at each epoch end, which on a
# CPU ResNet-20 over 10k test images takes minutes, so torch's 10-minute NCCL default is too short
TIMEOUT = datetime.timedelta(minutes=60)


def resolve_device(name: str) -> torch.device:
    """"cpu" | "cuda" | "auto" (cuda when torch sees one, else cpu) -> a torch.device; QadtrError naming the fix."""
    if name not in DEVICES:
        raise QadtrError(f"--device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise QadtrError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU here; run on a machine with an "
                         "NVIDIA GPU and a CUDA build of torch, or pass --device cpu (or auto)")
    return torch.device(name)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; the one-process world is (0, 1, 0)."""

    rank: int = 0  # 0..size-1, over every node
    size: int = 1  # processes in all (torchrun: nnodes * nproc_per_node)
    local_rank: int = 0  # rank on this node: its GPU index
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs, metrics and progress bars."""
        return self.rank == 0

    def shard(self, global_batch: int) -> slice:
        """The positions of a global batch this rank takes: the rank-th of `size` equal contiguous slices."""
        if global_batch % self.size:
            raise QadtrError(f"--batch-size {global_batch} (the global batch) does not split over {self.size} "
                             f"processes; pass a multiple of {self.size}")
        b = global_batch // self.size
        return slice(self.rank * b, (self.rank + 1) * b)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> float:
        """The mean over ranks of a scalar tensor (every rank calls it); one process: its value."""
        if self.size == 1:
            return value.item()
        total = value.detach().reshape(1).clone()
        dist.all_reduce(total)
        return total.item() / self.size

    @contextlib.contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others (it may write a cache they then read)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise QadtrError(f"environment {name}={os.environ[name]!r} is not an integer; launch with torchrun, "
                         "which sets it") from None


def is_main_process() -> bool:
    """Whether this process is rank 0 of torchrun's world (or not under torchrun): the one that prints results."""
    return os.environ.get("RANK", "0") == "0"


def join_world(device: str) -> World:
    """The world torchrun's environment describes (joining its process group), or the one-process world.

    `device` is the `--device` name; under torchrun a CUDA rank takes GPU LOCAL_RANK.
    """
    dev = resolve_device(device)
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") == 1:
        return World(device=dev)
    rank, size, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise QadtrError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s); pass "
                             "torchrun --nproc_per_node at most the number of GPUs")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    return World(rank, size, local, dev)


def leave_world(world: World) -> None:
    """Leave the process group (after a barrier when `world` finished normally); a no-op for one process."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, world: World) -> nn.Module:
    """DistributedDataParallel around `module` for several processes, `module` itself for one.

    DDP broadcasts rank 0's parameters and buffers (Brevitas' scales are parameters, BatchNorm's statistics
    buffers) when it wraps, and rank 0's buffers before each forward; gradients are averaged over ranks.
    `find_unused_parameters`: a switchable model trains one bit width per step, so the other bit widths'
    BatchNorms and quantizer scales get no gradient that step (the same ones on every rank).
    """
    if world.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def broadcast_state_(state: dict, world: World) -> None:
    """Make every tensor of a recipe's state (QADT-R's patch pool) rank 0's, in place, so that all ranks use
    the state rank 0 saves in last.pt (and a resumed run is exact)."""
    if world.size == 1:
        return
    for key in sorted(state):
        if isinstance(state[key], torch.Tensor):
            moved = state[key].to(world.device)
            dist.broadcast(moved, src=0)
            state[key].copy_(moved)


class OnDevice(nn.Module):
    """`net` on `device`, called with and returning CPU tensors: each call moves its batch there once and the
    output back (autograd flows through both moves). For code that builds its tensors on the CPU (the patch
    attacks of qadtr.attacks)."""

    def __init__(self, net: nn.Module, device: torch.device):
        super().__init__()
        self.net, self.device = net.to(device), device

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) on the CPU -> (B, classes) on the CPU
        return self.net(x.to(self.device)).to(x.device)


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient (also a sum over ranks): torch.distributed.nn.functional.all_reduce,
    which torch 2.13 deprecates without a differentiable replacement."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch (all ranks); eval as BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, C, H, W) on each rank
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        count = all_reduce(x.new_tensor([x.numel() / x.shape[1]]))  # (1,) N = B * H * W over all ranks
        mean = all_reduce(x.sum((0, 2, 3))) / count  # (C,)
        centred = x - mean[None, :, None, None]  # (b, C, H, W)
        var = all_reduce(centred.pow(2).sum((0, 2, 3))) / count  # (C,) biased, as BatchNorm normalises
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1))  # unbiased, as BatchNorm
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]  # (b, C, H, W)
        return out * self.weight[None, :, None, None] + self.bias[None, :, None, None]


@contextlib.contextmanager
def global_batchnorm(model: nn.Module, world: World) -> Iterator[nn.Module]:
    """Every nn.BatchNorm2d of `model` uses global-batch statistics inside the block (several processes only).

    The modules keep their identity, parameters and state_dict keys (shared per-bit BatchNorms stay shared);
    their class is restored on exit, also on an error.
    """
    swapped = [m for m in model.modules() if type(m) is nn.BatchNorm2d] if world.size > 1 else []
    if any(not (m.affine and m.track_running_stats) for m in swapped):
        raise QadtrError("a BatchNorm2d without affine parameters or running statistics: global-batch statistics "
                         "across processes support only the default BatchNorm2d; train it in one process")
    for m in swapped:
        m.__class__ = GlobalBatchNorm2d
    try:
        yield model
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d
