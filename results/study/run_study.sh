#!/usr/bin/env bash
# The pre-registered candidates of results/study/PLAN.md, trained one after the other.
# Usage: bash results/study/run_study.sh [candidate ...]   (default: all, in the plan's order)
# A killed candidate continues with --resume; a finished one is skipped.
set -uo pipefail
cd "$(dirname "$0")/../.."
DATA=${PNEUMONIA_CXR_DATA:-../shared/data/kermany_224}
OUT=${STUDY_OUTPUT_DIR:-outputs/study}
BIN=${BIN:-.venv/bin}
COMMON=(--dataset_path "$DATA" --output_dir "$OUT" --backbone efficientnet_lite0 --weights imagenet
  --image_size 224 --stage1_epochs 1 --stage1_lr 1e-3 --stage2_epochs 2 --stage2_lr 1e-4
  --unfreeze_layers -1 --threshold_rule max_threshold_at_sensitivity --min_sensitivity 0.97
  --split_seed 1)
ROBUST=(--aug_brightness 0.2 --aug_contrast 0.2 --aug_gamma 0.25 --aug_blur_prob 0.2
  --aug_noise_std 0.02 --aug_crop_scale_min 0.75 --aug_jpeg_quality_min 40
  --aug_resample_jitter yes --weight_decay 0.01 --label_smoothing 0.1)

args_for() {
  case "$1" in
    c1_short_s1) echo "--seed 1" ;;
    c2_robust_s1) echo "${ROBUST[*]} --seed 1" ;;
    c3_robust_s2) echo "${ROBUST[*]} --seed 2" ;;
    c4_robust_s3) echo "${ROBUST[*]} --seed 3" ;;
    c5_short_s2) echo "--seed 2" ;;
    c6_robust_s4) echo "${ROBUST[*]} --seed 4" ;;
    *) echo "unknown candidate $1" >&2; return 1 ;;
  esac
}

CANDIDATES=("$@")
[ ${#CANDIDATES[@]} -eq 0 ] && CANDIDATES=(c1_short_s1 c2_robust_s1 c3_robust_s2 c4_robust_s3 c5_short_s2 c6_robust_s4)
for name in "${CANDIDATES[@]}"; do
  extra=$(args_for "$name") || exit 1
  if [ -f "$OUT/$name/final_pneumonia_model.pt" ]; then echo "$name: done"; continue; fi
  start=$(date +%s)
  if [ -f "$OUT/$name/config.json" ]; then
    "$BIN/pneumonia-cxr" train --resume "$OUT/$name"
  else
    # shellcheck disable=SC2086
    "$BIN/pneumonia-cxr" train "${COMMON[@]}" $extra --run_name "$name"
  fi
  echo "$name: exit $? after $(( $(date +%s) - start )) s"
done
