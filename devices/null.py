"""A runner that computes nothing: zeros of the right shape, to test the replay plumbing (P10).

It takes any artifact (it never reads it) and NHWC float32 images of any size, so replay, store,
resume and report code run end to end without a runtime or a model.

Example:
    >>> with NullRunner("anything", num_classes=10) as r:
    ...     r.infer({"pixels": np.zeros((4, 32, 32, 3), np.float32)})["logits"].shape
    (4, 10)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devices._runner import Runner, RunnerError, TensorSpec


class NullRunner(Runner):
    name = "null"
    kernels = "none (null runner: zeros, plumbing tests)"

    def __init__(self, artifact: str | Path | None = None, *, num_classes: int = 10):
        super().__init__()
        if num_classes < 1:
            raise RunnerError(f"num_classes={num_classes}; pass a positive count")
        self.artifact, self.num_classes = artifact, num_classes

    def _activate(self) -> None:
        pass

    def _input_spec(self) -> list[TensorSpec]:
        return [TensorSpec("pixels", np.dtype(np.float32), (None, None, None, 3))]  # (B, H, W, 3)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"logits": np.zeros((len(feed["pixels"]), self.num_classes), np.float32)}  # (B, K)
