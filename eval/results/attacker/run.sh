#!/usr/bin/env bash
# The attacker-on-the-device matrix on the CIFAR-10 zoo: for w2a2 and w4a4, on ORT (the .onnx), LiteRT XNNPACK
# and builtin (the .tflite): (b) the per-image query attack, (c) transfer-then-refine of the fake-quant universal
# patch (whose replayed ASR is setting (a)), (d) the white-box patch on the executor's exact arithmetic (every
# runtime: the semantics each one computes on this host), and (e) the decision-based universal patch (top-1 labels
# only). Target class 3, 10% patches, the budgets below.
# Run from the repository root: bash eval/results/attacker/run.sh (each step is skipped when its result exists).
set -euo pipefail
D=${DATA_DIR:-../shared/data}
R=eval/results/attacker
A=$R/artifacts
P=eval/results/transfer/patches
for b in 2 4; do
  m=w${b}a${b}
  [ -f $A/$m.tflite ] || python -m export.tflite zoo/resnet20_$m/model.pt --bits $b --out $A/$m.tflite --data-dir $D
  [ -f $A/$m.onnx ] || python -m export.onnx zoo/resnet20_$m/model.pt --bits $b --out $A/$m.onnx --data-dir $D
  for rt in onnxrt litert-xnnpack litert-builtin; do
    f=$A/$m.tflite; [ $rt = onnxrt ] && f=$A/$m.onnx
    [ -f $R/${m}_${rt}_perimage/result.json ] || python -m eval.query_attack --artifact $f --runtime $rt \
      --images 100 --budget 250 --target 3 --size 0.1 --data-dir $D --out $R/${m}_${rt}_perimage
    [ -f $R/${m}_${rt}_refine/result.json ] || python -m eval.query_attack --artifact $f --runtime $rt \
      --images 100 --budget 250 --target 3 --size 0.1 --universal --init $P/${m}_universal_s10_t3.npz \
      --reference zoo/resnet20_$m --holdout 1000 --data-dir $D --out $R/${m}_${rt}_refine
    [ -f $R/${m}_${rt}_decision/result.json ] || python -m eval.query_attack --artifact $f --runtime $rt \
      --attack decision --universal --images 100 --budget 250 --target 3 --size 0.1 --holdout 1000 --data-dir $D \
      --out $R/${m}_${rt}_decision
  done
  for rt in onnxrt litert-xnnpack litert-builtin; do
    f=$A/$m.tflite; [ $rt = onnxrt ] && f=$A/$m.onnx
    [ -f $R/${m}_${rt}_exact/result.json ] || python -m eval.exact_attack --artifact $f --runtimes $rt \
      --size 0.1 --target 3 --compare $P/${m}_universal_s10_t3.npz --data-dir $D --out $R/${m}_${rt}_exact
  done
done
python eval/results/attacker/summarise.py > $R/SUMMARY.md
