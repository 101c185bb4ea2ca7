#!/usr/bin/env bash
# ERM vs ECL on tiny-imagenet-10 with the CPU preset, seeds 0 and 1, then evaluation of each run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/tin10}
for seed in 0 1; do
  for method in erm ecl; do
    run=$OUT/${method}_s$seed
    if [ -f "$run/checkpoint.safetensors" ]; then resume="--resume $run"; else resume=""; fi
    .venv/bin/consistcam train --config configs/tinyimagenet_cpu.yaml --method $method --seed $seed --out $run $resume --quiet
    .venv/bin/consistcam evaluate $run --quiet --out $run/eval.json > /dev/null
  done
done
