#!/usr/bin/env bash
# The pre-registered candidates of results/study2/PLAN.md. Each candidate: train, then store it
# as a float16 model file (`pneumonia-cxr ensemble` of one member: threshold and OOD cut-off
# refitted on the rounded weights), which is the file the study evaluates.
# Usage: bash results/study2/run_study2.sh [candidate ...]   (default: all, in the plan's order)
# JOBS=N trains N candidates at once (one GPU holds several); PACK_DIR=D tars each finished run
# folder (without checkpoints) into D as soon as it is done.
set -uo pipefail
cd "$(dirname "$0")/../.."
DATA=${PNEUMONIA_CXR_DATA:-../shared/data/kermany_224}
OUT=${STUDY_OUTPUT_DIR:-outputs/study2}
CLI=${CLI:-.venv/bin/pneumonia-cxr}
JOBS=${JOBS:-1}
EXTRA=${EXTRA:-}   # only for a dry run of this script, e.g. "--limit_train_batches 2"
COMMON="--dataset_path $DATA --output_dir $OUT --backbone efficientnet_lite0 --weights imagenet
  --image_size 224 --stage1_epochs 1 --stage1_lr 1e-3 --stage2_lr 1e-4 --unfreeze_layers -1
  --threshold_rule max_threshold_at_sensitivity --min_sensitivity 0.95 --split_seed 1
  --num_workers ${NUM_WORKERS:-3}"
JPEG="--aug_jpeg_quality_min 50 --aug_resample_jitter yes"
MID="$JPEG --aug_crop_scale_min 0.8 --aug_brightness 0.1 --aug_contrast 0.1 --weight_decay 0.01"
ROBUST="--aug_brightness 0.2 --aug_contrast 0.2 --aug_gamma 0.25 --aug_blur_prob 0.2
  --aug_noise_std 0.02 --aug_crop_scale_min 0.75 --aug_jpeg_quality_min 40
  --aug_resample_jitter yes --weight_decay 0.01 --label_smoothing 0.1"

args_for() {
  case "$1" in
    e1_robust6_s1) echo "$ROBUST --stage2_epochs 6 --seed 1" ;;
    e2_robust6_s2) echo "$ROBUST --stage2_epochs 6 --seed 2" ;;
    e3_mid4_s6) echo "$MID --stage2_epochs 4 --seed 6" ;;
    e4_mid4_s7) echo "$MID --stage2_epochs 4 --seed 7" ;;
    e5_short_jpeg_s3) echo "$JPEG --stage2_epochs 2 --seed 3" ;;
    e6_short_jpeg_s4) echo "$JPEG --stage2_epochs 2 --seed 4" ;;
    e7_short_jpeg_s5) echo "$JPEG --stage2_epochs 2 --seed 5" ;;
    *) echo "unknown candidate $1" >&2; return 1 ;;
  esac
}

run_one() {
  local name=$1 extra start run
  extra=$(args_for "$name") || return 1
  run="$OUT/$name"
  start=$(date +%s)
  if [ ! -f "$run/final_pneumonia_model.pt" ]; then
    if [ -f "$run/config.json" ]; then
      $CLI train --resume "$run" >> "$OUT/$name.log" 2>&1
    else
      # shellcheck disable=SC2086
      $CLI train $COMMON $extra $EXTRA --run_name "$name" > "$OUT/$name.log" 2>&1
    fi || { echo "$name: training failed, see $OUT/$name.log"; tail -5 "$OUT/$name.log"; return 1; }
  fi
  if [ ! -f "$run/final_fp16.pt" ]; then
    $CLI ensemble "$run/final_pneumonia_model.pt" --output "$run/final_fp16.pt" \
      >> "$OUT/$name.log" 2>&1 || { echo "$name: fp16 copy failed"; tail -5 "$OUT/$name.log"; return 1; }
  fi
  echo "$name: done in $(( $(date +%s) - start )) s"
  if [ -n "${PACK_DIR:-}" ]; then
    cp "$OUT/$name.log" "$run/train.log"
    tar -czf "/tmp/$name.tgz" -C "$OUT" "$name/final_fp16.pt" "$name/split.csv" \
      "$name/config.json" "$name/metrics.csv" "$name/run_summary.json" "$name/train.log" && mv "/tmp/$name.tgz" "$PACK_DIR/$name.tgz"
  fi
}

mkdir -p "$OUT"
CANDIDATES=("$@")
[ ${#CANDIDATES[@]} -eq 0 ] && CANDIDATES=(e1_robust6_s1 e2_robust6_s2 e3_mid4_s6 e4_mid4_s7
  e5_short_jpeg_s3 e6_short_jpeg_s4 e7_short_jpeg_s5)
export -f run_one args_for
export DATA OUT CLI EXTRA COMMON JPEG MID ROBUST PACK_DIR=${PACK_DIR:-}
printf '%s\n' "${CANDIDATES[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one "$1"' _ {}
