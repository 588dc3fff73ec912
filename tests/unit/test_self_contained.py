"""Comments and help texts explain themselves: no project source points a reader outside the repository for
its reason (an issue number, the sessions' notes file, a shared folder other than the data/model inputs)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("qadtr", "export", "devices", "eval", "bench")
# "issue 12", "(issue #16)", "NOTES.md", "../shared/README.md"; ../shared/data and ../shared/models are the
# documented input folders (--data-dir, the float checkpoints), so they stay allowed
OUTSIDE = re.compile(r"\bissues? #?\d+\b|NOTES\.md|\.\./shared/(?!data\b|models\b)", re.IGNORECASE)


def outside_pointers(root: Path, packages=PACKAGES) -> list[str]:
    """'path:line: text' for every source line that sends the reader outside the repository."""
    out = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if OUTSIDE.search(line):
                    out.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    return out


def test_no_source_points_outside_the_repository():
    assert outside_pointers(ROOT) == [], "state the reason in place instead of pointing to it"


def test_the_check_finds_each_kind(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "a.py").write_text("# see issue 12\nx = 1  # NOTES.md\n# ../shared/README.md\n"
                                            "# --data-dir ../shared/data\n# ../shared/models/resnet20.th\n")
    assert [s.split(":")[1] for s in outside_pointers(tmp_path, packages=("eval",))] == ["1", "2", "3"]
