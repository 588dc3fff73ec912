"""The reference runtime: a checkpoint's Brevitas fake-quant `deploy_net` behind the Runner contract.

This is the network the attacks ran on and every exporter proved itself against (BatchNorm folded,
int32 bias, eval mode), so its logits are what "fake-quant robustness" means in the comparison.

The artifact is a checkpoint (model.pt or its folder), or an exported .onnx/.tflite: then the
exporter's JSON beside it names the source checkpoint and bit widths, and the runner checks the
source's sha256 against the record, so "fakequant of w4.onnx" is exactly what that file came from.

Example:
    >>> with FakeQuantRunner("zoo/resnet20_w4a4/model.pt") as r:
    ...     logits = r.infer({"input": x})["logits"]  # x: float32 (B, 3, H, W) pixel / 255
    >>> r.kernels
    'torch 2.13.0 fake-quant (Brevitas 0.13.4), deploy_net w4a4'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devices._runner import Runner, RunnerError, TensorSpec
from devices.runtimes import export_record
from qadtr.bits import bits_name


class FakeQuantRunner(Runner):
    name = "fakequant"

    def __init__(self, checkpoint: str | Path, *, bits: tuple[int, int] | None = None):
        """Args:
            checkpoint: model.pt, its folder, or an .onnx/.tflite with its exporter's JSON beside it.
            bits: (w, a) to run; None = the only pair of a one-width checkpoint, or the export's pair.
        """
        super().__init__()
        if bits is not None and (len(bits) != 2 or not all(isinstance(b, int) for b in bits)):
            raise RunnerError(f"bits={bits!r}; pass a (w, a) pair such as (4, 4), or None")
        self.artifact = Path(checkpoint)
        self.bits = None if bits is None else tuple(bits)
        self.expect_sha256 = ""  # the export record's source_sha256, checked on activate
        if self.artifact.suffix in (".onnx", ".tflite"):
            record = export_record(self.artifact)
            if record is None or not record.source:
                raise RunnerError(f"{self.artifact.name}: no exporter JSON naming its source checkpoint; "
                                  "pass the checkpoint itself")
            src = Path(record.source)
            if not src.exists() and (self.artifact.parent / src.name).exists():
                src = self.artifact.parent / src.name  # a relative source moved together with the export
            record_bits = record.bits
            if self.bits is not None and record_bits and self.bits != record_bits:
                raise RunnerError(f"bits={self.bits} but {self.artifact.name} was exported at {record_bits}; "
                                  "drop bits or pass the checkpoint itself")
            self.checkpoint, self.bits = src, self.bits or record_bits
            self.expect_sha256 = record.source_sha256
        else:
            self.checkpoint = self.artifact
        self.kernels = "torch fake-quant (not activated yet)"
        self._net = None

    def _activate(self) -> None:
        import brevitas
        import torch

        from qadtr._module_ref import is_module_source
        from qadtr.checkpoint import load_checkpoint, resolve
        from qadtr.models import bits_of, deploy_net

        if is_module_source(self.checkpoint):
            return self._activate_module()
        model, ck = load_checkpoint(self.checkpoint)
        if self.expect_sha256 and ck.sha256 != self.expect_sha256:
            raise RunnerError(f"{resolve(self.checkpoint)[0]} is not the checkpoint {self.artifact.name} was exported "
                              "from (sha256 differs); pass the right checkpoint to fakequant")
        have = bits_of(model)
        bits = self.bits
        if not have:
            if bits is not None:
                raise RunnerError(f"{self.checkpoint} is a float model; drop bits={bits}")
            self._net, what = model.eval(), "float"
        else:
            if bits is None and len(have) > 1:
                raise RunnerError(f"{self.checkpoint} runs at {have}; pass bits=(w, a) to choose one")
            bits = bits or have[0]
            if bits not in have:
                raise RunnerError(f"{self.checkpoint} has no {bits_name(bits)}; it was trained at {have}")
            self._net, what = deploy_net(model, *bits), f"deploy_net {bits_name(bits)}"
        self.bits = bits
        self._torch = torch
        self.kernels = f"torch {torch.__version__} fake-quant (Brevitas {brevitas.__version__}), {what}"

    def _activate_module(self) -> None:
        """A module source (qadtr._module_ref, written by export.module): the user's deploy-form net as exported."""
        import brevitas
        import torch

        from qadtr._module_ref import load_module

        net, src = load_module(self.checkpoint)
        if self.expect_sha256 and src.sha256 != self.expect_sha256:
            raise RunnerError(f"{self.checkpoint} is not the module {self.artifact.name} was exported from (sha256 "
                              "differs); pass the right module source to fakequant")
        if self.bits is not None and src.bits and tuple(self.bits) != tuple(src.bits):
            raise RunnerError(f"{self.checkpoint} is {src.target} at {bits_name(src.bits)}; drop bits={self.bits}")
        self._net, self._torch, self.bits = net, torch, self.bits or src.bits
        self.kernels = (f"torch {torch.__version__} fake-quant (Brevitas {brevitas.__version__}), {src.target}"
                        + (f" {bits_name(self.bits)}" if self.bits else ""))

    def _input_spec(self) -> list[TensorSpec]:
        # The CIFAR/GTSRB nets end in global pooling, so any H x W runs; the replay data decides it.
        return [TensorSpec("input", np.dtype(np.float32), (None, 3, None, None))]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._torch.no_grad():
            logits = self._net(self._torch.from_numpy(feed["input"]))  # (B, K)
        return {"logits": logits.numpy().astype(np.float32, copy=False)}

    def _deactivate(self) -> None:
        self._net = None
