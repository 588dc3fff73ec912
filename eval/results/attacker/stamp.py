"""The attacker matrix's patches into one folder per model for eval.on_device, each stamped with the deployed
artifact it was made on (qadtr.attacks.Patch.made_on); then the check that the store reproduces every attack.

    python eval/results/attacker/stamp.py          # store_<m>/patches/<setting>@<runtime>.npz and a.npz
    python eval/results/attacker/stamp.py check    # after eval.on_device: each attack's ASR beside its replay's

Run from the repository root (store.sh runs both). Stamped: every <m>_<runtime>_<setting>/patch.npz whose
result.json names its artifact, the artifact's sha256 and the runtime it attacked (the exact-arithmetic attack
names no runtime: its folder's, which its result replayed on); folders of another device (rpi4-emu_..., the
local half of board.sh) are board.sh's. Setting (a) is the fake-quant universal patch, a.npz, made_on "".
`check` prints, per stamped patch, the ASR its result.json reports on the runtime it attacked and the store's
replay of it there (on_device_<m>*.json): equal, k and n, when both count the same images (per-image patches
replay their own images and places; a universal patch the seeded --eval-subset its attack replayed on) through
the same kernels. Where this host's kernels of that runtime are not the attack's (ORT on a VNNI host sums u8 x s8
exactly, on AVX2 alone in saturating int16 pairs), the replay to match is the integer executor's run of the
semantics the attack's host computes (devices.intexec.expected_semantics of its result's host fingerprint).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

R = Path("eval/results/attacker")  # the matrix's folder, relative to the repository root this runs from
MODELS = ("w2a2", "w4a4")  # the bit widths of the matrix (run.sh)
SETTINGS = ("perimage", "refine", "decision", "exact")  # (b), (c), (e), (d) of run.sh
FAKE_QUANT = "eval/results/transfer/patches/{m}_universal_s10_t3.npz"  # setting (a), the --init/--compare patch


def _result(folder: Path) -> dict | None:
    """The result.json's fields, or None without one."""
    path = folder / "result.json"
    return json.loads(path.read_text())["_data"] if path.is_file() else None


def _attacked_runtime(data: dict, runtime: str) -> str | None:
    """The runtime the attack ran against: the query attack's `runtime`; the exact one's folder runtime, which its
    `replays` must hold; None when neither says."""
    if data.get("runtime"):
        return data["runtime"]
    return runtime if runtime in (data.get("replays") or {}) else None


def _folders(m: str):
    """(setting, runtime, folder) of each attack on model `m` run on this host (no device prefix)."""
    for folder in sorted(R.glob(f"{m}_*_*")):
        setting = folder.name.rsplit("_", 1)[-1]
        runtime = folder.name[len(m) + 1:-len(setting) - 1]
        if setting in SETTINGS and folder.is_dir():
            yield setting, runtime, folder


def stamp() -> int:
    import eval.query.decision  # noqa: F401  the query attacks' configs, read back from their patch files
    import eval.query.sparse_rs  # noqa: F401
    from qadtr._config import sha256_file
    from qadtr.attacks import load_patch, save_patch
    from qadtr.attacks.patchfile import deployed_on

    for m in MODELS:
        out = R / f"store_{m}" / "patches"
        shutil.rmtree(out, ignore_errors=True)  # only what this script wrote: a patch left out since is dropped
        out.mkdir(parents=True)
        a = load_patch(FAKE_QUANT.format(m=m))
        save_patch(dataclasses.replace(a, made_on=""), out / "a.npz")
        print(f"{out / 'a.npz'}: {FAKE_QUANT.format(m=m)}, made on fake-quant")
        for setting, runtime, folder in _folders(m):
            data = _result(folder)
            rt = None if data is None else _attacked_runtime(data, runtime)
            if data is None or not data.get("artifact") or not data.get("artifact_sha256") or rt is None:
                print(f"skip {folder}: its result.json does not name the artifact and runtime it attacked")
                continue
            if (data.get("device") or {}).get("kind", "local") != "local":
                print(f"skip {folder}: made on device {data['device'].get('name')} (board.sh replays those)")
                continue
            if sha256_file(data["artifact"]) != data["artifact_sha256"]:
                sys.exit(f"{data['artifact']} is not the artifact {folder} attacked (its sha256 differs): restore "
                         "it or re-run run.sh")
            made_on = deployed_on(rt, data["artifact"], data["artifact_sha256"])
            patch = dataclasses.replace(load_patch(folder / "patch.npz"), made_on=made_on)
            path = save_patch(patch, out / f"{setting}@{rt}.npz")
            print(f"{path}: {folder / 'patch.npz'}, made on {made_on}")
    return 0


def _attack_asr(data: dict, rt: str) -> dict:
    """The ASR the attack's result.json reports on the runtime it attacked (the exact attack's replay there)."""
    return data["replays"][rt]["exact"]["asr"] if "replays" in data else data["asr"]["asr"]


def _run(runs: list[dict], *, runtime: str, sha256: str) -> dict | None:
    """The store's run of `runtime` on the artifact `sha256` (from the on_device_<m>*.json files)."""
    return next((r for r in runs if r["runtime"] == runtime and r["artifact_sha256"] == sha256), None)


def _asr_of(run: dict | None, patch: str) -> dict | None:
    return None if run is None else next((a["asr"] for a in run["asr"] if a["patch"] == patch), None)


def _fmt(asr: dict | None) -> str:
    return "-" if asr is None else f"{100 * asr['value']:.2f}% ({asr['k']}/{asr['n']})"


def _same(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and (a["k"], a["n"]) == (b["k"], b["n"])


def _row(m: str, patch: str, where: str, *, data: dict, rt: str, want: dict, runs: list[dict]) -> tuple[str, bool]:
    """One Markdown row: the attack's ASR, the store's on `rt` here, and, when this host's `rt` runs other kernels
    than the attack's, the store's on the integer executor of the attack host's semantics; whether one equals it."""
    from devices.intexec import expected_semantics

    here = _run(runs, runtime=rt, sha256=data["artifact_sha256"])
    kernels = data.get("kernels") or data["replays"][rt].get("kernels")
    other = here is not None and here["kernels"] != kernels
    got, modelled, sem = _asr_of(here, patch), None, None
    if other:
        sem = f"intexec-{expected_semantics(rt, data['host'])}"
        modelled = _asr_of(_run(runs, runtime=sem, sha256=data["artifact_sha256"]), patch)
    ok = _same(want, modelled) if other else _same(want, got)
    note = f" (here: {here['kernels']}; the attack's: {kernels})" if other else ""
    return (f"| {m} | {patch} | {rt} | {where} | {_fmt(want)} | {_fmt(got)}{note} | "
            f"{f'{sem}: {_fmt(modelled)}' if other else '-'} | {'yes' if ok else 'NO'} |"), ok


def check() -> int:
    rows, bad = [], 0
    for m in MODELS:
        files = sorted((R / "store").glob(f"on_device_{m}*.json"))
        runs = [r for f in files for r in json.loads(f.read_text())["runs"]]
        for setting, runtime, folder in _folders(m):
            data = _result(folder)
            rt = None if data is None else _attacked_runtime(data, runtime)
            name = f"{setting}@{rt}.npz"
            if rt is None or not (R / f"store_{m}" / "patches" / name).is_file():
                continue
            pairs = [(name, folder.name, _attack_asr(data, rt))]
            if "replays" in data and data["replays"][rt].get("compare"):  # the fake-quant patch beside it
                pairs.append(("a.npz", f"{folder.name} (its --compare patch)", data["replays"][rt]["compare"]["asr"]))
            for patch, where, want in pairs:
                row, ok = _row(m, patch, where, data=data, rt=rt, want=want, runs=runs)
                rows.append(row)
                bad += not ok
    print("| model | patch | attacked runtime | result.json | attack's ASR (k/n) | store replay there (k/n) | "
          "store replay on the attack's kernels | reproduced |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(rows) - bad} of {len(rows)} reproduced exactly (k and n)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(check() if sys.argv[1:] == ["check"] else stamp())
