"""The GPU check: what an NVIDIA machine gives this project, from a clean checkout, in under five minutes.

    python -m bench.gpu_check --out bench/results            # on the GPU machine (needs a CUDA build of torch)
    python -m bench.gpu_check --device cpu --out /tmp/check  # the same script without a GPU (a dry run: CPU only)

Measures, side by side in one run and each as a ratio to the CPU:
  1. training steps/s of ResNet-20 w4a4 (Brevitas QAT, batch 128) and float on `--device` vs the CPU;
  2. a 1-process torchrun training run on `--device` (`python -m torch.distributed.run --nproc_per_node 1 -m
     qadtr.train ...` on a tiny model and random images written as a dataset folder: no dataset needed);
  3. patch-attack throughput: universal-patch optimiser steps/s against the w4a4 deploy net, `--device` vs CPU.
Writes gpu_check_<utc>.json (the host fingerprint, torch/CUDA versions, the GPU's name and memory, every
timing) into --out and prints one line per measurement. CUDA timings synchronise before each clock read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"  # default --out
BATCH = 128  # the zoo's training batch
SIDE = 32  # CIFAR-10 images


def _clock(device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: time what ran, not what was queued
    return time.perf_counter()


def train_steps_per_s(bits, device, *, steps: int) -> float:
    """Optimizer steps per second of ResNet-20 (`bits`: ((4, 4),) or () for float) at batch 128 on `device`."""
    import torch
    import torch.nn.functional as F

    from bench.train_speed import make  # the ResNet-20 every training benchmark times, calibrated alike

    torch.manual_seed(0)
    model = make(bits).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(BATCH, 3, SIDE, SIDE, device=device)  # (B, 3, H, W), moved once
    y = torch.randint(0, 10, (BATCH,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # first call: allocations, kernel choice (cuDNN autotuning)
    start = _clock(device)
    for _ in range(steps):
        step()
    return steps / (_clock(device) - start)


def attack_steps_per_s(device, *, steps: int) -> float:
    """Universal-patch optimiser steps per second (batch 64, EOT placements) against the w4a4 deploy net."""
    import torch

    from bench.train_speed import make
    from qadtr._distributed import OnDevice
    from qadtr.attacks import UniversalConfig, universal_patch
    from qadtr.models import deploy_net

    torch.manual_seed(0)
    net = OnDevice(deploy_net(make(((4, 4),)), 4, 4).to(device), device)  # attacks build batches on the CPU
    rng = np.random.default_rng(0)
    rng.integers(0, 256, (256, SIDE, SIDE, 3), dtype=np.uint8)  # make()'s calibration draw: the attacked images follow
    images = rng.integers(0, 256, (256, SIDE, SIDE, 3), dtype=np.uint8)  # (N, H, W, 3)
    labels = rng.integers(0, 10, 256)
    cfg = UniversalConfig(size=0.1, target=3, steps=steps)
    universal_patch(net, images, labels, cfg=UniversalConfig(size=0.1, target=3, steps=1))  # warm-up
    start = _clock(device)
    universal_patch(net, images, labels, cfg=cfg)
    return steps / (_clock(device) - start)


def _random_cifar(root: Path, *, train: int, test: int) -> Path:
    """A CIFAR-10 image-folder dataset of random PNGs (`cifar10/<split>/<class>/<i>.png`, qadtr.data.cifar10's
    layout 2): the torchrun run needs a dataset on disk, and a clean checkout on a GPU machine may have none."""
    from PIL import Image

    from qadtr.data.cifar10 import CLASSES

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for name in CLASSES:
            folder = root / "cifar10" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return root


def torchrun_once(device: str, tmp: Path, *, timeout: float = 240.0) -> dict:
    """One torchrun process training test_qnet (w4a4) for one epoch on random images: rc, seconds, last line."""
    data = _random_cifar(tmp / "data", train=26, test=7)
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
            "--master_port", str(29500 + os.getpid() % 1000), "-m", "qadtr.train", "--model", "test_qnet", "--bits",
            "4", "--epochs", "1", "--batch-size", "64", "--data-dir", str(data), "--device", device,
            "--out", str(tmp / "run")]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()  # stdout ends with the PASSED line
    return {"command": " ".join(argv[1:]), "returncode": done.returncode, "seconds": time.perf_counter() - start,
            "last_line": lines[-1] if lines else "", "passed": done.returncode == 0}


def check(device_name: str, out: Path, *, steps: int, cpu_steps: int) -> dict:
    import torch

    from devices._host import fingerprint
    from qadtr._config import write_json
    from qadtr._distributed import resolve_device
    from qadtr._scratch import scratch

    device, cpu = resolve_device(device_name), torch.device("cpu")  # refused first when no GPU is there
    gpu = ({"name": torch.cuda.get_device_name(device), "capability": list(torch.cuda.get_device_capability(device)),
            "memory_gib": torch.cuda.get_device_properties(device).total_memory / 2 ** 30,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()} if device.type == "cuda" else None)
    res = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": fingerprint(),
           "torch": torch.__version__, "device": str(device), "gpu": gpu, "steps": steps, "cpu_steps": cpu_steps,
           "train_steps_per_s": {},
           "attack_steps_per_s": {}}
    for name, bits in (("w4a4", ((4, 4),)), ("float", ())):
        here, there = train_steps_per_s(bits, cpu, steps=cpu_steps), train_steps_per_s(bits, device, steps=steps)
        res["train_steps_per_s"][name] = {"cpu": here, str(device): there, "ratio_to_cpu": there / here}
        print(f"train {name:5s} batch {BATCH}: cpu {here:6.2f} steps/s, {device} {there:7.2f} ({there / here:.1f}x)")
    here, there = attack_steps_per_s(cpu, steps=cpu_steps), attack_steps_per_s(device, steps=steps)
    res["attack_steps_per_s"] = {"cpu": here, str(device): there, "ratio_to_cpu": there / here}
    print(f"universal patch steps: cpu {here:6.2f}/s, {device} {there:7.2f}/s ({there / here:.1f}x)")
    with scratch("gpu-check") as tmp:
        res["torchrun"] = torchrun_once(device.type, Path(tmp))
    run = res["torchrun"]
    print(f"torchrun 1 process on {device.type}: rc {run['returncode']} in {run['seconds']:.0f}s: "
          f"{run['last_line'][:100]}")
    path = out / f"gpu_check_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    write_json(path, res)
    print(f"wrote {path}")
    return res


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser, check_count, check_writable, run_cli  # one line, exit 1 on a bad flag
    from qadtr._errors import QadtrError

    p = ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) | auto | cpu (a dry run without a GPU)")
    p.add_argument("--steps", type=int, default=20, help="timed steps on --device per measurement (after a warm-up)")
    p.add_argument("--cpu-steps", type=int, default=5, help="timed steps of the CPU baseline (a w4a4 step is ~1 s on "
                   "2 cores: the CPU side sets the check's length)")
    p.add_argument("--out", default=str(RESULTS), help="folder for gpu_check_<utc>.json (default bench/results)")
    args = p.parse_args(argv)

    def body() -> None:
        check_count(args.steps, "--steps")
        check_count(args.cpu_steps, "--cpu-steps")
        check_writable(args.out, "folder")
        res = check(args.device, Path(args.out), steps=args.steps, cpu_steps=args.cpu_steps)
        if res["torchrun"]["passed"] is not True:
            raise QadtrError("the torchrun run failed (its last line is in the results file); see above")

    return run_cli("bench.gpu_check", body, argv)


if __name__ == "__main__":
    sys.exit(main())
