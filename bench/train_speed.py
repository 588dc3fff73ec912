"""Training step time of ResNet-20 at batch 128: Brevitas w4a4 and w8a8 vs float, as ratios in one run.

    python bench/train_speed.py [--rounds 5] [--steps 5]

The three models are timed in interleaved rounds (float, w8a8, w4a4, float, ...) so that machine
noise hits all of them alike; each figure is the median step time over rounds. Results are printed
and saved to bench/results/train_speed.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qadtr.models import ModelConfig, create_model
from qadtr.models._calibrate import calibrate_

RESULTS = Path(__file__).parent / "results"  # default --out: train_speed.json there
BATCH = 128  # the training batch size of every zoo run


def make(bits):
    model = create_model(ModelConfig("resnet20", bits=bits))
    if bits:
        calibrate_(model, np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8))
    return model.train()


def step_time(model, opt, x, *, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser, check_writable, run_cli  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(RESULTS), help="folder for train_speed.json (default bench/results)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per model per round")
    args = p.parse_args(argv)

    def body() -> None:
        check_writable(args.out, "folder")  # before the timing, not after
        measure(rounds=args.rounds, steps=args.steps, out=Path(args.out) / "train_speed.json")

    return run_cli("bench.train_speed", body, argv)


def measure(*, rounds: int, steps: int, out: Path) -> None:
    """Median step time of float, w8a8 and w4a4 ResNet-20 in interleaved rounds, saved to `out`."""
    torch.manual_seed(0)
    x = torch.rand(BATCH, 3, 32, 32)  # (B, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    models = {"float": make(()), "w8a8": make(((8, 8),)), "w4a4": make(((4, 4),))}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    for k in models:  # warm-up: first calls allocate and pick kernels
        step_time(models[k], opts[k], x, y=y, steps=1)
    times = {k: [] for k in models}
    for _ in range(rounds):
        for k in models:
            times[k].append(step_time(models[k], opts[k], x, y=y, steps=steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": "ResNet-20 training step (forward+backward+SGD), batch 128, CPU",
        "median_step_s": med,
        "ratio_to_float": {k: med[k] / med["float"] for k in med},
        "rounds": rounds, "steps_per_round": steps, "all_step_s": times,
        "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for k in med:
        print(f"{k:6s} {med[k]:.3f} s/step  x{result['ratio_to_float'][k]:.2f} float")
    print(f"saved {out}")


if __name__ == "__main__":
    sys.exit(main())
