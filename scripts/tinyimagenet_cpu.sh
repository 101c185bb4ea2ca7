#!/usr/bin/env bash
# ERM vs ECL on tiny-imagenet-10 with the CPU preset (seeds 0 1 2 by default), then the full
# evaluation of each run (RUN/eval/metrics.json and report.html). Interrupted runs resume.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/tin10}
SEEDS=${SEEDS:-"0 1 2"}
for seed in $SEEDS; do
  for method in erm ecl; do
    run=$OUT/${method}_s$seed
    if [ -f "$run/checkpoint.safetensors" ]; then resume="--resume $run"; else resume=""; fi
    .venv/bin/consistcam train --config configs/tinyimagenet_cpu.yaml --method $method --seed $seed --out $run $resume --quiet
    if [ ! -f "$run/eval/metrics.json" ] || [ -n "${REEVALUATE:-}" ]; then
      .venv/bin/consistcam evaluate $run --explainer gradcam --explainer gradcam++ --explainer layercam --quiet
    fi
  done
done
.venv/bin/consistcam report $OUT/erm_s* $OUT/ecl_s* --out $OUT/report.html --title "tiny-imagenet-10: ERM vs ECL"
