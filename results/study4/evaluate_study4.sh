#!/usr/bin/env bash
# "Evaluations" of results/study4/PLAN.md: each finished candidate's float16 file once on the
# test split, with the shortcut audit (skipped when its metrics.json exists: each model is
# evaluated once).
# Usage: bash results/study4/evaluate_study4.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${PNEUMONIA_CXR_DATA:-../shared/data/kermany_224}
CLI=${CLI:-.venv/bin/pneumonia-cxr}
for run in outputs/study4/f*/; do
  name=$(basename "$run")
  out="outputs/study4_eval/$name/test"
  [ -f "$run/final_fp16.pt" ] || { echo "$name: not finished"; continue; }
  [ -f "$out/metrics.json" ] && { echo "$name: done"; continue; }
  start=$(date +%s)
  $CLI evaluate --model_path "$run/final_fp16.pt" --dataset_path "$DATA" --split test \
    --explain_images 0 --audit --output_dir "$out"
  echo "$name: evaluated in $(( $(date +%s) - start )) s"
done
