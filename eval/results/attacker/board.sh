#!/usr/bin/env bash
# The attacker matrix's emulated-board cell: the w2a2 ResNet-20 on the emulated Raspberry Pi 4 (rpi4-emu: a
# Cortex-A72 under qemu-user, set up with `python -m devices.arm_emu setup --profile cortex-a72`), LiteRT XNNPACK's
# aarch64 kernels, at small budgets because qemu runs them 100-1000x slower than the real core. Every query goes
# through one agent session on the board: (b) per-image queries, (c) refine of the fake-quant patch with held-out
# images, (e) the decision-based universal patch; (a) and (d) are replayed there with eval.on_device. Each query
# attack is also run on this host's XNNPACK with the same flags, so board and host are compared like for like.
# Run from the repository root after run.sh (it reuses its artifacts); each step is skipped when its result exists.
set -euo pipefail
D=${DATA_DIR:-../shared/data}
R=eval/results/attacker
A=$R/artifacts
P=eval/results/transfer/patches
m=w2a2
rt=litert-xnnpack
f=$A/$m.tflite
[ -f $f ] || python -m export.tflite zoo/resnet20_$m/model.pt --bits 2 --out $f --data-dir $D
for dev in rpi4-emu local; do
  o=$R/${dev}_${m}_${rt}
  [ -f ${o}_perimage/result.json ] || python -m eval.query_attack --device $dev --artifact $f --runtime $rt \
    --images 40 --budget 50 --target 3 --size 0.1 --data-dir $D --out ${o}_perimage
  [ -f ${o}_refine/result.json ] || python -m eval.query_attack --device $dev --artifact $f --runtime $rt \
    --images 40 --budget 50 --target 3 --size 0.1 --universal --init $P/${m}_universal_s10_t3.npz \
    --reference zoo/resnet20_$m --holdout 200 --data-dir $D --out ${o}_refine
  [ -f ${o}_decision/result.json ] || python -m eval.query_attack --device $dev --artifact $f --runtime $rt \
    --attack decision --universal --images 40 --budget 50 --target 3 --size 0.1 --holdout 200 --data-dir $D \
    --out ${o}_decision
done
# (a) the fake-quant patch and (d) the patch made on the exact arithmetic (xnnpack semantics), replayed on the board
B=$R/rpi4-emu_replay
mkdir -p $B/patches
for x in npz json; do
  cp $P/${m}_universal_s10_t3.$x $B/patches/${m}_universal_s10_t3.$x
  cp $R/${m}_${rt}_exact/patch.$x $B/patches/${m}_exact_xnnpack_s10_t3.$x
done
[ -f $B/on_device.json ] || python -m eval.on_device --device rpi4-emu,local --model $f --patches $B/patches \
  --runtimes $rt --eval-subset 300 --data-dir $D --store $B/results.sqlite --out $B/on_device.json
