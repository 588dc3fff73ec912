"""What a replay description and its arrays must satisfy once read back (eval.replay.load_replay): every field
of its type, every count within its neighbours, every patched row paired with the clean row of its image.

Each check raises one-line QadtrError `prefix + what + suffix` (eval.replay passes its file name and HINT), so
a hand-edited file is refused with the fix, never read into a changed ASR or a traceback.
"""

from __future__ import annotations

import math

import numpy as np

from qadtr._errors import QadtrError


def _int(v) -> bool:
    return type(v) is int  # bool is an int to Python, never a count here


def _str(v) -> bool:
    return type(v) is str


def _pair(v) -> bool:
    return type(v) in (list, tuple) and len(v) == 2 and all(map(_int, v))  # JSON arrays read back as lists


def _seq(v) -> bool:
    return type(v) in (list, tuple)


# the fields of a description (ReplayInfo) and of a patch block (PatchRef), each with its one JSON kind:
# a description is parsed field by field, so an edit is one message, never a TypeError deep in a dataclass
INFO_FIELDS = {"key": _str, "npz_sha256": _str, "dataset": _str, "data_sha256": _str, "eval_subset": _int,
               "eval_seed": _int, "n_subset": _int, "n_clean": _int, "samples": _int, "hw": _pair,
               "num_classes": _int, "patches": _seq, "created": _str, "sha256": _str,
               "scene": _str}
PATCH_FIELDS = {"file": _str, "sha256": _str, "attack": _str, "side": _int, "model_sha256": _str, "data": _str,
                "made_on": _str,
                "size": lambda v: _int(v) or (type(v) is float and math.isfinite(v)),
                "target": lambda v: v is None or _int(v), "per_image": lambda v: type(v) is bool,
                "bits": lambda v: _seq(v) and all(map(_pair, v)), "first": _int, "n": _int}


def fields(d, spec: dict, prefix: str, *, what: str, suffix: str) -> dict:
    """`d` when it is an object with exactly the fields of `spec`, each of its kind; else QadtrError."""
    def bad(why: str):
        raise QadtrError(f"{prefix} ({what}: {why}){suffix}")

    if type(d) is not dict:
        bad("not an object")
    missing, unknown = sorted(spec.keys() - d.keys()), sorted(str(k)[:30] for k in d.keys() - spec.keys())
    if missing or unknown:
        bad(f"missing {missing[:4]}, unknown {unknown[:4]!r:.120}")
    wrong = [k for k, ok in spec.items() if not ok(d[k])]
    if wrong:
        bad(f"{wrong[0]} is a {type(d[wrong[0]]).__name__} of the wrong kind")
    return d


def check_counts(info, prefix: str, suffix: str) -> None:
    """A ReplayInfo's counts in range: 1 <= n_subset <= n_clean <= samples, the blocks tile rows
    [n_clean, samples) in order, targets within the class count, a universal block as long as the subset."""
    def bad(what: str):
        raise QadtrError(f"{prefix}{what}{suffix}")

    if info.num_classes < 1 or min(info.hw) < 1 or info.eval_subset < 0:
        bad(f"class count {info.num_classes}, image size {info.hw} or eval subset {info.eval_subset} out of range")
    if not 1 <= info.n_subset <= info.n_clean <= info.samples:
        bad(f"needs 1 <= n_subset ({info.n_subset}) <= n_clean ({info.n_clean}) <= samples ({info.samples})")
    end = info.n_clean
    for k, p in enumerate(info.patches):
        if p.first != end or p.n < 0:
            bad(f"patch {k} starts at row {p.first} with {p.n} rows, the previous block ends at row {end}")
        if p.target is not None and not 0 <= p.target < info.num_classes:
            bad(f"patch {k} targets class {p.target}, outside the {info.num_classes} classes")
        if not p.per_image and p.n != info.n_subset:
            bad(f"universal patch {k} has {p.n} rows, the eval subset {info.n_subset}")
        if not 0 < p.size <= 1 or p.side < 1 or any(w < 1 or a < 1 for w, a in p.bits):
            bad(f"patch {k}: size {p.size}, side {p.side} or bits {p.bits} out of range")
        end += p.n
    if end != info.samples:
        bad(f"the blocks end at row {end}, the replay has {info.samples} rows")


def check_rows(info, labels: np.ndarray, test_index: np.ndarray, *, prefix: str, suffix: str) -> None:
    """Arrays (M,) that fit the description: labels within the class count, distinct clean images, every
    patched row with the clean row of its image and the same label, universal blocks on the eval subset."""
    def bad(what: str):
        raise QadtrError(f"{prefix}{what}{suffix}")

    if int(labels.min()) < 0 or int(labels.max()) >= info.num_classes:
        bad(f"labels outside the {info.num_classes} classes of {info.dataset}")
    clean, patched = test_index[:info.n_clean], test_index[info.n_clean:]
    if int(test_index.min()) < 0 or len(np.unique(clean)) != len(clean):
        bad("the clean rows must hold distinct, non-negative test images")
    order = np.argsort(clean, kind="stable")
    row = order[np.minimum(np.searchsorted(clean, patched, sorter=order), len(clean) - 1)]  # (M - n_clean,)
    if not np.array_equal(clean[row], patched):
        bad("a patched row's test image has no clean row")
    if not np.array_equal(labels[row], labels[info.n_clean:]):
        bad("a patched row's label differs from its clean row's")
    for k, ref in enumerate(info.patches):
        if not ref.per_image and not np.array_equal(test_index[ref.first:ref.first + ref.n], clean[:info.n_subset]):
            bad(f"universal patch {k} is not pasted on the eval subset's images")
