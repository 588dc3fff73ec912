"""Attack speed: time to a universal patch of a given ASR, and patched-image evaluation throughput.

    python -m bench.attack_speed --checkpoint zoo/resnet20_float --data-dir ../shared/data --target 3 --asr 0.75

1. Optimises a universal patch (`qadtr.attacks.universal_patch`) and, every `--check-every` steps,
   measures its targeted ASR on a fixed held-out set of test images; stops at the first check that
   reaches `--asr`. Reports wall time and steps, with the time spent on the checks subtracted.
2. Replays that patch on `--throughput-images` test images: `rebuild` alone (uint8 patched images/s)
   and rebuild + forward of the fake-quant (deploy) model, batch `--batch-size`.
Prints both and saves bench/results/attack_speed_<model>_<bits>_<utc time>.json. Times on a shared
machine are noisy: compare ratios measured in one run, not absolute numbers across runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from qadtr._errors import QadtrError
from qadtr.bits import bits_name

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class AttackSpeedConfig:
    """One measurement: the flags of the same names (main fills it; their help texts say what each means)."""

    checkpoint: str
    bits: str  # "" = a quantized checkpoint's first bit width
    data_dir: str | None
    size: float
    target: int
    asr: float
    max_steps: int
    batch: int  # attack minibatch
    check_every: int
    check_images: int
    throughput_images: int
    batch_size: int  # evaluation batch
    threads: int  # 0 = torch's default
    seed: int

    def __post_init__(self):
        if self.check_every < 10 or self.check_every % 10:
            raise QadtrError(f"--check-every {self.check_every}: use a multiple of 10 (the attack reports every 10 "
                             "steps)")


def run(cfg: AttackSpeedConfig) -> dict:
    import torch

    from qadtr.attacks import EOTConfig, UniversalConfig
    from qadtr.checkpoint import load_checkpoint
    from qadtr.data import load_split, subset_indices

    model, ck = load_checkpoint(cfg.checkpoint)
    net, key = _network(cfg, model)
    data = ck.train.data if ck.train is not None else "cifar10"
    train, test = load_split(data, "train", cfg.data_dir), load_split(data, "test", cfg.data_dir)
    check_idx = subset_indices(len(test.labels), cfg.check_images, seed=2)
    try:
        attack = UniversalConfig(size=cfg.size, target=cfg.target, steps=cfg.max_steps, batch_size=cfg.batch,
                                 eot=EOTConfig(), seed=cfg.seed)
    except ValueError as e:
        raise QadtrError(str(e)) from None
    patch, total, checks, check_time = _time_to_patch(cfg, net, train, check_x=test.images[check_idx],
                                                      check_y=test.labels[check_idx], attack=attack)
    reached = bool(checks) and checks[-1]["asr"]["value"] >= cfg.asr
    return {
        "checkpoint": str(cfg.checkpoint), "model_sha256": ck.sha256, "bits": key, "size": cfg.size,
        "target": cfg.target, "asr_goal": cfg.asr, "reached": reached,
        "steps": checks[-1]["step"] if checks else None,
        "time_to_patch_s": total - check_time, "check_time_s": check_time, "checks": checks,
        "check_images": len(check_idx), "batch": cfg.batch,
        "throughput": _throughput(cfg, net, test, patch=patch),
        "threads": torch.get_num_threads(), "argv": sys.argv,
        "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _network(cfg: AttackSpeedConfig, model) -> tuple:
    """(network, bits key) to attack: --bits of a quantized model (default: its first), or the float model."""
    from qadtr.bits import parse_bits
    from qadtr.models import bits_of, deploy_net

    try:
        bits = parse_bits(cfg.bits)
    except ValueError as e:
        raise QadtrError(str(e)) from None
    if bits_of(model):
        (w, a) = bits[0] if bits else bits_of(model)[0]
        return deploy_net(model, w, a), bits_name((w, a))
    if bits:
        raise QadtrError(f"--bits {cfg.bits}: {cfg.checkpoint} is a float model; drop --bits")
    return model, "float"


def _time_to_patch(cfg: AttackSpeedConfig, net, train, *, check_x: np.ndarray, check_y: np.ndarray,
                   attack) -> tuple:
    """(patch, wall seconds, checks, seconds spent on the checks) of a universal patch optimised until a
    check every --check-every steps reaches --asr on (check_x, check_y)."""
    import torch

    from qadtr.attacks import EOTConfig, attack_success, rebuild, sample_placements, universal_patch
    from qadtr.predict import predict

    clean = predict(net, check_x)
    checks: list[dict] = []
    check_time = [0.0]

    def callback(step: int, values: np.ndarray) -> bool:
        if step == 0 or step % cfg.check_every:  # called every 10 steps (the attack's log interval)
            return False
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed + 1)  # the same held-out placements at every check
        pl = sample_placements(len(check_x), side=values.shape[-1], hw=check_x.shape[1:3], eot=EOTConfig(), rng=rng)
        asr = attack_success(clean, predict(net, rebuild(check_x, values, pl)), check_y, target=cfg.target)
        check_time[0] += time.perf_counter() - t0
        checks.append({"step": step + 1, "asr": asr.rate.to_dict(), "elapsed_s": time.perf_counter() - start})
        print(f"step {step + 1}: ASR {asr.rate}", flush=True)
        return asr.rate.value >= cfg.asr

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    patch = universal_patch(net, train.images, train.labels, cfg=attack, callback=callback, progress=True)
    return patch, time.perf_counter() - start, checks, check_time[0]


def _throughput(cfg: AttackSpeedConfig, net, test, *, patch) -> dict:
    """Patched images/s of `rebuild` alone and with the network's forward, on --throughput-images test images."""
    import torch

    from qadtr.attacks import eval_placements, rebuild
    from qadtr.data import subset_indices
    from qadtr.predict import to_tensor

    imgs = test.images[subset_indices(len(test.labels), cfg.throughput_images, seed=3)]
    pl = eval_placements(patch, len(imgs), imgs.shape[1:3], seed=1)
    t0 = time.perf_counter()
    adv = rebuild(imgs, patch.values, pl)
    t_rebuild = time.perf_counter() - t0
    with torch.no_grad():
        net.eval()
        t0 = time.perf_counter()
        for i in range(0, len(adv), cfg.batch_size):
            net(to_tensor(adv[i:i + cfg.batch_size]))
        t_forward = time.perf_counter() - t0
    return {"images": len(imgs), "batch_size": cfg.batch_size,
            "rebuild_img_per_s": len(imgs) / t_rebuild,
            "rebuild_and_forward_img_per_s": len(imgs) / (t_rebuild + t_forward),
            "forward_img_per_s": len(imgs) / t_forward}


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import check_writable, run_cli
    from qadtr._config import write_json

    from qadtr._cli import ArgumentParser  # one line and exit 1 for a bad flag

    p = ArgumentParser(prog="python -m bench.attack_speed", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="zoo/resnet20_float", help="model.pt or its folder (ResNet-20)")
    p.add_argument("--bits", default="", help="bit width of a quantized checkpoint (default: its first)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--size", type=float, default=0.1)
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--asr", type=float, default=0.75, help="targeted ASR to reach")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64, help="attack minibatch")
    p.add_argument("--check-every", type=int, default=50)
    p.add_argument("--check-images", type=int, default=500)
    p.add_argument("--throughput-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    args = p.parse_args(argv)

    def body() -> None:
        check_writable(args.out, "folder")  # before the timed runs: a bad --out lost them
        res = run(AttackSpeedConfig(**{k: v for k, v in vars(args).items() if k != "out"}))
        stamp = res["utc"].replace(":", "").replace("-", "")
        ckpt = Path(res["checkpoint"])
        model_name = ckpt.parent.name if ckpt.suffix == ".pt" else ckpt.name
        name = f"attack_speed_{model_name}_{res['bits']}_{stamp}.json"
        write_json(Path(args.out) / name, res)
        tp = res["throughput"]
        goal = f"{100 * args.asr:.0f}% targeted ASR"
        print(f"time to {goal}: {res['time_to_patch_s']:.1f}s ({res['steps']} steps)" if res["reached"]
              else f"did not reach {goal} in {args.max_steps} steps ({res['time_to_patch_s']:.1f}s)")
        print(f"replay: rebuild {tp['rebuild_img_per_s']:.0f} img/s, rebuild + {res['bits']} forward "
              f"{tp['rebuild_and_forward_img_per_s']:.0f} img/s; wrote {Path(args.out) / name}")

    return run_cli("bench.attack_speed", body, argv)


if __name__ == "__main__":
    sys.exit(main())
