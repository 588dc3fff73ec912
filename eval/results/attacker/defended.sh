#!/usr/bin/env bash
# The attacker-on-the-device settings on a defended zoo model and its same-budget baseline: zoo/resnet20_def_qadtr
# (QADT-R) and zoo/resnet20_def_qat (plain QAT, the same one-epoch fine-tune from the float model), both at w4a4,
# on ORT, LiteRT XNNPACK and builtin: (a) their own fake-quant universal patch (300 steps, as the transfer patches)
# replayed, (b) the per-image query attack, (c) transfer-then-refine of (a), (e) the decision-based universal
# patch, and (d) the white-box patch on XNNPACK's exact arithmetic. Target class 3, 10% patches, budget 250, the
# flags of run.sh. Run from the repository root: bash eval/results/attacker/defended.sh (each step is skipped when
# its result exists).
set -euo pipefail
D=${DATA_DIR:-../shared/data}
R=eval/results/attacker
A=$R/artifacts
for z in def_qadtr def_qat; do
  m=${z}_w4a4
  P=$R/${m}_patches
  [ -f $A/$m.tflite ] || python -m export.tflite zoo/resnet20_$z/model.pt --bits 4 --out $A/$m.tflite --data-dir $D
  [ -f $A/$m.onnx ] || python -m export.onnx zoo/resnet20_$z/model.pt --bits 4 --out $A/$m.onnx --data-dir $D
  [ -f $P/w4a4_universal_s10_t3.npz ] || python -m qadtr.attack zoo/resnet20_$z --attack universal --bits 4 \
    --size 0.1 --target 3 --steps 300 --out $P --data-dir $D
  for rt in onnxrt litert-xnnpack litert-builtin; do
    f=$A/$m.tflite; [ $rt = onnxrt ] && f=$A/$m.onnx
    [ -f $R/${m}_${rt}_perimage/result.json ] || python -m eval.query_attack --artifact $f --runtime $rt \
      --images 100 --budget 250 --target 3 --size 0.1 --data-dir $D --out $R/${m}_${rt}_perimage
    [ -f $R/${m}_${rt}_refine/result.json ] || python -m eval.query_attack --artifact $f --runtime $rt \
      --images 100 --budget 250 --target 3 --size 0.1 --universal --init $P/w4a4_universal_s10_t3.npz \
      --reference zoo/resnet20_$z --holdout 1000 --data-dir $D --out $R/${m}_${rt}_refine
    [ -f $R/${m}_${rt}_decision/result.json ] || python -m eval.query_attack --artifact $f --runtime $rt \
      --attack decision --universal --images 100 --budget 250 --target 3 --size 0.1 --holdout 1000 --data-dir $D \
      --out $R/${m}_${rt}_decision
  done
  [ -f $R/${m}_litert-xnnpack_exact/result.json ] || python -m eval.exact_attack --artifact $A/$m.tflite \
    --runtimes litert-xnnpack --size 0.1 --target 3 --compare $P/w4a4_universal_s10_t3.npz --data-dir $D \
    --out $R/${m}_litert-xnnpack_exact
done
