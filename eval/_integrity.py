"""Before eval.compare reads a run's replay or reruns anything of it: the files must still be the ones the run
recorded (result files outlive their runs and can be edited or replaced).

- the replay: its checksum (`eval.replay.Replay.sha256`: description and arrays) = the run's replay_sha256;
- the deployed artifact a divergence or an attribution reruns: its sha256 = the run's artifact_sha256, else
  those analyses are skipped with the reason (the comparison itself reads only the store);
- the source checkpoint the logit LSB grid and the deploy net come from: its sha256 = the source_sha256 the
  runs were paired by, else the comparison is refused (its tie rule would use another model's grid).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from qadtr._errors import QadtrError


@functools.lru_cache(maxsize=64)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, once per (path, mtime, size): a store compares many runs of one checkpoint."""
    from qadtr._config import sha256_file

    return sha256_file(path)


def file_sha256(path: str | Path) -> str:
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def replay_of(run):
    """The replay `run` replayed, refused (one line, with the fix) unless it still has the run's checksum."""
    from eval.replay import load_replay

    try:
        return load_replay(run.replay, sha256=run.replay_sha256)
    except QadtrError as e:  # the same one line, naming the run it was read for
        raise QadtrError(f"run {run.run_id[:12]}: {e}") from None


def artifact_change(run) -> str:
    """'' when the run's artifact is here and is the file it ran (sha256); else why it may not be rerun."""
    path = Path(run.artifact)
    if not path.is_file():
        return f"artifact {run.artifact} not found here"
    if file_sha256(path) != run.artifact_sha256:
        return (f"{path.name} is not the file run {run.run_id[:12]} ran (its sha256 differs from the run's record: "
                "replaced since); nothing of it was rerun (restore it, or re-run eval.on_device on the new file)")
    return ""


def check_source(key, run) -> None:
    """Refuse a source checkpoint (`eval._runs.ModelKey`) whose sha256 is not the one the runs recorded."""
    from qadtr.checkpoint import resolve

    pt = resolve(key.checkpoint)[0] if key.checkpoint else None
    if pt is not None and pt.is_file() and key.source_sha256 and file_sha256(pt) != key.source_sha256:
        raise QadtrError(f"{pt} is not the checkpoint run {run.run_id[:12]} was made from (its sha256 differs from "
                         "the run's record: retrained or replaced since); restore it, or re-run eval.on_device")
