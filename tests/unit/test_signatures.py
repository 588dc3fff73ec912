"""Every project function takes at most three positional parameters (the issue's "keyword arguments past the
third"), and library functions take typed arguments, not an argparse Namespace (only a CLI's `main` reads one).

A parameter counts as positional when it is positional-only or positional-or-keyword; a leading self/cls of a
method does not count and *args adds nothing. Nested functions and methods are checked too."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("qadtr", "export", "devices", "eval", "bench")  # the project's code; tests are not checked
NAMESPACE_PACKAGES = ("qadtr", "export", "eval", "bench")  # where a library function must not take a Namespace
MAX_POSITIONAL = 3  # a fourth parameter and later ones are keyword-only: the "keyword arguments past the third"
NAMESPACE_NAMES = frozenset({"Namespace", "argparse.Namespace"})  # the annotations that mark an argparse namespace

# 'path:qualname' -> why: signatures fixed by an outside protocol, which callers outside the project call positionally
PROTOCOL_SIGNATURES: dict[str, str] = {}


def _positional(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    """The names of `fn`'s positional parameters, less a leading self/cls when `fn` is a method."""
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return names[1:] if method and names[:1] in (["self"], ["cls"]) else names


def _namespace_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """The names of `fn`'s parameters annotated `Namespace` / `argparse.Namespace` (quoted or not)."""
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    out = []
    for a in args:
        ann = a.annotation
        text = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else (
            ast.unparse(ann) if ann is not None else "")
        if text in NAMESPACE_NAMES:
            out.append(a.arg)
    return out


def _functions(tree: ast.AST):
    """(qualname, node, is_method) for every def/async def in `tree`, nested ones as outer.inner."""
    def visit(node: ast.AST, prefix: str, in_class: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child, in_class
                yield from visit(child, f"{prefix}{child.name}.", False)
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.", True)
            else:
                yield from visit(child, prefix, in_class)
    yield from visit(tree, "", False)


def _files(root: Path, packages, excluded) -> list[Path]:
    """The .py files under `packages` of `root`, less those whose 'pkg/path.py' matches a glob of `excluded`."""
    out = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if not any(fnmatch.fnmatch(rel, pattern) for pattern in excluded):  # `*` spans folders too
                out.append(path)
    return out


def violations(root: Path, packages=PACKAGES, allowed: dict[str, str] | None = None,
               excluded: tuple[str, ...] = ()) -> list[str]:
    """'path:line:qualname: why' for each function breaking a rule above and not in `allowed`, and for each
    `allowed` entry no longer found or no longer breaking a rule (so the allow-list cannot go stale)."""
    allowed = allowed or {}
    out, seen = [], set()
    for path in _files(root, packages, excluded):
        rel = path.relative_to(root).as_posix()
        for name, fn, method in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            key, where = f"{rel}:{name}", f"{rel}:{fn.lineno}:{name}"
            if key in excluded:
                continue
            positional = _positional(fn, method)
            found = []
            if len(positional) > MAX_POSITIONAL:
                found.append(f"{len(positional)} positional parameters {positional}; put `*` after the third")
            spaces = _namespace_params(fn) if rel.split("/")[0] in NAMESPACE_PACKAGES and fn.name != "main" else []
            if spaces:
                found.append(f"takes an argparse Namespace {spaces}; take typed arguments and let main() fill them")
            if key in allowed and found:
                seen.add(key)
            else:
                out += [f"{where}: {f}" for f in found]
    out += [f"{k}: allow-listed but not found or now keyword-only; remove it from the allow-list"
            for k in sorted(set(allowed) - seen)]
    return out


def test_no_function_takes_more_than_three_positional_parameters_or_a_namespace():
    assert violations(ROOT, allowed=PROTOCOL_SIGNATURES) == [], (
        "make parameters past the third keyword-only (and update the callers); pass typed arguments, not a Namespace")


def _write(tmp_path: Path, source: str, pkg: str = "eval") -> Path:
    (tmp_path / pkg).mkdir(exist_ok=True)
    (tmp_path / pkg / "f.py").write_text(source)
    return tmp_path


def test_the_check_names_functions_methods_and_nested_functions_with_four_positional(tmp_path):
    root = _write(tmp_path, "def four(a, b, c, d):\n    def inner(a, b, c, d, *args):\n        pass\n"
                            "class C:\n    def m(self, a, b, c, d):\n        pass\n"
                            "    @classmethod\n    def k(cls, a, b, c, /, d):\n        pass\n"
                            "async def a4(a, b, c, d=1):\n    pass\n")
    got = [line.split(": ")[0] for line in violations(root, packages=("eval",))]
    assert got == ["eval/f.py:1:four", "eval/f.py:2:four.inner", "eval/f.py:5:C.m", "eval/f.py:8:C.k",
                   "eval/f.py:10:a4"]


def test_the_check_passes_keyword_only_self_cls_and_star_args(tmp_path):
    root = _write(tmp_path, "def ok(a, b, c, *, d, e=1):\n    pass\n"
                            "def star(a, b, c, *args, d):\n    pass\n"
                            "class C:\n    def m(self, a, b, c):\n        pass\n"
                            "    @classmethod\n    def k(cls, a, b, c, *, d):\n        pass\n")
    assert violations(root, packages=("eval",)) == []


def test_a_self_outside_a_class_counts(tmp_path):
    root = _write(tmp_path, "def f(self, a, b, c):\n    pass\n")
    assert [v.split(": ")[0] for v in violations(root, packages=("eval",))] == ["eval/f.py:1:f"]


def test_the_check_names_a_library_function_taking_a_namespace_but_not_main(tmp_path):
    root = _write(tmp_path, "import argparse\nfrom argparse import Namespace\n"
                            "def run(args: argparse.Namespace):\n    pass\n"
                            "def body(*, args: 'Namespace'):\n    pass\n"
                            "def main(args: Namespace):\n    pass\n", pkg="bench")
    got = [line.split(": ")[0] for line in violations(root, packages=("bench",))]
    assert got == ["bench/f.py:3:run", "bench/f.py:5:body"]
    _write(tmp_path, "from argparse import Namespace\ndef run(args: Namespace):\n    pass\n", pkg="devices")
    assert violations(tmp_path, packages=("devices",)) == []  # the runner layer's own rules; not this check


def test_the_allow_list_and_exclusions_and_a_stale_entry(tmp_path):
    root = _write(tmp_path, "def four(a, b, c, d):\n    pass\ndef ok(a):\n    pass\n")
    assert violations(root, packages=("eval",), allowed={"eval/f.py:four": "a protocol"}) == []
    assert violations(root, packages=("eval",), excluded=("eval/*",)) == []
    assert violations(root, packages=("eval",), excluded=("eval/f.py:four",)) == []
    got = violations(root, packages=("eval",), allowed={"eval/f.py:four": "p", "eval/f.py:ok": "p", "eval/f.py:x": "p"})
    assert got == ["eval/f.py:ok: allow-listed but not found or now keyword-only; remove it from the allow-list",
                   "eval/f.py:x: allow-listed but not found or now keyword-only; remove it from the allow-list"]
