"""Every output flag of the eval/ and bench/ CLIs is checked before the work starts (issue 14): a folder where a file
belongs, a path under a regular file, a read-only location: one `error: FLAG PATH ...` line, exit 1, nothing written.

Each case passes inputs that do not exist (checkpoints, artifacts, data): had the CLI started its work before
looking at the output path, it would fail on those instead, so an error naming the output flag proves the order.
"""

from __future__ import annotations

import importlib
import re
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NX = "/nonexistent-qadtr"  # every input: the work, if reached before the output check, fails on it
QUICK_S = 15.0  # seconds a refusal may take: imports and argparse only (a real run of any of these takes minutes)

# (module, flag, "file" | "folder", the argv before the flag); the flag and its path are appended
CASES = [
    ("eval.accuracy", "--json", "file", [f"{NX}/m.tflite", "--data-dir", NX]),
    ("eval.amplification", "--out", "folder", ["--checkpoints", NX, "--data-dir", NX]),
    ("eval.defense", "--out", "folder", ["--checkpoints", NX, "--surrogate", NX, "--data-dir", NX]),
    ("eval.exactness", "--out", "folder", ["--checkpoint", NX, "--data-dir", NX]),
    ("eval.exact_attack", "--out", "folder", ["--artifact", NX, "--runtimes", "litert-builtin", "--data-dir", NX]),
    ("eval.on_device", "--store", "file", ["--model", NX, "--patches", NX, "--data-dir", NX]),
    ("eval.on_device", "--replay-dir", "folder", ["--model", NX, "--patches", NX, "--store", "{tmp}/s.sqlite"]),
    ("eval.on_device", "--out", "file", ["--model", NX, "--patches", NX, "--store", "{tmp}/s.sqlite"]),
    ("eval.on_device", "--out", "folder", ["--checkpoint", NX, "--data-dir", NX]),  # no --model: the pipeline's folder
    ("eval.pipeline", "--out", "folder", ["--checkpoint", NX, "--data-dir", NX]),
    ("eval.query_attack", "--out", "folder", ["--artifact", NX, "--runtime", "onnxrt", "--data-dir", NX]),
    ("eval.report", "--out", "folder", ["--store", f"{NX}/results.sqlite"]),
    ("eval.strength", "--out", "folder", ["--checkpoints", NX, "--data-dir", NX]),
    ("eval.transfer", "--out", "folder", ["--patches", NX, "--checkpoints", NX, "--data-dir", NX]),
    ("bench.attack_speed", "--out", "folder", ["--checkpoint", NX, "--data-dir", NX]),
    ("bench.replay_speed", "--out", "folder", ["--checkpoint", NX, "--patches", NX, "--data-dir", NX]),
    ("bench.runtime_speed", "--out", "folder", ["--checkpoint", NX, "--float", NX, "--data-dir", NX]),
    ("bench.executor_speed", "--out", "folder", ["--checkpoint", NX, "--data-dir", NX]),
    ("bench.query_attack", "--out", "folder", ["--checkpoint", NX, "--data-dir", NX]),
    ("bench.defense_cost", "--out", "folder", ["--init", NX]),
    ("bench.train_speed", "--out", "folder", []),
    ("bench.gpu_check", "--out", "folder", ["--device", "cpu"]),
    ("eval.compare", "--out", "folder", ["--store", f"{NX}/results.sqlite"]),
    ("eval.reproduction", "--out", "folder", [f for d in ("defense", "amplification", "transfer", "zoo", "cost",
                                                          "deployed") for f in (f"--{d}", NX)]),
]
# output-looking flags that name an input: read, never written
INPUTS = {("eval.report", "--store"), ("eval.compare", "--store")}
OUTPUT_DEST = re.compile(r"(out|store|json|html|replay_dir|report_dir|results?)(_\w+)?|\w+_(out|html|json)")


def _params() -> list:
    return [pytest.param(*c, id=f"{c[0]} {c[1]} ({c[2]})") for c in CASES]


def _bad_paths(tmp: Path, kind: str) -> dict[str, Path]:
    """(a) the wrong kind of thing already there, (b) a path under a regular file, (c) a read-only location."""
    (tmp / "a_file").write_text("keep me")
    (tmp / "a_folder").mkdir()
    name = "out.json" if kind == "file" else "out"
    return {"wrong kind": tmp / ("a_folder" if kind == "file" else "a_file"),
            "under a file": tmp / "a_file" / name, "read-only": Path("/sys") / f"qadtr-{name}"}


def _tree(tmp: Path) -> dict[str, str]:
    return {str(p.relative_to(tmp)): (p.read_text() if p.is_file() else "/") for p in sorted(tmp.rglob("*"))}


@pytest.mark.parametrize("where", ["wrong kind", "under a file", "read-only"])
@pytest.mark.parametrize("module, flag, kind, before", _params())
def test_an_output_path_is_refused_before_any_work(module, flag, kind, before, where, tmp_path, capsys):
    bad = _bad_paths(tmp_path, kind)[where]
    if where == "read-only":
        try:
            tempfile.TemporaryFile(dir="/sys").close()
            pytest.skip("/sys is writable here: no read-only location to test with")
        except OSError:
            pass
    main = importlib.import_module(module).main
    argv = [a.replace("{tmp}", str(tmp_path)) for a in before] + [flag, str(bad)]
    tree = _tree(tmp_path)
    capsys.readouterr()
    start = time.perf_counter()
    rc = main(argv)
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and "Traceback" not in err, err
    assert len(errors) == 1 and errors[0].startswith(f"error: {flag} {bad}"), err  # the output path, not an input
    assert err.strip().splitlines()[-1].startswith("FAILED |"), err
    assert _tree(tmp_path) == tree  # nothing written, no write probe left, a_file untouched
    assert took < QUICK_S, f"{took:.1f}s to refuse {flag}"


def test_an_existing_store_is_resumed_not_refused(tmp_path, capsys):
    """--store names a file that may exist (the run resumes into it); only a folder there is refused."""
    from eval.on_device import main

    store = tmp_path / "s.sqlite"
    store.write_bytes(b"")
    rc = main(["--model", NX, "--patches", NX, "--data-dir", NX, "--store", str(store)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(errors) == 1 and errors[0].startswith(f"error: --model {NX}"), err  # not for the store
    assert store.read_bytes() == b""


def _output_flags() -> set[tuple[str, str]]:
    """(module, flag) of every add_argument in eval/, eval/query/ and bench/ whose dest looks like an output."""
    found = set()
    for path in [*ROOT.glob("eval/*.py"), *ROOT.glob("eval/query/*.py"), *ROOT.glob("bench/*.py")]:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for call in re.finditer(r"add_argument\(\s*\"(--[\w-]+)\"([^)]*)", path.read_text()):
            dest = re.search(r"dest=\"(\w+)\"", call.group(2))
            name = dest.group(1) if dest else call.group(1)[2:].replace("-", "_")
            if OUTPUT_DEST.fullmatch(name):
                found.add((module, call.group(1)))
    return found


def test_every_output_flag_of_eval_and_bench_is_in_the_cases():
    covered = {c[:2] for c in CASES}
    found = _output_flags()
    assert found - covered - INPUTS == set(), "add these output flags to CASES (and check them in main())"
    assert covered | INPUTS <= found, "CASES names a flag no CLI has any more"
    assert ("eval.on_device", "--store") in found and ("eval.accuracy", "--json") in found  # the scan itself works


# eval.compare, eval.reproduction and qadtr.attack write folders; every input below is missing, so a CLI that did
# any work before looking at --out would fail on its input instead (eval.compare and eval.reproduction did)
SPLIT_CASES = [
    ("eval.compare", ["--store", f"{NX}/results.sqlite"]),
    ("eval.reproduction", [f for d in ("defense", "amplification", "transfer", "zoo", "cost", "deployed")
                           for f in (f"--{d}", NX)]),
    ("qadtr.attack", [f"{NX}/model.pt", "--data-dir", NX]),
]


@pytest.mark.parametrize("where", ["a file", "under a file"])
@pytest.mark.parametrize("module, before", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_compare_reproduction_attack_check_out_first(module, before, where, tmp_path, capsys):
    (tmp_path / "a_file").write_text("keep me")
    bad = tmp_path / "a_file" if where == "a file" else tmp_path / "a_file" / "out"
    capsys.readouterr()
    rc = importlib.import_module(module).main([*before, "--out", str(bad)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and "Traceback" not in err, err
    assert len(errors) == 1 and errors[0].startswith(f"error: --out {bad}"), err  # about --out, not the input
    assert ("is a file, not a folder" if where == "a file" else "a_file is a file, not a folder") in errors[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] and (tmp_path / "a_file").read_text() == "keep me"
