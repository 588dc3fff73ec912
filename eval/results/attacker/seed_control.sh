#!/usr/bin/env bash
# The seed control for setting (d): is the white-box patch on the exact arithmetic better than a fake-quant patch
# because it optimised against the kernel set's rounding, or because any fresh 500-step optimisation lands a few
# points apart? For w2a2 and w4a4: the fake-quant universal patch re-optimised with the (d) patches' exact settings
# (500 sign steps, 10%, target 3) under seeds 0, 1 and 2, replayed beside (a) (the 300-step transfer patch) and the
# three (d) patches (through `xnnpack`, `double-ruy` and ORT's `single`) on the same 2,000 seed-1 test images
# (1,786 not of class 3) at the same seed-1 placements, on ORT, LiteRT XNNPACK and builtin, into one store.
# Run from the repository root after run.sh: bash eval/results/attacker/seed_control.sh
set -euo pipefail
D=${DATA_DIR:-../shared/data}
R=eval/results/attacker
S=$R/seed_control
for b in 2 4; do
  m=w${b}a${b}
  mkdir -p $S/$m/patches
  for s in 0 1 2; do
    [ -f $S/$m/made_s$s/${m}_universal_s10_t3.npz ] || python -m qadtr.attack zoo/resnet20_$m --attack universal \
      --bits $b --size 0.1 --target 3 --steps 500 --seed $s --out $S/$m/made_s$s --data-dir $D
    cp $S/$m/made_s$s/${m}_universal_s10_t3.npz $S/$m/patches/fakequant500_seed$s.npz
  done
  cp eval/results/transfer/patches/${m}_universal_s10_t3.npz $S/$m/patches/a_fakequant300_seed0.npz
  cp $R/${m}_litert-xnnpack_exact/patch.npz $S/$m/patches/d_exact_xnnpack_seed0.npz
  cp $R/${m}_litert-builtin_exact/patch.npz $S/$m/patches/d_exact_double-ruy_seed0.npz
  cp $R/${m}_onnxrt_exact/patch.npz $S/$m/patches/d_exact_onnx-single_seed0.npz
  python -m eval.on_device --device local --model $R/artifacts/$m.onnx --model $R/artifacts/$m.tflite \
    --patches $S/$m/patches --data cifar10 --eval-subset 2000 --store $S/results.sqlite --out $S/on_device_$m.json \
    --data-dir $D
done
python $R/seed_control.py > $S/SEED_CONTROL.md
