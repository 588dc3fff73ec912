#!/bin/bash
# Every command behind the README section "Defences: the reproduction", in order (one CPU thread each here;
# the two chains of the original run went side by side on 2 cores: ~2 h of training, ~1 h of evaluation).
# Run from the repository root with ../shared beside it: bash eval/results/reproduction/reproduce.sh
set -euo pipefail
export QADTR_DATA=${QADTR_DATA:-../shared/data} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. The defended models and the ablations (zoo PLAN entries; finished ones are skipped, interrupted ones resume)
python -m qadtr.zoo --out zoo --data-dir "$QADTR_DATA" --only \
  resnet20_def_qat,resnet20_def_dq,resnet20_def_pbat,resnet20_def_dwq,resnet20_def_qadtr,resnet20_abl_no_aqapa,resnet20_abl_no_dbwt,resnet20_abl_no_gir

# 2. Defence evaluation: one attack budget for every group (eval.reproduction refuses mixed budgets)
B="--patch-steps 50 --patch-batch 32 --location-steps 5 --train-images 2000 --eval-images 500 --pgd-steps 5 --eps 2,4,8"
D="python -m eval.defense --surrogate zoo/resnet20_float $B --data-dir $QADTR_DATA"
P="--kinds seen,unseen,adaptive,transfer"
$D $P --bits 2,4 --checkpoints zoo/resnet20_def_qat zoo/resnet20_def_qadtr zoo/resnet20_def_dq --out eval/results/defense/recipes_a
$D $P --bits 2,4,random --checkpoints zoo/resnet20_def_pbat zoo/resnet20_def_dwq --out eval/results/defense/recipes_b
$D $P --bits 2,4 --checkpoints zoo/resnet20_abl_no_aqapa zoo/resnet20_abl_no_gir --out eval/results/defense/ablation_a
$D $P --bits 2,4 --checkpoints zoo/resnet20_abl_no_dbwt --out eval/results/defense/ablation_b
$D --kinds fgsm,pgd --bits float,2,4,random --checkpoints zoo/resnet20_float zoo/resnet20_def_qat zoo/resnet20_def_dq \
  zoo/resnet20_def_pbat zoo/resnet20_def_dwq zoo/resnet20_def_qadtr --out eval/results/defense/linf

# 2b. A stronger attack at w4a4 (4x the patch steps, 2x the batch, 4x the location steps) on the recipes'
#     own threats and the transferred patches: does the small budget above change the picture?
S="--patch-steps 200 --patch-batch 64 --location-steps 20 --train-images 2000 --eval-images 500 --pgd-steps 5 --eps 2,4,8 --bits 4"
python -m eval.defense --surrogate zoo/resnet20_float $S --data-dir "$QADTR_DATA" --kinds seen,transfer \
  --checkpoints zoo/resnet20_def_qat zoo/resnet20_def_qadtr --out eval/results/defense_strong/a
python -m eval.defense --surrogate zoo/resnet20_float $S --data-dir "$QADTR_DATA" --kinds seen,transfer \
  --checkpoints zoo/resnet20_def_pbat zoo/resnet20_def_dwq --out eval/results/defense_strong/b
python -m eval.defense --surrogate zoo/resnet20_float $S --data-dir "$QADTR_DATA" --kinds unseen \
  --checkpoints zoo/resnet20_def_qat --out eval/results/defense_strong/a
python -m eval.defense --surrogate zoo/resnet20_float ${S/--bits 4/--bits 2} --data-dir "$QADTR_DATA" --kinds unseen \
  --checkpoints zoo/resnet20_def_qat --out eval/results/defense_strong/a
python -m eval.defense --surrogate zoo/resnet20_float $S --data-dir "$QADTR_DATA" --kinds unseen \
  --checkpoints zoo/resnet20_def_qadtr --out eval/results/defense_strong/c

# 3. DQ's error amplification
python -m eval.amplification --checkpoints zoo/resnet20_float zoo/resnet20_w4a4 zoo/resnet20_def_qat zoo/resnet20_def_dq \
  --eps 1,2,4,8 --images 500 --data-dir "$QADTR_DATA" --out eval/results/amplification

# 4. Deployment: each model's white-box universal patch at w2a2/w4a4 + the float surrogate's transfer patches,
#    replayed on fake-quant, ONNX Runtime and LiteRT (XNNPACK, builtin) for the same bit widths
collect() {  # DEFENSE_DIR OUT_DIR: copy the patches, renamed <model>_<file>
  mkdir -p "$2"
  for d in "$1"/patches/*/; do
    m=$(basename "$d"); m=${m#resnet20_}
    for f in "$d"w2a2_universal_s062 "$d"w4a4_universal_s062 "$d"float_universal_s062 "$d"float_location_s062; do
      [ -f "$f.npz" ] || continue
      for ext in npz json png; do cp "$f.$ext" "$2/${m}_$(basename "$f").$ext"; done
    done
  done
}
for g in recipes_a recipes_b; do collect eval/results/defense/$g eval/results/defense_deployed/$g/patches; done
python -m eval.on_device --device local --checkpoint zoo/resnet20_def_qat@2,4 zoo/resnet20_def_qadtr@2,4 zoo/resnet20_def_dq@2,4 \
  --patches eval/results/defense_deployed/recipes_a/patches --eval-subset 500 --data-dir "$QADTR_DATA" --out eval/results/defense_deployed/recipes_a
python -m eval.on_device --device local --checkpoint zoo/resnet20_def_pbat@2,4 zoo/resnet20_def_dwq@2,4 \
  --patches eval/results/defense_deployed/recipes_b/patches --eval-subset 500 --data-dir "$QADTR_DATA" --out eval/results/defense_deployed/recipes_b

# 5. The report
python -m eval.reproduction --defense eval/results/defense --deployed eval/results/defense_deployed --out eval/results/reproduction
