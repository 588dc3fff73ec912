"""White-box universal patch on a deployed .tflite's or .onnx's exact arithmetic, replayed on the deployed runtimes
beside a fake-quant patch: the library of `python -m eval.exact_attack`.

    result = run_exact_attack(artifact="w2a2.tflite", semantics="double-ruy", cfg=UniversalConfig(size=0.1, target=3),
                              runtimes=["litert-builtin"], train=(images, labels, "cifar10/train"),
                              test=(images, labels, indices, "cifar10/test"), compare="w2a2_universal_s10_t3.npz",
                              out="runs/x1")
    run_exact_attack(artifact="w2a2.onnx", semantics="single", runtimes=["onnxrt"], ...)   # the same on ORT

The patch is `qadtr.attacks.universal_patch` (the fake-quant attack, same config and EOT) with `exact_model`
as the model, by the artifact's suffix `eval._exact_torch.ExactTflite` (.tflite) or `eval._exact_onnx.ExactOnnx`
(.onnx): forward bit-exact with the integer executor under `semantics`, gradients straight through every
requantization. OUT gets patch.npz (a qadtr patch file; its model_sha256 is the artifact's, the model it was made
on) and result.json (`ExactAttackResult`). Each patch is replayed on each runtime (devices.runtimes.make_runner:
LiteRT builtin / XNNPACK, ONNX Runtime, intexec-*, fakequant) on the test images at the seeded evaluation
placements every replay uses (`qadtr.attacks.eval_placements`, `eval_seed`): the two patches share side and EOT
ranges, so they sit at the same places and their ASRs are paired (PairedDifference).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from devices._host import fingerprint
from devices.intexec import SEMANTICS, expected_semantics
from devices.runtimes import make_runner
from eval.query._oracle import Oracle
from qadtr._config import config_to_dict, register_config, sha256_file, write_json
from qadtr._errors import QadtrError
from qadtr._stats import PairedDifference
from qadtr.attacks import ASR, Patch, attack_success, eval_placements, load_patch, rebuild, save_patch, universal_patch
from qadtr.attacks.patchfile import deployed_on

REPLAY_BATCH = 256  # rows per runner call: the query attacks' default (eval.query_attack --batch)


@register_config
@dataclass(frozen=True)
class ExactAttackResult:
    VERSION = 1
    artifact: str
    artifact_sha256: str
    semantics: str  # the devices.intexec semantics the patch was optimised against
    models: str  # the kernel set that semantics is bit-exact with
    config: Any  # the UniversalConfig of the patch
    train: str  # the images it was optimised on, e.g. "cifar10/train (50000 images)"
    data: str  # the replay images' split, e.g. "cifar10/test"
    indices: tuple[int, ...]  # their indexes in `data`
    eval_seed: int  # seed of the evaluation placements
    patch: str  # the patch file written (OUT/patch.npz)
    compare: str | None  # the fake-quant patch replayed beside it
    compare_config: Any  # its config (None without one)
    replays: dict  # runtime -> `_replay`'s row
    seconds: float  # wall time of the optimisation
    host: dict  # devices._host.fingerprint()


def run_exact_attack(*, artifact: str | Path, semantics: str, cfg, runtimes: list[str], train: tuple, test: tuple,
                     out: str | Path, compare: str | Path | None = None, eval_seed: int = 1,
                     progress: bool = False) -> ExactAttackResult:
    """Optimise the patch against exact_model(artifact, semantics), replay it (and `compare`) on every runtime.

    `train`: (images, labels, source) to optimise on; `test`: (images, labels, indices, data) to replay on.
    """
    out, result_path = Path(out), Path(out) / "result.json"
    if result_path.is_file():
        raise QadtrError(f"{out} already holds an exact-arithmetic attack; choose another --out")
    other = _compare_patch(compare, cfg)
    model = exact_model(artifact, semantics)  # an artifact or semantics it cannot run: QadtrError
    started = time.perf_counter()
    patch = universal_patch(model, train[0], train[1], cfg=cfg, progress=progress)
    seconds = time.perf_counter() - started
    sha = sha256_file(artifact)
    patch = patch.with_source(model_sha256=sha, bits=_bits(artifact), data=train[2])
    host = fingerprint()  # made_on: the runtime whose kernels `semantics` is bit-exact with on this host
    attacked = next((rt for rt in runtimes if expected_semantics(rt, host) == semantics), f"intexec-{semantics}")
    patch = replace(patch, made_on=deployed_on(attacked, artifact, sha))
    out.mkdir(parents=True, exist_ok=True)
    path = save_patch(patch, out / "patch.npz")
    patches = {"exact": patch, **({"compare": other} if other is not None else {})}
    replays = {rt: _replay(rt, artifact, patches, images=test[0], labels=test[1], eval_seed=eval_seed,
                           semantics=semantics) for rt in runtimes}
    result = ExactAttackResult(
        artifact=str(artifact), artifact_sha256=sha, semantics=semantics, models=SEMANTICS[semantics].models,
        config=cfg, train=f"{train[2]} ({len(train[1])} images)", data=test[3],
        indices=tuple(int(i) for i in test[2]), eval_seed=eval_seed, patch=str(path),
        compare=None if compare is None else str(compare), compare_config=None if other is None else other.config,
        replays=replays, seconds=round(seconds, 1), host=fingerprint())
    write_json(result_path, config_to_dict(result))  # last: its presence marks the run finished
    return result


def exact_model(artifact: str | Path, semantics: str):
    """The artifact as a torch model bit-exact with the integer executor under `semantics`: ExactTflite for a
    .tflite, ExactOnnx for a .onnx (torch is imported here: only for this command)."""
    suffix = Path(artifact).suffix
    if suffix == ".tflite":
        from eval._exact_torch import ExactTflite

        return ExactTflite(artifact, semantics)
    if suffix == ".onnx":
        from eval._exact_onnx import ExactOnnx

        return ExactOnnx(artifact, semantics)
    raise QadtrError(f"--artifact {Path(artifact).name}: the exact-arithmetic attack takes a .tflite (export.tflite) "
                     "or a .onnx (export.onnx)")


def _compare_patch(path: str | Path | None, cfg) -> Patch | None:
    """The fake-quant patch to replay beside the exact one, refused unless the two are comparable."""
    if path is None:
        return None
    patch = load_patch(path)
    if patch.per_image or abs(patch.size - cfg.size) > 1e-9 or patch.target != cfg.target or patch.eot != cfg.eot:
        raise QadtrError(f"--compare {Path(path).name}: a {'per-image' if patch.per_image else 'universal'} "
                         f"{patch.size:.0%} patch for target {patch.target} with EOT {patch.eot}; the exact patch is "
                         f"universal, {cfg.size:.0%}, target {cfg.target}, EOT {cfg.eot}: pass the same --size, "
                         "--target and EOT ranges, or a patch made with them")
    return patch


def _bits(artifact: str | Path) -> tuple[tuple[int, int], ...]:
    """The artifact's (w, a) from its export record, () when it has none (a float export or no record)."""
    from devices.export_record import read_record
    from devices.runtimes import record_path

    try:
        bits = read_record(record_path(artifact)).bits
    except QadtrError:
        return ()
    return () if bits is None else (tuple(bits),)


def _replay(runtime: str, artifact: str | Path, patches: dict[str, Patch], *, images: np.ndarray, labels: np.ndarray,
            eval_seed: int, semantics: str) -> dict:
    """Each patch's ASR on `runtime` (one clean pass, one patched pass per patch), and exact minus compare, paired."""
    host = fingerprint()
    with make_runner(runtime, artifact) as runner:
        oracle = Oracle(runner, n_images=len(images), budget=1 + len(patches), batch=REPLAY_BATCH)
        owners = np.arange(len(images))
        clean = oracle.logits(images, owners).argmax(axis=1)  # (N,)
        oracle.check_target(patches["exact"].target)
        adv = {k: oracle.logits(_patched(p, images, eval_seed), owners).argmax(axis=1) for k, p in patches.items()}
        kernels, versions = runner.kernels, dict(runner.versions)
        own = getattr(runner, "semantics", None)  # an intexec-* runner names its own
        expected = own.name if own is not None else expected_semantics(runtime, host)
    target = patches["exact"].target
    rates = {k: attack_success(clean, a, labels, target=target) for k, a in adv.items()}
    row = {"kernels": kernels, "versions": versions, "expected_semantics": expected,
           "attacked_semantics": semantics, **{k: r.to_dict() for k, r in rates.items()}, "exact_minus_compare": None}
    if "compare" in adv:
        row["exact_minus_compare"] = _paired(clean, adv["exact"], adv["compare"], labels=labels, target=target,
                                             rates=rates).to_dict()
    return row


def _patched(patch: Patch, images: np.ndarray, eval_seed: int) -> np.ndarray:
    """(N, H, W, 3) uint8: `patch` pasted at its seeded evaluation placements, as every replay builds them."""
    placement = eval_placements(patch, len(images), images.shape[1:3], seed=eval_seed)
    return rebuild(images, patch.values, placement)


def _paired(clean, adv_a, adv_b, *, labels, target, rates: dict[str, ASR]) -> PairedDifference:
    """ASR(a) - ASR(b) on the same images: b = images fooled by a only, c = by b only (qadtr.attacks.asr's
    definitions; the counts are checked against attack_success's)."""
    eligible = clean == labels if target is None else labels != target  # (N,)
    hit = {k: eligible & ((a != clean) if target is None else (a == target)) for k, a in (("a", adv_a), ("b", adv_b))}
    if (int(hit["a"].sum()), int(hit["b"].sum())) != (rates["exact"].rate.k, rates["compare"].rate.k):
        raise AssertionError("paired counts disagree with attack_success: the ASR definitions drifted apart")
    return PairedDifference(b=int((hit["a"] & ~hit["b"]).sum()), c=int((hit["b"] & ~hit["a"]).sum()),
                            n=int(eligible.sum()))
