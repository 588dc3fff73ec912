"""Query attack vs white-box attack: oracle queries/s per runtime, and time to a given ASR of each, in one run.

    python -m bench.query_attack --checkpoint zoo/resnet20_w4a4 --data-dir ../shared/data

Exports the checkpoint (ONNX QDQ, full-integer TFLite; each proves itself on 100 test images) into a temporary
folder, then on the seeded test subset the query attacks use (`subset_indices(len(test), --images, seed=1)`):

1. Queries/s of the oracle the query attacks query through (eval.query._oracle.Oracle: feed encoding, batching,
   logits read back), one call of one candidate per attacked image (what a per-image iteration sends) at the
   attack's batch, for every `--runtimes` runner; the median of `--rounds` interleaved rounds (one call of each
   per round) so that load from other processes on this shared machine hits all alike; ratios to fakequant.
2. Time to `--target-asr` of the per-image score-based query attack (eval.query's sparse-rs, `--budget` queries
   per image) against `--attack-runtime`, and of the white-box universal patch (qadtr.attacks.universal_patch,
   `python -m qadtr.attack --attack universal`'s config with `--steps`) on the fake-quant deploy net, which
   optimises on the training images and is scored on the attacked images every 10 steps (the attack's log
   interval) at the placements every replay uses, the scoring time left out. Both are wall-clock seconds.
Prints a table and saves bench/results/query_attack_<name>_<utc>.json with the host fingerprint.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_RUNTIMES = "onnxrt,litert-xnnpack,litert-builtin,fakequant"
EVAL_SEED = 1  # the placements every replay evaluates a universal patch at (eval.transfer's default)
PROOF_IMAGES = 100  # test images each export proves itself on, as bench/executor_speed.py exports
CURVE_EVERY = 10  # iterations between the query attack's curve points in the JSON (the last one always kept)
QUERY_TIMING = ("wall seconds from the attack's start to the end of the runner call that answered the iteration "
                "at which the ASR first reached the target (every runner call's end time recorded; the attack's own "
                "work between calls included); queries: all attacked images' queries so far, clean ones included")
WHITEBOX_TIMING = ("wall seconds from the attack's start to the end of the first checked step whose patch reaches the "
                   "target ASR on the attacked images, minus the time spent checking (fake-quant forwards)")


class _Timed:
    """An active runner with the end time (perf_counter) of every infer call recorded; the rest is forwarded."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.ends: list[float] = []

    def infer(self, feed: dict) -> dict:
        out = self._runner.infer(feed)
        self.ends.append(time.perf_counter())
        return out

    def __getattr__(self, name: str):
        return getattr(self._runner, name)


def _configs(*, runtimes: list[str], attack_runtime: str, budget: int, steps: int, target: int, size: float,
             target_asr: float) -> tuple:
    """(sparse-rs config, universal config) from the flags, and the runtimes checked: each one line naming the fix."""
    from devices.runtimes import probe
    from eval.query import QUERY_ATTACKS
    from qadtr._errors import QadtrError
    from qadtr.attack import make_config

    if not 0.0 < target_asr <= 1.0:
        raise QadtrError(f"--target-asr {target_asr}: give the ASR to reach as a share in (0, 1], e.g. 0.3")
    if "fakequant" not in runtimes:
        raise QadtrError(f"--runtimes {','.join(runtimes)}: add fakequant, the reference of every ratio")
    for name in dict.fromkeys([*runtimes, attack_runtime]):
        reason = probe(name)  # an unknown name: QadtrError listing the known ones
        if reason is not None:
            raise QadtrError(f"runtime {name!r} is not available here: {reason}; or leave it out of --runtimes")
    config_cls, _ = QUERY_ATTACKS.get("sparse-rs").load()
    try:
        query = config_cls(size=size, target=target, budget=budget)
    except ValueError as e:
        raise QadtrError(f"--budget / --size / --target: {e}") from None
    whitebox = make_config("universal", size=size, bits=(), target=str(target), seed=0, options={"--steps": steps})
    return query, whitebox


def _runners(names, *, pt: Path, bits: int, files: dict, stack: ExitStack) -> dict:
    """name -> active runner of every named runtime (made by make_runner on the artifact it takes, or the
    checkpoint for fakequant), closed when `stack` closes."""
    from devices.runtimes import get_runtime, make_runner

    runners = {}
    for name in dict.fromkeys(names):
        if name == "fakequant":
            runner = make_runner(name, pt, bits=(bits, bits))
        else:
            takes = get_runtime(name).artifacts
            artifact = next((files[s] for s in takes if s in files), files[".onnx"])  # () takes any file
            runner = make_runner(name, artifact)
        runners[name] = stack.enter_context(runner)
    return runners


def _exports(pt: Path, bits: int, tmp: Path, *, names, images: np.ndarray) -> dict:
    """suffix -> the exported file, for the artifacts `names` run (ONNX also where a runtime takes any file)."""
    from devices.runtimes import get_runtime
    from export.onnx import export_onnx
    from export.tflite import export_tflite

    takes = {s for n in names if n != "fakequant" for s in (get_runtime(n).artifacts or (".onnx",))}
    files = {}
    if ".onnx" in takes:
        files[".onnx"] = export_onnx(pt, tmp / "m.onnx", bits=bits, images=images).path
    if ".tflite" in takes:
        files[".tflite"] = export_tflite(pt, tmp / "m.tflite", bits=bits, images=images).path
    return files


def _queries_per_s(runners: dict, images: np.ndarray, *, batch: int, rounds: int) -> dict[str, list[float]]:
    """name -> seconds of each of `rounds` interleaved oracle calls on uint8 (N, H, W, 3) `images`, after one
    warm-up call each (allocations, XNNPACK packing, torch's first-call costs)."""
    from eval.query._oracle import Oracle

    owners = np.arange(len(images))  # one query charged to each image per call
    oracles = {name: Oracle(r, n_images=len(images), budget=rounds + 1, batch=batch) for name, r in runners.items()}
    for oracle in oracles.values():
        oracle.logits(images, owners)
    times: dict[str, list[float]] = {name: [] for name in oracles}
    for k in range(rounds):
        for name, oracle in oracles.items():
            t0 = time.perf_counter()
            oracle.logits(images, owners)
            times[name].append(time.perf_counter() - t0)
        print(f"round {k + 1}/{rounds}", file=sys.stderr, flush=True)
    return times


def _trace_seconds(trace: np.ndarray, ends: np.ndarray, *, n_images: int, step: int) -> np.ndarray:
    """(T,) seconds at which each trace row's queries were all answered: row 0 is the clean call (every image)
    and the initial patch's, each later row one oracle call; an oracle call is ceil(rows / step) runner calls."""
    rows = np.diff(trace[:, 1], prepend=0)  # (T,) queries of each row
    calls = -(-rows // step)  # (T,)
    calls[0] = -(-n_images // step) + -(-(rows[0] - n_images) // step)
    if calls.sum() != len(ends):
        raise RuntimeError(f"query bench bug: {len(ends)} runner calls, the trace accounts for {calls.sum()}")
    return ends[np.cumsum(calls) - 1]


def _query_attack(runner, images: np.ndarray, labels: np.ndarray, *, cfg, target_asr: float) -> dict:
    """The per-image sparse-rs attack through `runner`, timed (QUERY_TIMING) to `target_asr`."""
    from eval.query import QUERY_ATTACKS
    from eval.query._oracle import Oracle

    _, attack = QUERY_ATTACKS.get("sparse-rs").load()
    timed = _Timed(runner)
    step = Oracle(runner, n_images=len(images), budget=cfg.budget, batch=cfg.batch).step  # the attack's chunking
    t0 = time.perf_counter()
    out = attack(timed, images, labels, cfg=cfg)
    wall = time.perf_counter() - t0
    seconds = _trace_seconds(out.trace, np.asarray(timed.ends) - t0, n_images=len(images), step=step)  # (T,)
    asr = out.asr(labels)
    rate = out.trace[:, 2] / max(asr.rate.n, 1)  # (T,) ASR after each iteration (the same eligible images)
    hit = np.flatnonzero(rate >= target_asr)
    k = int(hit[0]) if len(hit) else None
    spent = int(out.queries.sum())
    keep = sorted({*range(0, len(rate), CURVE_EVERY), len(rate) - 1})
    return {"runtime": runner.name, "kernels": runner.kernels, "reached": k is not None,
            "seconds": float(seconds[k]) if k is not None else None,
            "iteration": int(out.trace[k, 0]) if k is not None else None,
            "queries_total": int(out.trace[k, 1]) if k is not None else None,
            "queries_per_image": float(out.trace[k, 1]) / len(images) if k is not None else None,
            "final_asr": asr.to_dict(), "wall_s": wall, "queries_spent": spent, "seconds_per_query": wall / spent,
            "budget_per_image": cfg.budget, "query_stats": out.query_stats(), "timing": QUERY_TIMING,
            "curve": [{"iteration": int(out.trace[i, 0]), "queries_total": int(out.trace[i, 1]),
                       "asr": float(rate[i]), "seconds": float(seconds[i])} for i in keep]}


def _whitebox(net, train, images: np.ndarray, *, labels: np.ndarray, cfg, target_asr: float) -> dict:
    """The universal patch on `net`, optimised on `train` and checked on `images` at every log step."""
    from qadtr.attacks import Patch, evaluate_patch, universal_patch
    from qadtr.predict import predict

    clean = predict(net, images)  # (N,)
    checks: list[dict] = []
    checking = [0.0]  # seconds spent in the checks so far

    def check(step: int, values: np.ndarray) -> bool:
        t = time.perf_counter()
        patch = Patch(values=values, attack="universal", config=cfg, size=cfg.size, side=values.shape[-1],
                      target=cfg.target, eot=cfg.eot, seed=cfg.seed)
        asr = evaluate_patch(net, patch, images, labels=labels, seed=EVAL_SEED, clean_pred=clean)
        checks.append({"steps": step + 1, "asr": asr.to_dict(), "seconds": t - t0 - checking[0]})
        checking[0] += time.perf_counter() - t
        return asr.rate.value >= target_asr

    t0 = time.perf_counter()
    universal_patch(net, train.images, train.labels, cfg=cfg, callback=check)
    wall = time.perf_counter() - t0
    hit = next((c for c in checks if c["asr"]["asr"]["value"] >= target_asr), None)
    return {"network": "fakequant (Brevitas deploy_net, torch)", "reached": hit is not None,
            "seconds": hit["seconds"] if hit else None, "steps": hit["steps"] if hit else None,
            "final_asr": checks[-1]["asr"], "wall_s": wall, "check_s": checking[0], "max_steps": cfg.steps,
            "batch_size": cfg.batch_size, "train_images": len(train.labels), "eval_seed": EVAL_SEED,
            "timing": WHITEBOX_TIMING, "checks": checks}


def run(*, checkpoint: str, bits: int | None, data_dir: str | None, runtimes: list[str], attack_runtime: str,
        images: int, budget: int, steps: int, rounds: int, target: int, size: float, target_asr: float,
        threads: int) -> dict:
    """Queries/s of every runtime and both attacks' time to `target_asr` (module docstring); bits None: the first."""
    import torch

    import qadtr.data
    from devices._host import fingerprint
    from qadtr._errors import QadtrError
    from qadtr._scratch import scratch
    from qadtr.checkpoint import load_checkpoint, read_checkpoint_info, resolve
    from qadtr.models import deploy_net

    query_cfg, whitebox_cfg = _configs(runtimes=runtimes, attack_runtime=attack_runtime, budget=budget, steps=steps,
                                       target=target, size=size, target_asr=target_asr)
    torch.set_num_threads(threads)
    pt = resolve(Path(checkpoint))[0]
    info = read_checkpoint_info(pt)
    bits = bits or info.model.bits[0][0]
    if target >= info.model.num_classes:
        raise QadtrError(f"--target {target}: the model has {info.model.num_classes} classes "
                         f"(0..{info.model.num_classes - 1})")
    data = info.train.data if info.train is not None else "cifar10"
    test = qadtr.data.load_split(data, "test", data_dir)
    idx = qadtr.data.subset_indices(len(test.labels), images, seed=1)
    x, y = test.images[idx], test.labels[idx]  # (N, H, W, 3) uint8, (N,)
    with scratch("bench") as tmp, ExitStack() as stack:
        proof = qadtr.data.subset(test, PROOF_IMAGES).images
        files = _exports(pt, bits, Path(tmp), names=[*runtimes, attack_runtime], images=proof)
        runners = _runners([*runtimes, attack_runtime], pt=pt, bits=bits, files=files, stack=stack)
        times = _queries_per_s({n: runners[n] for n in runtimes}, x, batch=query_cfg.batch, rounds=rounds)
        query = _query_attack(runners[attack_runtime], x, y, cfg=query_cfg, target_asr=target_asr)
    model, _ = load_checkpoint(pt)
    train = qadtr.data.load_split(data, "train", data_dir)  # all of it, as qadtr.attack's default
    whitebox = _whitebox(deploy_net(model, bits, bits), train, x, labels=y, cfg=whitebox_cfg, target_asr=target_asr)
    qps = {k: len(x) / float(np.median(v)) for k, v in times.items()}
    both = query["reached"] and whitebox["reached"]
    return {"argv": sys.argv, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": fingerprint(), "checkpoint": str(pt), "bits": bits, "data": f"{data}/test",
            "indices": [int(i) for i in idx], "target": target, "size": size, "target_asr": target_asr,
            "rounds": rounds, "threads": threads, "rows_per_call": len(x), "batch": query_cfg.batch,
            "queries_per_s": qps, "ratio_to_fakequant": {k: v / qps["fakequant"] for k, v in qps.items()},
            "seconds_per_call": times, "query_attack": query, "whitebox": whitebox,
            "seconds_ratio_query_to_whitebox": query["seconds"] / whitebox["seconds"] if both else None}


def _report(res: dict) -> None:
    """The queries/s table, then each attack's time to the target ASR (or its final ASR), and their ratio."""
    print(f"{'runtime':18s} {'queries/s':>10s} {'x fakequant':>12s}   ({res['rows_per_call']} queries per call)")
    for k, v in sorted(res["queries_per_s"].items(), key=lambda kv: -kv[1]):
        print(f"{k:18s} {v:10.0f} {res['ratio_to_fakequant'][k]:11.2f}x")
    q, w = res["query_attack"], res["whitebox"]
    print(f"time to {res['target_asr']:.0%} targeted ASR (target {res['target']}, {len(res['indices'])} images):")
    final = q["final_asr"]["asr"]
    print(f"  sparse-rs per image on {q['runtime']}: " + (
        f"{q['seconds']:.1f}s ({q['queries_per_image']:.1f} queries/image, iteration {q['iteration']})" if q["reached"]
        else f"not reached: ASR {final['value']:.1%} at {q['budget_per_image']} queries/image ({q['wall_s']:.1f}s)"))
    final = w["final_asr"]["asr"]
    print("  white-box universal on fakequant: " + (
        f"{w['seconds']:.1f}s ({w['steps']} steps)" if w["reached"]
        else f"not reached: ASR {final['value']:.1%} after {w['max_steps']} steps ({w['wall_s'] - w['check_s']:.1f}s)"))
    if res["seconds_ratio_query_to_whitebox"] is not None:
        print(f"  query / white-box seconds: {res['seconds_ratio_query_to_whitebox']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    from qadtr._cli import ArgumentParser, DATA_DIR_HELP, check_count, check_writable, run_cli
    from qadtr._config import write_json

    p = ArgumentParser(prog="python -m bench.query_attack", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="zoo/resnet20_w4a4")
    p.add_argument("--out", default=str(RESULTS),
                   help="folder for query_attack_<name>_<utc>.json (default bench/results)")
    p.add_argument("--bits", type=int, default=None, help="bit width of a switchable checkpoint (default: its first)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--runtimes", default=DEFAULT_RUNTIMES, help="registered runtimes to measure, fakequant included")
    p.add_argument("--attack-runtime", default="litert-xnnpack", help="the deployed runtime the query attack queries")
    p.add_argument("--images", type=int, default=50, help="test images attacked (the seed-1 subset)")
    p.add_argument("--budget", type=int, default=200, help="query attack: queries per image, the clean one included")
    p.add_argument("--steps", type=int, default=50, help="white-box attack: optimiser steps")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the queries/s measurement")
    p.add_argument("--target", type=int, default=3, help="target class")
    p.add_argument("--size", type=float, default=0.1, help="patch share of the image area")
    p.add_argument("--target-asr", type=float, default=0.3, help="the targeted ASR both attacks are timed to")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a loaded 2-core machine two "
                   "spin-waiting threads ran fake-quant 20x slower; the runtimes use their defaults)")
    args = p.parse_args(argv)

    def body() -> None:
        for flag in ("--images", "--budget", "--steps", "--rounds", "--threads"):
            check_count(getattr(args, flag[2:]), flag)  # before the exports and timing, not after
        check_writable(args.out, "folder")
        res = run(checkpoint=args.checkpoint, bits=args.bits, data_dir=args.data_dir,
                  runtimes=[r for r in args.runtimes.split(",") if r], attack_runtime=args.attack_runtime,
                  images=args.images, budget=args.budget, steps=args.steps, rounds=args.rounds, target=args.target,
                  size=args.size, target_asr=args.target_asr, threads=args.threads)
        _report(res)
        stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
        out = Path(args.out) / f"query_attack_{Path(res['checkpoint']).parent.name}_{stamp}.json"
        write_json(out, res)
        print(f"wrote {out}")

    return run_cli("bench.query_attack", body, argv)


if __name__ == "__main__":
    sys.exit(main())
