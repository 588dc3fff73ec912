"""Training cost of each defence recipe relative to plain QAT, measured side by side in one run.

    python bench/defense_cost.py [--model resnet20] [--bits 2,4,5,8] [--batch 128] [--rounds 6] [--steps 10]

Every recipe trains its own switchable model (same architecture, bit widths and per-bit BatchNorm)
with its default config; the baseline is QAT with one bit width per step (`--switch cycle`), the
per-step work every defence builds on. Recipes are timed in interleaved rounds (qat, dq, pbat, dwq,
qadtr, qat, ...) so machine noise hits all alike. Step indices run on across rounds, so periodic work
(QADT-R refreshes a patch every 20 steps, GIR every 3rd) is paid at its real rate; rounds * steps = 60
(the default) amortises both exactly. A recipe's figure is its total time over total steps; the ratio
divides by QAT's. Process CPU time is recorded next to wall time: on a machine shared with other jobs
wall time swings by 10x between rounds, while the CPU time of a single-threaded run (`--threads 1`)
still measures the work. Prints and saves bench/results/defense_cost_<utc time>.json. Compare ratios,
not absolute times.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("qat", "dq", "pbat", "dwq", "qadtr")
SWITCH = {"qat": "cycle", "dq": "cycle", "pbat": "cycle", "dwq": "all", "qadtr": "all"}  # dwq/qadtr pick their own


@dataclass(frozen=True)
class CostConfig:
    """One measurement: the flags of the same names (main fills it; their help texts say what each means)."""

    model: str
    bits: str  # the switchable model's bit widths, e.g. "2,4,5,8"
    batch: int
    rounds: int
    steps: int  # per recipe per round
    recipes: str  # comma-separated; qat is always included
    init: str  # "" = no float weights
    threads: int  # 0 = torch's default


def make(recipe: str, cfg: CostConfig):
    """(model, optimizer, TrainConfig, state) for one recipe, calibrated on random images."""
    from qadtr.models import ModelConfig, create_model, load_pretrained_
    from qadtr.models._calibrate import calibrate_
    from qadtr.bits import parse_bits
    from qadtr.train_config import TrainConfig

    bits = parse_bits(cfg.bits)
    train = TrainConfig(ModelConfig(cfg.model, bits=bits, per_bit_bn=True), recipe=recipe, batch_size=cfg.batch,
                        switch=SWITCH[recipe], seed=0)
    torch.manual_seed(0)
    model = create_model(train.model)
    if cfg.init:
        load_pretrained_(model, cfg.init)
    side = 32 if cfg.model != "test_qnet" else 8
    calibrate_(model, np.random.default_rng(0).integers(0, 256, (256, side, side, 3), dtype=np.uint8))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return model.train(), opt, train, {}


def timed_steps(recipe: str, fn, model, *, opt, cfg, state: dict, batches, first: int,
                n: int) -> tuple[float, float]:
    """(wall, process CPU) seconds for steps first .. first+n-1 (forward, recipe extras, backward, SGD)."""
    from qadtr.recipes import STATEFUL

    start, cpu = time.perf_counter(), time.process_time()
    for step in range(first, first + n):
        x, y = batches[step % len(batches)]
        extra = {"state": state} if recipe in STATEFUL else {}
        loss, _ = fn(model, x, y, step=step, cfg=cfg, **extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser, check_writable, run_cli  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m bench.defense_cost", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(RESULTS), help="folder for defense_cost_<utc>.json (default bench/results)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--bits", default="2,4,5,8", help="the switchable model's bit widths (QADT-R's DBWT set)")
    p.add_argument("--batch", type=int, default=128, help="training batch (the zoo's)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="steps per recipe per round")
    p.add_argument("--recipes", default=",".join(RECIPES), help="qat is always included (the baseline)")
    p.add_argument("--init", default="", help="optional float weights (e.g. zoo/resnet20_float/model.pt)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default; 1 makes CPU time a clean "
                   "measure of work on a busy machine)")
    args = p.parse_args(argv)

    def body() -> None:
        check_writable(args.out, "folder")  # before minutes of timing, not after
        measure(CostConfig(**{k: v for k, v in vars(args).items() if k != "out"}), out=Path(args.out))

    return run_cli("bench.defense_cost", body, argv)


def measure(cfg: CostConfig, *, out: Path) -> None:
    """Time every recipe's step side by side (interleaved rounds) and save the ratios into the folder `out`."""
    from qadtr.recipes import get_recipe

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    recipes = ["qat"] + [r for r in cfg.recipes.split(",") if r and r != "qat"]
    side = 32 if cfg.model != "test_qnet" else 8
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (cfg.batch, 3, side, side), generator=g).float() / 255,  # (B, 3, H, W)
                torch.randint(0, 10, (cfg.batch,), generator=g)) for _ in range(4)]
    runs = {r: make(r, cfg) for r in recipes}
    fns = {r: get_recipe(r) for r in recipes}

    def steps(r: str, first: int, n: int) -> tuple[float, float]:
        model, opt, train, state = runs[r]
        return timed_steps(r, fns[r], model, opt=opt, cfg=train, state=state, batches=batches, first=first, n=n)

    for r in recipes:  # warm-up at a step that does no periodic work (kernels, allocations)
        steps(r, 1, 1)
        runs[r] = (*runs[r][:3], {})  # fresh recipe state: the timed run starts at step 0
    times, cpu = {r: [] for r in recipes}, {r: [] for r in recipes}
    for rnd in range(cfg.rounds):
        for r in recipes:
            wall, proc = steps(r, rnd * cfg.steps, cfg.steps)
            times[r].append(wall)
            cpu[r].append(proc)
    total = cfg.rounds * cfg.steps
    mean = {r: sum(v) / total for r, v in times.items()}
    cpu_mean = {r: sum(v) / total for r, v in cpu.items()}
    result = {
        "what": f"{cfg.model} training step per recipe (forward, defence extras, backward, SGD), batch {cfg.batch}, "
                f"bits {cfg.bits}, per-bit BN, CPU; amortised over {total} steps; baseline QAT --switch cycle",
        "mean_step_s": mean,
        "ratio_to_qat": {r: mean[r] / mean["qat"] for r in recipes},
        "median_round_ratio_to_qat": {r: statistics.median(t / q for t, q in zip(times[r], times["qat"]))
                                      for r in recipes},
        "cpu_step_s": cpu_mean,
        "cpu_ratio_to_qat": {r: cpu_mean[r] / cpu_mean["qat"] for r in recipes},
        "round_s": times, "round_cpu_s": cpu, "rounds": cfg.rounds, "steps_per_round": cfg.steps,
        "configs": {r: repr(runs[r][2].recipe_config) for r in recipes},
        "machine": {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "load_avg_1m": os.getloadavg()[0]},
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"defense_cost_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for r in recipes:
        print(f"{r:6s} {mean[r]:.3f} s/step  x{result['ratio_to_qat'][r]:.2f} QAT "
              f"(median round ratio x{result['median_round_ratio_to_qat'][r]:.2f}; "
              f"CPU {cpu_mean[r]:.3f} s/step x{result['cpu_ratio_to_qat'][r]:.2f})")
    print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
