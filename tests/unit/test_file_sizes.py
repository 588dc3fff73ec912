"""Every project source file stays under MAX_LINES lines (STYLE: files < 400 lines); a longer one is split
along a seam (the result vs the CLI, a private `_name.py` beside the public module), re-exporting its names."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("qadtr", "export", "devices", "eval", "bench")  # the project's code; tests are not counted
MAX_LINES = 400  # a file this long or longer fails: the "files under 400 lines"


def too_long(root: Path, packages=PACKAGES, limit: int = MAX_LINES) -> list[str]:
    """'path: N lines' for each .py file under `packages` of `root` with `limit` lines or more."""
    out = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n >= limit:
                out.append(f"{path.relative_to(root)}: {n} lines")
    return out


def test_every_project_file_is_under_400_lines():
    assert too_long(ROOT) == [], f"split these files (each must stay under {MAX_LINES} lines)"


def test_the_check_names_a_file_of_400_lines(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "long.py").write_text("x = 1\n" * 400)
    (tmp_path / "eval" / "short.py").write_text("x = 1\n" * 399)
    assert too_long(tmp_path, packages=("eval",)) == ["eval/long.py: 400 lines"]


# -- functions ------------------------------------------------------------------------------------------------
MAX_FUNCTION_LINES = 60  # one screen: a function longer than this (docstring included) is read by scrolling
LONG_FUNCTIONS_ALLOWED: frozenset[str] = frozenset()  # 'path:qualname' allowed over the limit: none today


def function_lengths(root: Path, packages=PACKAGES) -> dict[str, int]:
    """{'path:qualname': lines} for every function and method (nested ones as outer.inner) under `packages`."""
    import ast

    out = {}

    def visit(node: ast.AST, rel: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out[f"{rel}:{name}"] = child.end_lineno - child.lineno + 1  # def line to last line
                visit(child, rel, f"{name}.")
            else:
                visit(child, rel, prefix)

    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            visit(ast.parse(path.read_text(encoding="utf-8")), path.relative_to(root).as_posix(), "")
    return out


def long_functions(root: Path, packages=PACKAGES, limit: int = MAX_FUNCTION_LINES,
                   allowed: frozenset[str] = frozenset()) -> list[str]:
    """'path:name: N lines' for each function over `limit` lines not in `allowed`, and for each `allowed` entry
    that is gone or now short (so the allow-list cannot go stale)."""
    lengths = function_lengths(root, packages)
    out = [f"{name}: {n} lines" for name, n in lengths.items() if n > limit and name not in allowed]
    for name in sorted(allowed):
        if name not in lengths:
            out.append(f"{name}: allow-listed but not found; remove it from the allow-list")
        elif lengths[name] <= limit:
            out.append(f"{name}: allow-listed but {lengths[name]} lines now; remove it from the allow-list")
    return out


def test_every_function_fits_on_a_screen():
    assert long_functions(ROOT, allowed=LONG_FUNCTIONS_ALLOWED) == [], (
        f"split these into a short function and private helpers (each at most {MAX_FUNCTION_LINES} lines)")


def test_the_check_names_a_function_of_61_lines(tmp_path):
    (tmp_path / "eval").mkdir()
    line = "    x = 1\n"
    source = ('def long():\n    """The docstring counts."""\n' + line * 59  # 61 lines
              + "\n\ndef short():\n" + line * 59  # 60 lines
              + "\n\nclass C:\n    def method(self):\n" + ("    " + line) * 60)  # 61 lines
    (tmp_path / "eval" / "f.py").write_text(source)
    assert long_functions(tmp_path, packages=("eval",)) == ["eval/f.py:long: 61 lines", "eval/f.py:C.method: 61 lines"]


def test_the_check_names_a_stale_allow_list_entry(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "f.py").write_text("def short():\n    x = 1\n")
    got = long_functions(tmp_path, packages=("eval",), allowed=frozenset({"eval/f.py:short", "eval/f.py:gone"}))
    assert got == ["eval/f.py:gone: allow-listed but not found; remove it from the allow-list",
                   "eval/f.py:short: allow-listed but 2 lines now; remove it from the allow-list"]
