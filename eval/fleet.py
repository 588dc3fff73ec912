"""Replay patched images on the runtimes of one or several devices into a result store (the library
behind `python -m eval.on_device`; see its docstring for what each run does).

    >>> result = replay_on_devices(devices="local", models=["w4.onnx"], patches="patches/")
"""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qadtr._errors import QadtrError
from qadtr.progress import progress as progress_bar
from qadtr.bits import bits_name

if TYPE_CHECKING:
    from eval.store import RunRecord

LATENCY = ("per-batch inference time (the runner's timed call: no feed preparation, no store) after the "
           "warm-up calls of each session; per image = batch time / images in the batch, percentiles over images "
           "(at batch size 1 the single-inference latency)")
THROUGHPUT = "images / summed batch inference time (the runtime's own speed; replay and store overhead excluded)"
# Set by run_fleet when its main thread is interrupted (Ctrl-C, or SIGTERM through qadtr._cli.run_cli): every device's
# replay stops at its next batch and closes (its stream, its scratch folder) instead of replaying on to the end.
STOPPING = threading.Event()


@dataclass(frozen=True)
class Job:
    """One (runtime, artifact) to replay on a device."""

    runtime: str
    artifact: Path  # what the runner loads (fakequant: the checkpoint's model.pt)
    label: str  # how tables name it, e.g. "w4.onnx", "model.pt@w4a4"
    sha256: str  # of the artifact
    bits: tuple[int, int] | None  # the model's (w, a); None = float or unknown
    source_sha256: str  # the checkpoint it came from ("" = unknown)
    runner_options: dict = field(default_factory=dict, hash=False)  # constructor arguments of the runner

    def options(self, batch_size: int, warmup: int) -> dict:
        """The options stored with the run (part of its id); eval.compare pairs runs by `bits` and `source_sha256`."""
        return {"batch_size": batch_size, "warmup": warmup, "bits": None if self.bits is None else list(self.bits),
                "source_sha256": self.source_sha256}


def parse_model(text: str) -> tuple[Path, tuple[int, int] | None]:
    """`zoo/x/model.pt@w4a4` -> (path, (4, 4)); without `@wXaY`: (path, None). Missing files are refused."""
    found = re.fullmatch(r"(.+)@w(\d+)a(\d+)", text)
    path, bits = (Path(found[1]), (int(found[2]), int(found[3]))) if found else (Path(text), None)
    if not path.exists():
        raise QadtrError(f"--model {path} not found; export one (`python -m export.onnx CHECKPOINT --bits 8`) or "
                         "give a checkpoint folder")
    return path, bits


def _checkpoint_jobs(path: Path, bits: tuple[int, int] | None, data: str) -> list[Job]:
    from qadtr._config import sha256_file
    from qadtr.checkpoint import module_source_key, read_checkpoint_info, resolve

    pt = resolve(path)[0]
    ck = None if (module := module_source_key(pt)) else read_checkpoint_info(pt)  # module: export.module's (sha, bits)
    trained_on = None if module else getattr(ck.train, "data", None)
    if trained_on and trained_on != data:
        raise QadtrError(f"{pt} was trained on {trained_on}, the replay is {data}; pass --data {trained_on}")
    have = [module[1]] if module else [tuple(b) for b in ck.model.bits]
    if bits is not None and bits not in have:
        raise QadtrError(f"{pt} has no {bits_name(bits)}; it was trained at "
                         f"{', '.join(bits_name(b) for b in have) or 'float'}: pick one of those after '@'")
    sha = sha256_file(pt)
    if not have:
        return [Job("fakequant", pt, pt.name, sha, None, sha)]
    return [Job("fakequant", pt, f"{pt.name}@{bits_name((w, a))}", sha, (w, a), sha, {"bits": (w, a)})
            for w, a in ([bits] if bits else have)]


class MissingSource(QadtrError):
    """An export whose record names a source checkpoint that is not where it says (the reference is skipped)."""


def jobs_for(runtime: str, path: Path, bits: tuple[int, int] | None, *, data: str) -> list[Job]:
    """The jobs of one accepted (runtime, artifact) pair."""
    from devices.runtimes import export_record, make_runner, record_path
    from qadtr._config import sha256_file
    from qadtr.checkpoint import resolve

    checkpoint = path.is_dir() or path.suffix == ".pt"
    if runtime == "fakequant" and checkpoint:
        return _checkpoint_jobs(path, bits, data)
    record = export_record(path) if not checkpoint else None
    sha = sha256_file(resolve(path)[0] if checkpoint else path)
    if record is not None and record.artifact_sha256 and record.artifact_sha256 != sha:
        raise QadtrError(f"{record_path(path)} describes another file (its artifact_sha256 is not "
                         f"{path.name}'s): the artifact was replaced after its export; export it again")
    if runtime == "fakequant":  # an export: the reference is its source checkpoint at the export's bits
        runner = make_runner("fakequant", path)  # never activated: it only resolves the export record
        if not resolve(runner.checkpoint)[0].is_file():
            at = f"@{bits_name(runner.bits)}" if runner.bits else ""
            raise MissingSource(f"{record_path(path).name} names source checkpoint {runner.checkpoint}, not "
                                f"found from {Path.cwd()}; give it as --model CHECKPOINT{at}")
        return _checkpoint_jobs(Path(runner.checkpoint), runner.bits or bits, data)
    file = resolve(path)[0] if checkpoint else path
    rbits = record.bits if record is not None and record.bits else bits
    return [Job(runtime, file, file.name, sha, rbits, "" if record is None else record.source_sha256)]


def plan(device, models: list[str], runtimes: list[str] | None, *, data: str) -> tuple[list[Job], list[dict]]:
    """The jobs for `models` on `device`, and {runtime, model, reason} for every pairing left out.

    A runtime is left out when it does not take the artifact's type, the device does not offer it, or it
    can't run here; a model that no wanted runtime takes is an error, and so is an empty plan.

    Raises:
        QadtrError: a missing artifact, an unknown runtime, a model no runtime takes, nothing to run.
    """
    from devices.runtimes import accepts, get_runtime

    if runtimes is not None:
        for name in runtimes:
            get_runtime(name)  # unknown names fail here, listing the known ones
    offered = {a.name: a for a in device.status() if a.kind == "runtime"}
    wanted = runtimes if runtimes is not None else [r for r in offered if get_runtime(r).in_defaults]
    jobs, skipped = {}, []
    for text in models:
        path, bits = parse_model(text)
        refused = []
        for name in wanted:
            why = accepts(name, path)
            if why is not None:
                refused.append(why)
                if runtimes is None:  # a default runtime of another artifact type: not worth a line
                    continue
            elif name not in offered:
                why = f"device {device.name!r} does not offer it (its runtimes: {', '.join(offered)})"
            elif not offered[name].available:
                why = f"not available on {device.name}: {offered[name].reason}"
            if why is not None:
                skipped.append({"runtime": name, "model": text, "reason": why})
                continue
            try:
                found = jobs_for(name, path, bits, data=data)
            except MissingSource as e:  # the deployed runs still go ahead; the table says why no reference
                skipped.append({"runtime": name, "model": text, "reason": str(e)})
                continue
            for job in found:
                jobs.setdefault((job.runtime, job.sha256, job.bits), job)
        if len(refused) == len(wanted):
            raise QadtrError(f"no runtime takes --model {text}: {'; '.join(refused)}")
    if not jobs:
        raise QadtrError(f"nothing can run on {device.name}: "
                         + "; ".join(f"{s['runtime']} for {s['model']}: {s['reason']}" for s in skipped))
    order = {name: i for i, name in enumerate(offered)}
    return sorted(jobs.values(), key=lambda j: (order.get(j.runtime, len(order)), j.label)), skipped


@dataclass(frozen=True)
class Outcome:
    run: RunRecord
    replayed: int  # samples computed in this session (0: the run was already complete)
    wall_s: float  # wall time of this session's replay loop (feed, inference, store writes)


def replay_run(store, device, job: Job, *, replay, batch_size: int = 100, warmup: int = 3, progress: bool = False,
               fresh: bool = False, device_info: dict | None = None) -> Outcome:
    """Replay `replay` through `job` on `device` into `store`, resuming a partial run; returns the finished run.

    Raises:
        QadtrError: the device's errors, a device whose batches skip or repeat rows or stop early, a run
            whose kernels changed since it started (re-run with fresh=True).
    """
    import time

    from eval.store import StoreError

    spec = dict(device=device.name, runtime=job.runtime, artifact=str(job.artifact), artifact_sha256=job.sha256,
                replay=str(replay.path), replay_sha256=replay.sha256, samples=len(replay),
                options=job.options(batch_size, warmup), emulated=device.emulated)
    info = device_info if device_info is not None else device.describe()  # a remote describe() costs a round trip
    # claim: a second writer of this run stops here; fresh: also clears rows that fail their checks
    run = store.open_run(**spec, device_info=info, fresh=fresh, claim=True)
    if run.complete:
        return Outcome(run, 0, 0.0)
    done = store.done_samples(run.run_id)
    start = len(done)
    if done != set(range(start)):  # batches are written in order, so the done samples are a prefix
        raise StoreError(f"run {run.run_id[:12]} holds samples out of order; re-run with --fresh")
    expected, t0 = start, time.perf_counter()
    with device.replay(job.runtime, job.artifact, replay.images, batch_size=batch_size, warmup=warmup, start=start,
                       options=job.runner_options) as batches, \
            progress_bar(total=len(replay), initial=start, unit="img", enabled=progress, leave=False,
                         desc=f"{device.name} {job.runtime} {job.label}") as bar:
        for batch in batches:
            if STOPPING.is_set():
                raise KeyboardInterrupt(f"{device.name}: stopped after {expected} of {len(replay)} samples")
            if expected == start and batches.kernels != run.kernels:
                if run.kernels:
                    raise QadtrError(f"{job.runtime} now runs {batches.kernels!r}, the run started on {run.kernels!r}; "
                                     "re-run with --fresh to measure it again")
                store.set_kernels(run.run_id, batches.kernels)
            if batch.first != expected:
                raise QadtrError(f"{device.name}/{job.runtime} returned rows from {batch.first}, expected {expected}; "
                                 "the device skipped or repeated a batch (re-run to resume)")
            store.write_batch(run.run_id, first=batch.first, logits=batch.logits, seconds=batch.seconds,
                              energy_j=batch.energy_j)
            expected += len(batch.logits)
            bar.update(len(batch.logits))
    wall = time.perf_counter() - t0
    if expected != len(replay):
        raise QadtrError(f"{device.name}/{job.runtime} stopped after {expected} of {len(replay)} samples; "
                         "re-run the same command to resume")
    return Outcome(store.finish(run.run_id), expected - start, wall)


def _percentiles(values: np.ndarray) -> dict:
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def energy_note(device) -> str:
    """Why a device's energy is null (when it is)."""
    if device.emulated:
        return "emulated device: its energy cannot be observed"
    power = [a for a in device.status() if a.kind == "power"]
    missing = [f"{a.name}: {a.reason}" for a in power if not a.available]
    return "no power meter readable: " + ("; ".join(missing) or "none configured")


def run_metrics(store, run_id: str, replay, *, energy_reason: str = "") -> dict:
    """Clean accuracy, ASR per patch, latency, throughput and energy of a complete run, as a JSON-able dict."""
    run = store.run(run_id)
    pred = store.preds(run_id)  # (M,)
    rows = store.batches(run_id)
    n = np.array([b.n for b in rows])  # (batches,)
    sec = np.array([b.seconds for b in rows])  # (batches,)
    energy = [b.energy_j for b in rows]
    if all(e is not None for e in energy):
        per_inference, note = float(sum(energy) / n.sum()), "measured: the device's power meter over each batch"
    else:
        metered = sum(e is not None for e in energy)
        per_inference = None
        note = energy_reason if not metered else f"only {metered} of {len(rows)} batches were metered"
    asr = [{"patch": ref.file, "attack": ref.attack, "size": ref.size, "target": ref.target,
            "source_bits": ["w{}a{}".format(*b) for b in ref.bits] or ["float"], "per_image": ref.per_image,
            "asr": a.rate.to_dict(), "definition": a.definition} for ref, a in replay.asr(pred)]
    bits = run.options.get("bits")
    return {"run_id": run.run_id, "device": run.device, "emulated": run.emulated, "runtime": run.runtime,
            "kernels": run.kernels, "artifact": run.artifact, "artifact_sha256": run.artifact_sha256,
            "bits": bits_name(bits) if bits else None, "replay": run.replay, "replay_sha256": run.replay_sha256,
            "samples": run.samples, "clean_accuracy": replay.clean_accuracy(pred).to_dict(), "asr": asr,
            "latency": {"definition": LATENCY, "batches": len(rows), "warmup_calls": run.options.get("warmup"),
                        "batch_size": run.options.get("batch_size"),
                        "per_image_ms": _percentiles(1000 * np.repeat(sec / n, n)),
                        "per_batch_ms": _percentiles(1000 * sec)},
            "throughput_img_per_s": float(n.sum() / sec.sum()) if sec.sum() > 0 else None,
            "throughput_definition": THROUGHPUT, "energy_per_inference_j": per_inference, "energy_note": note}


def replay_on_devices(*, devices: str = "local", models: list[str], patches: str | None, data: str = "cifar10",
             data_dir: str | None = None, eval_subset: int = 2000, eval_seed: int = 1,
             store_path: str | Path = "results/results.sqlite", replay_dir: str | Path | None = None,
             runtimes: list[str] | None = None, batch_size: int = 100, warmup: int = 3, inventory: str | None = None,
             fresh: bool = False, progress: bool = False, replay_file: str | Path | None = None) -> dict:
    """The command as a library call: the replay (`replay_file`, else made from `patches`), every job, the JSON dict."""
    from devices.inventory import load_inventory, open_device, select_devices
    from eval.replay import load_replay, make_replay
    from eval.store import Store

    if batch_size < 1 or warmup < 0:
        raise QadtrError(f"--batch-size {batch_size} / --warmup {warmup}: use a batch of 1 or more and 0 or more "
                         "warm-up calls")
    specs = select_devices(load_inventory(inventory), devices)
    opened = [open_device(s) for s in specs]  # unimplemented kinds and unreachable boards fail before any work
    try:
        planned = [(d, *plan(d, models, runtimes, data=data)) for d in opened]
        replay_dir = Path(replay_dir) if replay_dir else Path(store_path).parent / "replays"
        replay = load_replay(replay_file or make_replay(patches, data, data_dir, eval_subset=eval_subset,
                                                        eval_seed=eval_seed, out=replay_dir, progress=progress))
        Store(store_path).close()  # the schema exists before any thread writes (WAL: one writer at a time, readers free)
    except BaseException:
        for d in opened:  # a remote device holds a scratch folder; each device is closed once its jobs ran
            d.close()
        raise
    result = {"argv": sys.argv, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "store": str(store_path), "replay": {"path": str(replay.path), **replay.info.to_dict()["_data"]},
              "devices": {}, "runs": [], "skipped": []}

    def on_device(device, jobs: list[Job], skipped: list[dict]) -> tuple[dict, list[dict], list[dict]]:
        """Every job of one device, in its own Store connection (a fleet runs one of these per thread)."""
        runs = []
        with device, Store(store_path) as store:  # the device first: it is closed even if the store fails
            info = device.describe()
            reason = energy_note(device)
            for job in jobs:
                out = replay_run(store, device, job, replay=replay, batch_size=batch_size, warmup=warmup,
                                 progress=progress, fresh=fresh, device_info=info)
                metrics = run_metrics(store, out.run.run_id, replay, energy_reason=reason)
                runs.append({**metrics, "model": job.label, "replayed_now": out.replayed, "wall_s_now": out.wall_s})
        return info, [{"device": device.name, **s} for s in skipped], runs

    for device, (info, skipped, runs) in zip([p[0] for p in planned], run_fleet(on_device, planned)):
        result["devices"][device.name] = info
        result["skipped"] += skipped
        result["runs"] += runs
    return json_safe(result)


def run_fleet(fn, tasks: list[tuple]) -> list:
    """`fn(*task)` for every task, one thread per task when there are several (`--device a,b,c`: the
    boards replay concurrently); results in task order. Every task runs to its end; then the first
    bug is raised as is, or the devices' user errors as one QadtrError (their partial runs stay stored).
    An interrupt of the caller (Ctrl-C, SIGTERM) sets STOPPING: each task stops at its next batch, then it re-raises."""
    if len(tasks) == 1:
        return [fn(*tasks[0])]
    from concurrent.futures import ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="device")
    try:
        futures = [pool.submit(fn, *t) for t in tasks]
        wait(futures)
    except BaseException:
        STOPPING.set()
        raise
    finally:
        pool.shutdown(wait=True)  # the devices have closed (their scratch folders are gone) before this returns
        STOPPING.clear()
    errors = [f.exception() for f in futures if f.exception() is not None]
    bugs = [e for e in errors if not isinstance(e, QadtrError)]
    if bugs:
        raise bugs[0]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise QadtrError(f"{len(errors)} devices failed (the others finished; re-run to resume): "
                         + " | ".join(str(e) for e in errors))
    return [f.result() for f in futures]


def json_safe(obj):
    """NaN (a rate over n = 0, e.g. no eligible image) -> None: strict JSON parsers (browsers) reject NaN."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def table(result: dict) -> str:
    """The printed summary: one line per run, one per patch's ASR, then the runtimes left out."""
    r = result["replay"]
    lines = [f"replay {Path(r['path']).name}: {r['dataset']}, {r['n_subset']} clean test images, "
             f"{len(r['patches'])} patch(es), {r['samples']} rows (eval seed {r['eval_seed']})",
             f"{'device':10s} {'runtime':15s} {'model':26s} {'clean top-1':28s} {'ms/img p50/p90/p99':20s} "
             f"{'img/s':>8s}  energy/inference"]
    notes: list[str] = []  # why energy is null, each reason once under the table
    for m in result["runs"]:
        acc = m["clean_accuracy"]
        lat = m["latency"]["per_image_ms"]
        emu = " (emulated)" if m["emulated"] else ""
        if m["energy_per_inference_j"] is not None:
            energy = f"{m['energy_per_inference_j']:.3g} J"
        else:
            notes += [m["energy_note"]] if m["energy_note"] not in notes else []
            energy = f"null [{notes.index(m['energy_note']) + 1}]"
        lines.append(f"{m['device'] + emu:10s} {m['runtime']:15s} {m['model'][:26]:26s} "
                     f"{_prop(acc):28s} {lat['p50']:.3f}/{lat['p90']:.3f}/{lat['p99']:.3f}{'':3s} "
                     f"{m['throughput_img_per_s'] or 0:8.0f}  {energy}")
        for a in m["asr"]:
            kind = "untargeted" if a["target"] is None else f"target {a['target']}"
            lines.append(f"{'':27s} ASR {a['patch'][:34]:34s} {kind:11s} {_prop(a['asr'])}")
    lines += [f"[{i + 1}] energy null: {note}" for i, note in enumerate(notes)]
    for s in result["skipped"]:
        lines.append(f"skipped {s['device']}/{s['runtime']} for {s['model']}: {s['reason']}")
    return "\n".join(lines)


def _prop(d: dict) -> str:
    if not d["n"]:
        return "n/a (n=0)"
    lo, hi = d["ci95"]
    return f"{100 * d['value']:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={d['n']})"


def list_runs(store_path: str | Path) -> str:
    from eval.store import Store

    if not Path(store_path).is_file():
        raise QadtrError(f"{store_path} not found; make it with `python -m eval.on_device ... --store {store_path}`")
    with Store(store_path, readonly=True) as store:
        runs = store.runs()
        return "\n".join(f"{r.run_id[:12]} {'done' if r.complete else 'partial':7s} {r.device:10s} {r.runtime:15s} "
                         f"{Path(r.artifact).name} {r.options.get('bits')} replay {r.replay_sha256[:12]} {r.created}"
                         for r in runs) or f"no runs in {store_path}"
