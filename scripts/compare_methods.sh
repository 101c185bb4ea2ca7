#!/usr/bin/env bash
# Every training method on equal terms: one preset per data set (same model, epochs, batch, seeds),
# the same evaluation for every run, then one table per data set (mean ± std over seeds, paired
# difference to ERM, verdict) and one report.html per data set with every run side by side.
#
#   scripts/compare_methods.sh                       # CPU preset, every method, seeds 0 1 2
#   PRESET=gpu scripts/compare_methods.sh            # configs/compare/*_gpu.yaml (ResNet-18, 64 px, CUDA)
#   SHARD=0/2 scripts/compare_methods.sh & SHARD=1/2 scripts/compare_methods.sh   # two processes
#   DATASETS=demo METHODS=erm,ecl SEEDS="0 1" scripts/compare_methods.sh
#   DEVICE=cuda:1 scripts/compare_methods.sh          # evaluation device (default auto: the run's device)
#   PRESET=ft_cpu DATASETS=tinyimagenet METHODS=erm,ecl SEEDS="0 1 2 3 4" PROTOCOLS=localization \
#       scripts/compare_methods.sh                   # fine-tuned from the shipped backbone (issue 32)
#
# Interrupted runs resume and finished ones are skipped (consistcam sweep), so re-running after a
# stop costs nothing but what is missing. TABLE_ONLY=1 rebuilds the tables from what is evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-.venv/bin/consistcam}
PRESET=${PRESET:-cpu}
OUT=${OUT:-runs/compare}
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-erm,ecl,cgc,edda,sgt,excon,lico}
DATASETS=${DATASETS:-"demo shortcut_tinyimagenet tinyimagenet"}
METRICS=${METRICS:-"acc,summary/acc_correlated,summary/acc_decorrelated,summary/worst_group_acc,energy,pointing_game,bg_gap,insertion,deletion,consistency_E,summary/train_time_s"}
# every run is evaluated the same way: Grad-CAM, localisation, faithfulness, consistency, BG-gap
# (PROTOCOLS=localization: accuracy and localisation only, a quarter of the evaluation time)
EVAL=(--explainer gradcam --protocols "${PROTOCOLS:-localization,faithfulness,consistency}" --faithfulness-steps 16
      --device "${DEVICE:-auto}")
extra=()
[ -n "${SHARD:-}" ] && extra+=(--shard "$SHARD")
[ -n "${TABLE_ONLY:-}" ] && extra+=(--table-only)
for data in $DATASETS; do
  config=configs/compare/${data}_${PRESET}.yaml
  [ -f "$config" ] || { echo "error: no preset $config" >&2; exit 2; }
  start=$(date +%s)
  # shellcheck disable=SC2086
  $CC sweep "$config" --grid "method=$METHODS" --seeds $SEEDS --out "$OUT/$data" --baseline method=erm \
    --metrics "$METRICS" "${extra[@]}" --quiet --evaluate-args "${EVAL[@]}"
  echo "$data: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
done
# one report.html per data set with every method's runs side by side (after the last shard)
if [ -z "${SHARD:-}" ]; then
  for data in $DATASETS; do
    runs=$(find "$OUT/$data" -mindepth 3 -maxdepth 3 -path '*/eval/metrics.json' -printf '%h\n' | xargs -r -n1 dirname | sort)
    # shellcheck disable=SC2086
    [ -n "$runs" ] && $CC report $runs --out "$OUT/$data/report.html" --title "consistcam: every method on $data, $PRESET preset"
  done
fi
