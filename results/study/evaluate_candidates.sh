#!/usr/bin/env bash
# Shared by the studies' evaluation scripts: each finished candidate's float16 file once on the
# test split (skipped when its metrics.json exists: each model is evaluated once).
# Usage: bash results/study/evaluate_candidates.sh RUNS_DIR PREFIX EVALS_DIR [evaluate flags ...]
#   e.g. bash results/study/evaluate_candidates.sh outputs/study3 d outputs/study3_eval
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=$1 PREFIX=$2 EVALS=$3
shift 3
DATA=${PNEUMONIA_CXR_DATA:-../shared/data/kermany_224}
CLI=${CLI:-.venv/bin/pneumonia-cxr}
for run in "$RUNS"/"$PREFIX"*/; do
  name=$(basename "$run")
  out="$EVALS/$name/test"
  [ -f "$run/final_fp16.pt" ] || { echo "$name: not finished"; continue; }
  [ -f "$out/metrics.json" ] && { echo "$name: done"; continue; }
  start=$(date +%s)
  $CLI evaluate --model_path "$run/final_fp16.pt" --dataset_path "$DATA" --split test \
    --explain_images 0 --output_dir "$out" "$@"
  echo "$name: evaluated in $(( $(date +%s) - start )) s"
done
