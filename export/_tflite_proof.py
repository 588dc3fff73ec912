"""The TFLite artifact's proof: LiteRT's kernel sets against the Brevitas fake-quant deploy net, end to end and
per layer (FINN-style: each layer fed the runtime's own upstream integers, so a difference is that layer's own).

    figures = prove(net, built, debug, images=imgs, kernels=("xnnpack", "builtin"))
    figures["xnnpack"]["passed"], figures["xnnpack"]["act_mismatch_local"]

End to end, one near-tie flipped early (Brevitas sums a conv in float32, the runtime in exact int32) spreads
through every later layer, so a deep 8-bit net can be off in 2% of its activations with every layer right.
Per layer it cannot spread: Brevitas is re-run with each quantizer's output replaced by the runtime's
integers, and each layer's own integers are compared with the runtime's. A kernel set passes when either
holds: the end-to-end bound (the rule since version 1, unchanged) or the per-layer bound of export.onnx's
proof (at most 1e-4 of the elements differ, by at most one step), and argmax agrees on the non-tie images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export._tflite_graph import Built, _Q
from qadtr._scratch import scratch

KERNEL_SETS = ("xnnpack", "builtin")  # LiteRT's default (XNNPACK delegate) and BUILTIN_WITHOUT_DEFAULT_DELEGATES
# Thresholds. XNNPACK requantizes in fp32 with round-half-even, like Brevitas: bit-exact on every integer
# activation of test_qnet (w2/w4/w8) and of calibrated-from-random resnet20/resnet8 (w4). On real resnet20
# weights at w8a8 a few 1e-6 of the stem's outputs flip by one step and spread: 0.25% of all activations
# end to end, argmax 100% (20 CIFAR-10 images); MobileNetV2 (52 layers) reaches 2.6%, each layer right.
# LiteRT's builtin kernels requantize with gemmlowp-style double rounding and round half away from zero: a
# fraction of a percent of a layer flips by one step, a flipped 2-bit step moves the next layer by many 8-bit
# steps, and it compounds with depth (24% of activations, 87.5% argmax on a random resnet20 at w4). Their
# figures are reported; their bound only catches an op they cannot run.
MAX_ACT_MISMATCH = {"xnnpack": 1e-2, "builtin": 1.0}  # end to end: fraction of all compared integer activations
MAX_LOCAL_MISMATCH = {"xnnpack": 1e-4, "builtin": 1.0}  # per layer (export.onnx's MAX_INT_MISMATCH); builtin: reported
MAX_LOCAL_STEP = 1  # per layer, no integer may differ by more than one step (export.onnx's MAX_INT_STEP)
MIN_ARGMAX = {"xnnpack": 0.98, "builtin": 0.50}  # over non-tie samples (export._compare.TIE_RULE)


@torch.no_grad()
def reference_ints(net, pixels: torch.Tensor, acts: dict[str, _Q], *, feed: dict[str, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fake-quant logits (B, classes) and the stored integers (NHWC) of every compared activation.

    With `feed` (activation -> the runtime's stored integers for these B images), each quantizer's output is
    replaced by the fed integers after it is recorded, so every layer computes from the runtime's upstream
    values and the recorded integers measure each layer on its own."""
    out, hooks = {}, []
    modules = dict(net.named_modules())

    def grab(name: str):
        def hook(_m, _i, o):
            q = acts[name]
            if isinstance(o, torch.Tensor):  # float out of a quantizer: its integers are exact multiples
                ints = torch.round(o / q.scale)
            else:  # integers less Brevitas' zero point (0 unless asymmetric): value / scale, exactly
                ints = o.int().to(torch.int64) - torch.round(o.zero_point).to(torch.int64)
            ints = ints.to(torch.int64) + q.zp  # -> int8 storage (unsigned: zero point - 128)
            out[name] = (ints.permute(0, 2, 3, 1) if ints.dim() == 4 else ints).numpy()
            return None if feed is None else _fed(o, feed[name], q)
        return hook

    try:
        hooks = [modules[name].register_forward_hook(grab(name)) for name in acts]
        logits = net(pixels).numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, out


def _fed(o, stored: np.ndarray, q: _Q):
    """The quantizer output `o` with its integers replaced by `stored` (NHWC storage): same grid, same type."""
    s = torch.from_numpy(stored.astype(np.float32) - np.float32(q.zp))  # value / scale
    s = s.permute(0, 3, 1, 2) if s.dim() == 4 else s  # NHWC -> NCHW
    if isinstance(o, torch.Tensor):
        return (s * q.scale).to(o.dtype)
    return o._replace(value=(s * o.scale).to(o.value.dtype))


def prove(net, built: Built, debug: Built, *, images: np.ndarray, kernels=KERNEL_SETS, batch: int = 50,
          num_threads: int | None = 1) -> dict[str, dict]:
    """Run the artifact (logits) and its debug copy (all activations) under each kernel set vs the reference."""
    from devices.litert import LiteRTRunner
    from qadtr.predict import to_tensor

    figures = {}
    with scratch("tflite") as tmp:
        paths = {"real": Path(tmp) / "model.tflite", "debug": Path(tmp) / "debug.tflite"}
        paths["real"].write_bytes(built.data)
        paths["debug"].write_bytes(debug.data)
        for k in kernels:
            tally = _Tally(built.activations)
            with LiteRTRunner(paths["real"], kernels=k, num_threads=num_threads) as real, \
                    LiteRTRunner(paths["debug"], kernels=k, num_threads=num_threads) as dbg:
                for i in range(0, len(images), batch):
                    pixels = to_tensor(images[i:i + batch])  # (B, 3, H, W) float32 in [0, 1]
                    feed = {"pixels": np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())}  # (B, H, W, 3)
                    logits, got = real.infer(feed)["logits"], dbg.infer(feed)
                    ref, ref_ints = reference_ints(net, pixels, built.activations)
                    _, local = reference_ints(net, pixels, built.activations,
                                              feed={n: got[n] for n in built.activations})
                    tally.add(ref, logits, got, ref_ints=ref_ints, local=local)
            figures[k] = tally.figures(k, lsb=built.logit_scale)
    return figures


class _Tally:
    """Mismatch counts of one kernel set over the batches: end to end and per layer, per tensor."""

    def __init__(self, activations) -> None:
        self.per = {n: [0, 0, 0] for n in activations}  # end to end: [differing, elements, max step]
        self.local = {n: [0, 0] for n in activations}  # per layer: [differing, max step]
        self.refs, self.outs, self.identical = [], [], True

    def add(self, ref, logits, got, *, ref_ints, local) -> None:
        self.identical &= bool(np.array_equal(got["logits"], logits))
        for name, want in ref_ints.items():
            diff = np.abs(got[name].astype(np.int64) - want)
            own = np.abs(got[name].astype(np.int64) - local[name])
            p, q = self.per[name], self.local[name]
            p[0], p[1], p[2] = p[0] + int((diff != 0).sum()), p[1] + int(diff.size), max(p[2], int(diff.max(initial=0)))
            q[0], q[1] = q[0] + int((own != 0).sum()), max(q[1], int(own.max(initial=0)))
        self.refs.append(ref)
        self.outs.append(logits)

    def figures(self, k: str, *, lsb) -> dict:
        from export._compare import compare

        res = compare(np.concatenate(self.refs), np.concatenate(self.outs), lsb=lsb, atol_lsb=1.0,
                      max_mismatch_frac=1.0, min_argmax_agree=MIN_ARGMAX[k], name=f"logits ({k})")
        mism, elems = sum(v[0] for v in self.per.values()), sum(v[1] for v in self.per.values())
        local, local_step = sum(v[0] for v in self.local.values()), max((v[1] for v in self.local.values()), default=0)
        end_ok = mism <= MAX_ACT_MISMATCH[k] * elems
        local_ok = local <= MAX_LOCAL_MISMATCH[k] * elems and local_step <= MAX_LOCAL_STEP
        return {"passed": bool(res) and (end_ok or local_ok), "logits": res.to_dict(), "act_mismatch": mism,
                "act_elements": elems, "act_mismatch_frac": mism / max(elems, 1),
                "act_max_step": max((v[2] for v in self.per.values()), default=0),
                "act_mismatch_local": local, "act_max_step_local": local_step,
                "per_tensor": self.per, "per_tensor_local": self.local, "debug_copy_identical": self.identical,
                "thresholds": {"max_act_mismatch_frac": MAX_ACT_MISMATCH[k], "min_argmax_agree": MIN_ARGMAX[k],
                               "max_local_mismatch_frac": MAX_LOCAL_MISMATCH[k], "max_local_step": MAX_LOCAL_STEP}}
