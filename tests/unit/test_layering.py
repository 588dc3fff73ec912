"""The layering a reader sees from the top of each file, checked over every import (function-level ones too).

Packages stack qadtr < devices < export < eval < bench: a module imports its own package and those below it,
never one above. No two project modules import each other, directly or around a loop. The pure CLI modules
are imported by no project module (their library lives beside them). Names loaded through a registry row
("module:attr" strings) are not import statements and are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("qadtr", "devices", "export", "eval", "bench")  # bottom to top
CLI_ONLY = ("qadtr.train", "qadtr.evaluate", "eval.on_device")  # a main() over library functions, nothing else


def modules(root: Path, packages=LAYERS) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_edges(root: Path, packages=LAYERS) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line}, from every Import / ImportFrom node anywhere in the file.
    `from pkg import name` is an edge to pkg.name when that is a module, else to pkg."""
    mods = modules(root, packages)

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, dict[str, int]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        out = edges.setdefault(mod, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs + ([base] if len(subs) < len(node.names) else [])
            for t in targets:
                o = owner(t)
                if o is not None and o != mod:
                    out.setdefault(o, node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(edges.get(start, {})))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(edges.get(w, {}))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def violations(root: Path, packages=LAYERS, cli_only=CLI_ONLY) -> list[str]:
    edges = import_edges(root, packages)
    rank = {p: i for i, p in enumerate(packages)}
    bad = [f"cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    for mod, targets in edges.items():
        for t, line in targets.items():
            if rank[t.split(".")[0]] > rank[mod.split(".")[0]]:
                bad.append(f"upward: {mod} (line {line}) imports {t}")
            if t in cli_only:
                bad.append(f"CLI module imported: {mod} (line {line}) imports {t}; import its library instead")
    return bad


def test_the_tree_is_layered_without_cycles():
    assert violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, expected", [
    # the 15-module cycle's shape: a library module importing its CLI, hidden in a function
    ({"qadtr/__init__.py": "", "qadtr/checkpoint.py": "from qadtr.train import TrainConfig\n",
      "qadtr/train.py": "def main():\n    from qadtr.checkpoint import save\n"}, "cycle: qadtr.checkpoint <-> qadtr.train"),
    # eval.on_device <-> eval.pipeline, both function-level
    ({"eval/__init__.py": "", "eval/a.py": "def f():\n    from eval.b import g\n",
      "eval/b.py": "def g():\n    from . import a\n"}, "cycle: eval.a <-> eval.b"),
    ({"qadtr/__init__.py": "", "eval/__init__.py": "", "eval/x.py": "",
      "qadtr/m.py": "def f():\n    import eval.x\n"}, "upward: qadtr.m (line 2) imports eval.x"),
    ({"qadtr/__init__.py": "", "qadtr/train.py": "", "qadtr/lib.py": "from qadtr import train\n"},
     "CLI module imported: qadtr.lib (line 1) imports qadtr.train"),
])
def test_the_check_fails_on_todays_faults(tmp_path, files, expected):
    root = _tree(tmp_path, files)
    assert any(v.startswith(expected) for v in violations(root, packages=("qadtr", "eval"), cli_only=("qadtr.train",)))


def test_a_package_importing_its_submodules_is_no_cycle(tmp_path):
    root = _tree(tmp_path, {"qadtr/__init__.py": "", "qadtr/data/__init__.py": "from qadtr.data import cifar\n",
                            "qadtr/data/cifar.py": "from qadtr.data import _archive\n", "qadtr/data/_archive.py": ""})
    assert violations(root, packages=("qadtr",), cli_only=()) == []
