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
