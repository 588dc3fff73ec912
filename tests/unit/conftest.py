"""Fixtures for the report tests: a synthetic result store with HTML-hostile strings in every file-borne field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval.compare import ASR_NOTE, TIE_RULE, compare_outputs
from eval.replay import load_replay, make_replay
from eval.store import Store
from qadtr._stats import PAIRED_METHOD

EVIL = "<script>alert(1)</script>"
EVIL_PATCH = "<i>evil&\"$q'.npz"  # a patch file name with HTML and mathtext characters


def make_store(path: Path, replay_path: Path, runs: list[dict], *, batch: int = 8) -> Path:
    """A store with one complete run per entry of `runs` (runtime, logits, device, ...), timed batches."""
    replay = load_replay(replay_path)
    rng = np.random.default_rng(0)
    with Store(path) as store:
        for r in runs:
            run = store.open_run(device=r.get("device", "local"), runtime=r["runtime"], artifact=r["artifact"],
                                 artifact_sha256=r.get("sha", "0" * 64), replay=str(replay_path),
                                 replay_sha256=replay.sha256, samples=len(replay), options=r["options"],
                                 emulated=r.get("emulated", False), kernels=r.get("kernels", "k"),
                                 device_info=r.get("device_info", {}))
            for first in range(0, len(replay), batch):
                logits = r["logits"][first:first + batch].astype(np.float32)
                store.write_batch(run.run_id, first=first, logits=logits, seconds=float(rng.uniform(1e-3, 3e-3)),
                                  energy_j=r.get("energy"))
            store.finish(run.run_id)
    return path


@pytest.fixture
def report_inputs(tiny_dataset, tiny_patches, tmp_path):
    """(store, compare dict, transfer.json, patch dir) for a fakequant run and a deployed run that differs."""
    pdir = tmp_path / "patches"
    shutil.copytree(tiny_patches, pdir)
    first = sorted(pdir.glob("*.npz"))[0]
    first.rename(pdir / EVIL_PATCH)
    replay_path = make_replay(pdir, "cifar10", eval_subset=16, eval_seed=1, out=tmp_path / "replays")
    replay = load_replay(replay_path)
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(len(replay), 10))
    out = ref.copy()
    out[[0, 20, 30]] = np.roll(out[[0, 20, 30]], 1, axis=1)  # three predictions move
    options = {"bits": [4, 4], "source_sha256": "ab" * 32}
    runs = [dict(runtime="fakequant", artifact="ck/model.pt", logits=ref, options=options, kernels="torch fake-quant"),
            dict(runtime="onnxrt", artifact=f"{EVIL}.onnx", logits=out, options=options, device=EVIL, emulated=True,
                 kernels="<img src=x onerror=alert(2)>", device_info={"cpu": "</pre><script>alert(3)</script>"})]
    store = make_store(tmp_path / "results.sqlite", replay_path, runs)
    res = compare_outputs(ref, out, replay.labels, patch=replay.patch, test_index=replay.test_index,
                          targets=[p.target for p in replay.info.patches], lsb=0.1, ref_name="fakequant", out_name="onnxrt",
                          patch_names=[p.file for p in replay.info.patches])
    cmp = {"comparisons": [{**res.to_dict(), "info": {"model": "tiny w4a4", "device": EVIL},
                            "divergence": {"runtime": "onnxrt", "method": EVIL, "layers": ["relu", EVIL],
                                           "images": [{"sample": 0, "first_layer": EVIL, "differing": 3,
                                                       "elements": 64, "max_step": 1, "layers_differing": 2}],
                                           "outputs_identical": True, "skipped": "", "summary": EVIL}}],
           "skipped": [{"run": "f" * 64, "runtime": "tensorrt", "reason": EVIL}],
           "tie_rule": TIE_RULE, "asr_note": ASR_NOTE, "paired_ci": PAIRED_METHOD, "gate": "the gate"}
    transfer = tmp_path / "transfer.json"
    transfer.write_text(json.dumps({"rows": [
        {"patch": "a.npz", "attack": "universal", "size": 0.1, "side": 3, "target_class": 1, "source": f"m:{s}",
         "evaluated_on": f"m:{t}", "eval_seed": 1, "asr": {"value": v, "k": 1, "n": 2, "ci95": [0, 1]},
         "definition": "d"} for s, t, v in (("w4a4", "w4a4", 0.9), ("w4a4", "w8a8", 0.5))]}))
    return store, cmp, transfer, pdir
