"""The attacker's only access to the deployed artifact: an active Runner, queried in batches and counted per image.

    oracle = Oracle(runner, n_images=100, budget=500, batch=256)
    logits = oracle.logits(candidates, owners)     # (B, K): one row per candidate, owners (B,) charged one query each
    labels = LabelOracle(oracle).labels(candidates, owners)   # (B,) top-1 only, for decision-based attacks

A query is one image fed to the runner. Candidates of many images go out together (one `runner.infer` per
`batch` rows, or per the model's fixed batch, padded), the uint8 images encoded by `devices.runtimes.feed_format`
exactly as every replay encodes them, so any registered runtime (ORT, LiteRT, intexec-*, fakequant, null) or a
board's runner answers. The budget is enforced here, where the queries leave: an attack that would spend more
than `budget` queries on an image is a bug and raises before anything is sent.
"""

from __future__ import annotations

import numpy as np

from devices.runtimes import feed_format, read_logits
from qadtr._errors import QadtrError


class Oracle:
    def __init__(self, runner, *, n_images: int, budget: int, batch: int) -> None:
        self.runner = runner
        self.fmt = feed_format(runner)  # reads the active runner's input spec once
        self.step = self.fmt.batch or batch  # a fixed-batch model (e.g. MLPerf Tiny's 1) runs at its batch
        self.budget = budget
        self.queries = np.zeros(n_images, np.int64)  # (N,) queries spent on each image so far
        self.num_classes: int | None = None  # the logits' width, known after the first call

    def logits(self, images: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """(B, K) float32 logits of uint8 (B, H, W, 3) `images`; row b is charged to image `owners[b]`."""
        owners = np.asarray(owners, np.int64)
        spent = self.queries + np.bincount(owners, minlength=len(self.queries))
        if spent.max(initial=0) > self.budget:
            raise RuntimeError(f"query attack bug: image {int(spent.argmax())} would take {int(spent.max())} queries, "
                               f"over the budget of {self.budget}")
        out = []
        for first in range(0, len(images), self.step):
            chunk = images[first:first + self.step]  # (b, H, W, 3)
            real = len(chunk)
            if self.fmt.batch is not None and real < self.step:  # pad a fixed batch; only the real rows are kept
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.step - real, axis=0)])
            out.append(read_logits(self.runner, self.runner.infer(self.fmt.feed(chunk)))[:real])
        logits = np.concatenate(out) if out else np.zeros((0, self.num_classes or 0), np.float32)  # (B, K)
        if len(logits) and (logits.ndim != 2 or logits.shape[1] < 2):
            raise QadtrError(f"{self.runner.name}: the model returns {logits.shape[1:]} values per image; a query attack "
                             "needs a classifier's logits (>= 2 classes)")
        if len(logits):
            self.num_classes = int(logits.shape[1])
        self.queries = spent
        return logits

    def check_target(self, target: int | None) -> None:
        """A target the model cannot output is a user error, found on the first (clean) call before any attack."""
        if target is not None and self.num_classes is not None and target >= self.num_classes:
            raise QadtrError(f"target {target} is no class of this model ({self.num_classes} classes, "
                             f"0..{self.num_classes - 1}); pick a target below {self.num_classes}")


class LabelOracle:
    """Top-1 labels only: what a decision-based attack sees (the logits never leave this object)."""

    def __init__(self, oracle: Oracle) -> None:
        self._oracle = oracle

    @property
    def queries(self) -> np.ndarray:
        return self._oracle.queries

    @queries.setter
    def queries(self, value: np.ndarray) -> None:
        self._oracle.queries = value

    def labels(self, images: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """(B,) int64 top-1 labels (numpy's argmax: the first of tied maxima, as qadtr.predict takes them)."""
        return self._oracle.logits(images, owners).argmax(axis=1).astype(np.int64)

    @property
    def num_classes(self) -> int | None:
        return self._oracle.num_classes

    @num_classes.setter
    def num_classes(self, value: int | None) -> None:  # a resumed attack restores it with the query counts
        self._oracle.num_classes = value

    def check_target(self, target: int | None) -> None:
        self._oracle.check_target(target)


class OneHotScores(LabelOracle):
    """A LabelOracle dressed as an Oracle: `logits` are one-hot rows of the top-1 labels, so a score-based search
    runs on labels only (a margin of -1 when the label is the class sought, +1 otherwise)."""

    def logits(self, images: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """(B, K) float32 one-hot rows of the top-1 labels of `images` (K: the model's classes)."""
        labels = self.labels(images, owners)  # (B,)
        out = np.zeros((len(labels), self.num_classes or 0), np.float32)
        out[np.arange(len(labels)), labels] = 1.0
        return out
