#!/usr/bin/env bash
# Is a benchmark valid before any method is ranked on it? (issue 32) ERM and oracle Group DRO on one
# preset, 5 seeds, evaluated the same way (accuracy per group, Grad-CAM energy in the box, BG-gap);
# the table (RUN/sweep.md) answers the three questions of docs/results.md "Benchmark validity":
# does ERM fit its training set (summary/train_acc >= 0.9), has it learned the shortcut
# (summary/shortcut_gap = acc on test_correlated - acc on test >= 0.10), and can the oracle win
# (groupdro's worst_group_acc - ERM's >= 0.05 with its 95 % interval above 0)?
#
#   scripts/validate_benchmark.sh                                  # the CPU fine-tuning preset
#   SHARD=0/2 scripts/validate_benchmark.sh & SHARD=1/2 scripts/validate_benchmark.sh   # two lanes
#   CONFIG=configs/compare/shortcut_tinyimagenet_ft_gpu.yaml OUT=runs/validity_gpu scripts/validate_benchmark.sh
#   SET="epochs=6 data=shortcut:area=0.3:tinyimagenet:../shared/data/tiny-imagenet-10" OUT=runs/validity_try2 \
#       scripts/validate_benchmark.sh        # another try of the spec: options on top of the preset
#
# Interrupted runs resume and finished ones are skipped; TABLE_ONLY=1 rebuilds the table.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-.venv/bin/consistcam}
CONFIG=${CONFIG:-configs/compare/shortcut_tinyimagenet_ft_cpu.yaml}
OUT=${OUT:-runs/validity}
SEEDS=${SEEDS:-"0 1 2 3 4"}
METHODS=${METHODS:-erm,groupdro}
METRICS="summary/train_acc,summary/acc_correlated,summary/acc_decorrelated,summary/shortcut_gap,summary/worst_group_acc,val/acc,energy,bg_gap,summary/train_time_s"
extra=()
[ -n "${SHARD:-}" ] && extra+=(--shard "$SHARD")
[ -n "${TABLE_ONLY:-}" ] && extra+=(--table-only)
for kv in ${SET:-}; do extra+=(--set "$kv"); done
# shellcheck disable=SC2086
$CC sweep "$CONFIG" --grid "method=$METHODS" --seeds $SEEDS --out "$OUT" --baseline method=erm \
  --metrics "$METRICS" "${extra[@]}" --quiet \
  --evaluate-args --explainer gradcam --protocols localization --no-report
