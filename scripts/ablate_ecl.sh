#!/usr/bin/env bash
# ECL ablations (issue 16): each arm changes one choice of the comparison preset's ECL, against
# ERM and that preset, on the same data, model, budget and seeds as scripts/compare_methods.sh.
# Evaluated on `val` (to pick defaults) and `test` (to report them): accuracy, energy in the box,
# pointing game (localisation protocol, Grad-CAM); `test_correlated` too, because worst-group
# accuracy is taken over test + test_correlated (in a decorrelated split alone the aligned cells hold
# ~5 images each, so the worst cell is 0 for every model and the figure says nothing).
#
#   scripts/ablate_ecl.sh                                  # every arm, both data sets, seeds 0 1 2
#   ARMS="erm ecl noise rank" DATASETS=demo scripts/ablate_ecl.sh
#   SHARD=0/2 scripts/ablate_ecl.sh & SHARD=1/2 scripts/ablate_ecl.sh; TABLE_ONLY=1 scripts/ablate_ecl.sh
#
# Arms (one change each against `ecl`, the preset in configs/compare/<data>_<PRESET>.yaml):
#   erm, ecl            the baseline and the preset
#   every               score every epoch if the preset scores every 2, else every 2
#   literal             v = 1 - E (power 1, floor 0) instead of the tempered preset
#   rank                v from the rank of 1 - E (weight_scheme rank)
#   s_only, p_only      E from the heatmap similarity S only (lam 1) / the prediction P only (lam 0)
#   noise, fgsm         uniform noise in the eps-ball / one-step attack instead of PGD (no attack at
#                       all gives E = 1 and v = 1 for every image: ERM by construction, not run)
#   gt                  the attack's foreground mask from the ground-truth box, not the heatmap
#   steps1, steps5      PGD steps 1 / 5 (preset 3)
#   layer3              Grad-CAM (h, h_adv and the mask) at an earlier stage, $LAYER (default
#                       model.layer3 of cc_resnet10: 8x8 at 32 px instead of layer4's 4x4), the
#                       CPU stand-in for the 32 vs 64 px question (64 px costs 4x)
# Interrupted members resume and finished ones are skipped (consistcam sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-.venv/bin/consistcam}
PRESET=${PRESET:-cpu}
OUT=${OUT:-runs/ablation}
SEEDS=${SEEDS:-"0 1 2"}
ARMS=${ARMS:-"erm ecl every literal rank s_only p_only noise gt steps1 steps5"}
DATASETS=${DATASETS:-"shortcut_tinyimagenet demo"}
METRICS=${METRICS:-"acc,worst_group_acc,energy,pointing_game"}
BASELINE=${BASELINE:-method=erm}  # BASELINE=method=ecl TABLE_ONLY=1: every arm against the preset
EVAL=(--device "${DEVICE:-auto}" --explainer gradcam --protocols localization --split val --split test --split test_correlated --no-background
      --no-report)
# the former names of ecl.weights.power, .floor, .scheme (still accepted): the arm names, and with them the
# run folders of earlier ablations, stay the same, so those runs are found and skipped
C=ecl.consistency
extra=()
[ -n "${SHARD:-}" ] && extra+=(--shard "$SHARD")
[ -n "${TABLE_ONLY:-}" ] && extra+=(--table-only)
for data in $DATASETS; do
  config=configs/compare/${data}_${PRESET}.yaml
  [ -f "$config" ] || { echo "error: no preset $config" >&2; exit 2; }
  every=$(sed -n 's/^ *update_every: *//p' "$config")
  [ "$every" = 1 ] && other=2 || other=1
  arms=()
  for arm in $ARMS; do
    case $arm in
      erm) spec="method=erm" ;;
      ecl) spec="method=ecl" ;;
      every) spec="method=ecl ecl.update_every=$other" ;;
      literal) spec="method=ecl $C.weight_power=1 $C.weight_floor=0" ;;
      rank) spec="method=ecl $C.weight_scheme=rank" ;;
      s_only) spec="method=ecl $C.lam=1" ;;
      p_only) spec="method=ecl $C.lam=0" ;;
      noise) spec="method=ecl $C.attack=noise" ;;
      fgsm) spec="method=ecl $C.attack=fgsm" ;;
      gt) spec="method=ecl $C.mask=gt" ;;
      steps1) spec="method=ecl $C.steps=1" ;;
      steps5) spec="method=ecl $C.steps=5" ;;
      layer3) spec="method=ecl $C.layer=${LAYER:-model.layer3}" ;;
      *) echo "error: unknown arm '$arm' (see the list at the top of $0)" >&2; exit 2 ;;
    esac
    arms+=(--arm "$spec")
  done
  start=$(date +%s)
  # shellcheck disable=SC2086
  $CC sweep "$config" "${arms[@]}" --seeds $SEEDS --out "$OUT/$data" --baseline "$BASELINE" \
    --metrics "$METRICS" --plot-metric val/acc "${extra[@]}" --quiet --evaluate-args "${EVAL[@]}"
  echo "$data: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
done
