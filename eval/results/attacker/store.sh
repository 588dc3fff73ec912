#!/usr/bin/env bash
# The attacker matrix in the result store: every patch run.sh made on a deployed artifact (stamped with it by
# stamp.py: made_on = runtime, artifact, sha256[:16]) and the fake-quant patch of setting (a), replayed with
# eval.on_device on every runtime of w2a2 and w4a4 (the .onnx on ORT, the .tflite on LiteRT XNNPACK and builtin,
# and the fake-quant checkpoint each came from) into one SQLite store, compared (eval.compare) and reported
# (eval.report: its section "Attacks on the deployed artifact"). Last, stamp.py check: each attack's ASR in its
# result.json beside the store's replay on the runtime it attacked, and, where this host's kernels of that runtime
# differ from the attack's, on the integer-executor semantics of the attack's host (exit 1 when neither equals it).
# Run from the repository root after run.sh: bash eval/results/attacker/store.sh (on a shared CPU:
# OMP_NUM_THREADS=1 nice -n 19 bash ...). A run already in the store is not measured again.
set -euo pipefail
D=${DATA_DIR:-../shared/data}
R=eval/results/attacker
A=$R/artifacts
S=$R/store
# test images per universal patch: 2000 is the seed-1 subset the exact-arithmetic attack (setting (d)) replayed
# its patch and the fake-quant one on, so the store's ASRs of both can be set beside its result.json's
N=${EVAL_SUBSET:-2000}
for b in 2 4; do
  m=w${b}a${b}
  [ -f $A/$m.tflite ] || python -m export.tflite zoo/resnet20_$m/model.pt --bits $b --out $A/$m.tflite --data-dir $D
  [ -f $A/$m.onnx ] || python -m export.onnx zoo/resnet20_$m/model.pt --bits $b --out $A/$m.onnx --data-dir $D
done
python $R/stamp.py
mkdir -p $S/report
for m in w2a2 w4a4; do
  python -m eval.on_device --device local --model $A/$m.onnx --model $A/$m.tflite --patches $R/store_$m/patches \
    --data cifar10 --eval-subset $N --store $S/results.sqlite --out $S/on_device_$m.json --data-dir $D
  # ORT's sums on a host with AVX2 alone (u8s8 pairs saturating in int16), where run.sh's per-image and refine
  # attacks on ORT ran, through the integer executor that computes them bit for bit: a VNNI host's ORT sums exactly
  python -m eval.on_device --device local --model $A/$m.onnx --runtimes intexec-single-u8s8sat \
    --patches $R/store_$m/patches --data cifar10 --eval-subset $N --store $S/results.sqlite \
    --out $S/on_device_${m}_u8s8sat.json --data-dir $D
done
python -m eval.compare --store $S/results.sqlite --out $S/report --no-report
python -m eval.report --store $S/results.sqlite --compare $S/report/compare.json --out $S/report
python $R/stamp.py check | tee $S/asr_check.md
