"""One query attack run into a folder: the library of `python -m eval.query_attack`.

    result = run_query_attack(attack="sparse-rs", cfg=SparseRSConfig(...), runtime="litert-builtin",
                              artifact="w4.tflite", images=images, labels=labels, indices=idx, data="cifar10/test",
                              out="runs/q1", resume=False)

`open_runner` is where the runner comes from: `devices.runtimes.make_runner` (this host, the default) or a
board's `SshDevice.open_runner` (one query session over SSH for the whole attack); `query_device` gives both,
with the `device` description result.json records, for `--device NAME`.

OUT holds state.npz (the checkpoint, `_state`), then result.json (`QueryResult`, typed JSON) and patch.npz (a
qadtr patch file, replayable with eval.on_device once eval.query is imported to read its config). An OUT with a
state and no result is an interrupted run: it continues only with resume=True (`--resume`, as qadtr.train), which
also refuses a state from other flags or inputs; an OUT with a result is finished: resume=True returns it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devices._host import fingerprint
from devices.runtimes import make_runner
from eval.query import QUERY_ATTACKS
from eval.query._outcome import QueryOutcome
from eval.query._state import inputs_key
from eval.query.refine import Start, milestones, reference_asr, start_from_patch
from qadtr._config import config_from_dict, config_to_dict, read_json, register_config, sha256_file, write_json
from qadtr._errors import QadtrError
from qadtr.attacks import EOTConfig, Patch, Placement, load_patch, save_patch
from qadtr.attacks.patchfile import deployed_on


@register_config
@dataclass(frozen=True)
class QueryResult:
    VERSION = 2  # 2: `holdout`, a universal patch's ASR on images it never queried (`device` has a default: same)
    attack: str  # a key of eval.query.QUERY_ATTACKS
    config: Any  # its typed config (SparseRSConfig, DecisionConfig)
    runtime: str  # the registered runtime queried
    kernels: str  # what the runner executed (Runner.kernels)
    versions: dict  # the runtime versions the runner reported
    artifact: str
    artifact_sha256: str
    data: str  # e.g. "cifar10/test"
    indices: tuple[int, ...]  # the attacked images' indexes in `data`
    n: int  # images the ASR counts (its definition's eligible ones)
    asr: dict  # qadtr.attacks.ASR.to_dict(): value, k, n, Wilson 95% CI, target, definition
    budget: int  # queries per image, the clean one included
    queries: dict  # eval.query._outcome.QueryOutcome.query_stats()
    host: dict  # devices._host.fingerprint()
    refine: dict | None  # transfer-then-refine milestones (eval.query.refine.milestones); None otherwise
    extra: dict  # attack-specific summaries (the decision attack's visible patch pixels)
    holdout: dict | None = None  # a universal patch on held-out images (`_holdout`); None: not asked for
    # where the runner ran: {"name", "kind", ...} (a board's describe(): its fingerprint under "host", and the query
    # session's counts under "session"); None: a result from before --device, on this host
    device: dict | None = None


def run_query_attack(*, attack: str, cfg, runtime: str, artifact: str | Path, images: np.ndarray, labels: np.ndarray,
                     indices: np.ndarray, data: str, out: str | Path, resume: bool = False, init: str | Path | None = None,
                     eval_seed: int = 1, reference: str | Path | None = None, runner_options: dict | None = None,
                     holdout: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                     progress: bool = False, open_runner: Callable = make_runner,
                     device: dict | None = None) -> QueryResult:
    """Attack `images` through runtime `runtime` on `artifact` and write OUT (module docstring).

    `holdout`: (images, labels, indices) the attack never sees; a universal patch's final ASR is measured on them
    through the same runner (2 queries per image, outside the budget), at the patch's shared location, or at seeded
    random placements (`eval_seed`, as every replay places a universal patch) when the location was per image.

    `init`: a universal patch file to refine (sparse-rs, universal); its fake-quant ASR on the same bytes is
    measured on `reference` (default: the artifact itself, whose export record names its checkpoint) through the
    fakequant runtime, when that runs here.

    `open_runner(runtime, artifact, **runner_options)` makes the (inactive) runner queried; `device` describes where
    it runs (recorded in result.json; a remote one also keys the checkpoint, so a state is resumed on its device).
    """
    _, run = QUERY_ATTACKS.get(attack).load()  # an unknown name: QadtrError listing the known ones
    out = Path(out)
    state, result_path = out / "state.npz", out / "result.json"
    if result_path.is_file():
        if not resume:
            raise QadtrError(f"{out} already holds a finished query attack; choose another --out (--resume prints it)")
        return config_from_dict(read_json(result_path))
    if state.is_file() and not resume:
        raise QadtrError(f"{out} holds an interrupted query attack; pass --resume to continue it or choose another --out")
    start, patch = _start(init, attack=attack, cfg=cfg, images=images, eval_seed=eval_seed)
    if holdout is not None and not getattr(cfg, "universal", False):
        raise QadtrError("--holdout measures a universal patch on unseen images; a per-image patch has none to "
                         "carry over: add --universal or drop --holdout")
    sha = sha256_file(artifact)
    key = inputs_key(artifact_sha256=sha, runtime=runtime, images=images, labels=labels,
                     extra=f"{sha256_file(init) if init else ''}:{eval_seed}" + _device_key(device))
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"start": start} if start is not None else {}
    with open_runner(runtime, artifact, **(runner_options or {})) as runner:
        outcome = run(runner, images, labels, cfg=cfg, state_path=state, inputs=key, progress=progress, **kwargs)
        kernels, versions = runner.kernels, dict(runner.versions)
        held = None if holdout is None else _holdout(runner, outcome, cfg, attack=attack, holdout=holdout, data=data,
                                                     eval_seed=eval_seed, init=patch)
    if device is not None and hasattr(runner, "session_info"):
        device = {**device, "session": runner.session_info()}
    refined = None
    if start is not None:
        refined = milestones(outcome, reference=_reference(reference or artifact, images, labels, start=start,
                                                           target=cfg.target))
    asr = outcome.asr(labels)
    extra = _extra(outcome)
    result = QueryResult(attack=attack, config=cfg, runtime=runtime, kernels=kernels, versions=versions,
                         artifact=str(artifact), artifact_sha256=sha, data=data,
                         indices=tuple(int(i) for i in indices), n=asr.rate.n, asr=asr.to_dict(), budget=cfg.budget,
                         queries=outcome.query_stats(), host=fingerprint(), refine=refined, extra=extra,
                         holdout=held, device=device)
    remote = "" if device is None or device.get("kind") == "local" else str(device.get("name"))
    made_on = deployed_on(runtime, artifact, sha, device=remote)
    save_patch(_patch_file(outcome, cfg, attack, indices=indices, data=data, made_on=made_on), out / "patch.npz")
    write_json(result_path, config_to_dict(result))  # last: its presence marks the run finished
    return result


def _device_key(device: dict | None) -> str:
    """The device's part of the checkpoint key: empty on this host (so states from before `--device` resume)."""
    return "" if device is None or device.get("kind") == "local" else f":{device.get('name')}"


@contextmanager
def query_device(name: str, *, runtime: str, inventory: str | None = None) -> Iterator[tuple[Callable, dict]]:
    """(the runner source, the device's description) of `--device NAME` from the inventory, as `eval.on_device`
    selects devices: exactly one device, offering `runtime` and able to run it; a board is closed afterwards."""
    from devices.inventory import DeviceSpec, load_inventory, open_device, select_devices

    if name == "local" and inventory is None:  # the default: this host, as before --device (no inventory read)
        specs = [DeviceSpec("local")]
    else:
        specs = select_devices(load_inventory(inventory), name)
    if len(specs) != 1:
        raise QadtrError(f"--device {name}: a query attack runs on one device, this names {len(specs)} "
                         f"({', '.join(s.name for s in specs)}); pick one of them")
    (spec,) = specs
    if spec.kind == "local":
        yield make_runner, {"name": spec.name, "kind": spec.kind, "where": spec.where()}
        return
    with open_device(spec) as board:
        if not hasattr(board, "open_runner"):
            raise QadtrError(f"device {spec.name!r} ({spec.kind}) cannot serve queries; use an ssh or arm-emu board, "
                             "or --device local")
        row = next((a for a in board.status() if a.kind == "runtime" and a.name == runtime), None)
        if row is None:
            raise QadtrError(f"device {spec.name!r} does not offer runtime {runtime!r} (its inventory entry lists "
                             f"{', '.join(spec.runtimes)}); add it to `runtimes` or pick one of those")
        if not row.available:
            raise QadtrError(f"runtime {runtime!r} is not available on device {spec.name!r}: {row.reason}")
        yield board.open_runner, {"name": spec.name, **board.describe(), "power": None}  # queries measure no energy


def _start(init: str | Path | None, *, attack: str, cfg, images: np.ndarray,
           eval_seed: int) -> tuple[Start | None, Patch | None]:
    """(the --init patch at its seeded evaluation placements, the patch), refused unless it fits the attack;
    (None, None) without --init."""
    if init is None:
        return None, None
    if attack != "sparse-rs" or not cfg.universal:
        raise QadtrError("--init refines a universal patch: use --attack sparse-rs --universal")
    patch = load_patch(init)
    if abs(patch.size - cfg.size) > 1e-9 or patch.target != cfg.target:
        raise QadtrError(f"{Path(init).name} is a {patch.size:.0%} patch for target {patch.target}; run with "
                         f"--size {patch.size} --target {'none' if patch.target is None else patch.target}")
    return start_from_patch(patch, len(images), images.shape[1:3], eval_seed=eval_seed), patch


def _extra(outcome: QueryOutcome) -> dict:
    """The attack-specific summaries: the decision attack's visible patch pixels (median over successes)."""
    extra = {}
    if "visible_pixels" in outcome.extra:
        vis = outcome.extra["visible_pixels"][outcome.eligible & (outcome.first_success >= 0)]
        extra["visible_pixels_median"] = float(np.median(vis)) if len(vis) else None
        extra["patch_pixels"] = int(outcome.extra["side"]) ** 2
    return extra


def _reference(path: str | Path, images, labels, *, start, target):
    """The start patch's ASR on the fake-quant reference, or None (with a note) when it cannot run here."""
    try:
        with make_runner("fakequant", path) as ref:
            return reference_asr(ref, images, labels, start=start, target=target)
    except QadtrError as e:
        print(f"note: no fake-quant reference ASR ({e}); pass --reference CHECKPOINT", file=sys.stderr)
        return None


def _holdout(runner, outcome: QueryOutcome, cfg, *, attack: str, holdout, data: str, eval_seed: int,
             init: Patch | None) -> dict:
    """The final universal patch's ASR on the held-out images (see run_query_attack), with how it was placed; with
    `init` (transfer-then-refine) also the start patch's at the same placements, so the two are paired."""
    images, labels, indices = holdout
    shared = cfg.location == "shared"  # one place moved for all (attacked) images; otherwise each image had its own
    xy = outcome.xy[outcome.eligible][0] if shared and outcome.eligible.any() else outcome.xy[0]
    eot = EOTConfig(location="fixed", xy=(int(xy[0]), int(xy[1]))) if shared else EOTConfig()  # else: random, upright
    values = outcome.patches.astype(np.float32) / np.float32(255)  # (3, s, s): start_from_patch rounds back to bytes
    patch = Patch(values=values, attack=attack, config=cfg, size=cfg.size, side=values.shape[-1], target=cfg.target,
                  eot=eot, seed=cfg.seed, data=data)
    start = start_from_patch(patch, len(images), images.shape[1:3], eval_seed=eval_seed)
    asr = reference_asr(runner, images, labels, start=start, target=cfg.target)
    before = None
    if init is not None:  # upright like `patch` (start_from_patch checks): eval_placements give the same places
        first = start_from_patch(init, len(images), images.shape[1:3], eval_seed=eval_seed)
        before = reference_asr(runner, images, labels, start=first, target=cfg.target).to_dict()
    return {"n": asr.rate.n, "asr": asr.to_dict(), "start_asr": before, "indices": [int(i) for i in indices],
            "placement": f"the attack's shared location {tuple(eot.xy)}" if shared else f"seeded random placements "
                         f"(eval_seed {eval_seed}), upright: the attack chose a place per image",
            "queries": "2 per held-out image (clean, patched), outside the budget"}


def _patch_file(outcome: QueryOutcome, cfg, attack: str, *, indices: np.ndarray, data: str, made_on: str) -> Patch:
    """The result as a qadtr patch file: per-image values and places (a universal patch with places that differ
    per image is stored once per image), or one universal patch at a fixed place; `made_on`: the runtime and
    artifact queried (`qadtr.attacks.patchfile.deployed_on`)."""
    side = outcome.patches.shape[-1]
    values = outcome.patches.astype(np.float32) / np.float32(255)  # rebuild rounds these back to the same bytes
    xy = outcome.xy
    if outcome.universal and (xy == xy[0]).all():
        return Patch(values=values, attack=attack, config=cfg, size=cfg.size, side=side, target=cfg.target,
                     eot=EOTConfig(location="fixed", xy=(int(xy[0, 0]), int(xy[0, 1]))), seed=cfg.seed, data=data,
                     made_on=made_on)
    if outcome.universal:
        values = np.ascontiguousarray(np.broadcast_to(values, (len(xy), *values.shape)))
    return Patch(values=values, attack=attack, config=cfg, size=cfg.size, side=side, target=cfg.target,
                 eot=EOTConfig(), seed=cfg.seed, data=data, made_on=made_on, indices=np.asarray(indices, np.int64),
                 placement=Placement(xy[:, 0], xy[:, 1], np.zeros(len(xy)), np.ones(len(xy)), np.ones(len(xy))))
