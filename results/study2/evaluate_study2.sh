#!/usr/bin/env bash
# Rule 2-4 of results/study2/PLAN.md: each finished candidate once on the test split, the
# members' ensemble built and evaluated once on the test split. The shipped file
# (pneumonia_cxr/weights/) is that ensemble, copied; writing there directly would replace the
# pinned file, so ENSEMBLE defaults to a path under outputs/.
# Usage: bash results/study2/evaluate_study2.sh MEMBER_MODEL_FILE...   (the members of rule 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${PNEUMONIA_CXR_DATA:-../shared/data/kermany_224}
CLI=${CLI:-.venv/bin/pneumonia-cxr}
ENSEMBLE=${ENSEMBLE:-outputs/study2_eval/ensemble_study2.pt}
evaluate() {  # model, output folder; skipped when done (each model is evaluated once)
  [ -f "$2/metrics.json" ] && { echo "$2: done"; return; }
  local start=$(date +%s)
  $CLI evaluate --model_path "$1" --dataset_path "$DATA" --split test --explain_images 0 \
    --output_dir "$2"
  echo "$2: evaluated in $(( $(date +%s) - start )) s"
}
for run in outputs/study2/e*/; do
  [ -f "$run/final_fp16.pt" ] && evaluate "$run/final_fp16.pt" "outputs/study2_eval/$(basename "$run")/test"
done
if [ ! -f outputs/study2_eval/ensemble_study2/test/metrics.json ]; then
  $CLI ensemble "$@" --threshold_rule max_threshold_at_sensitivity --min_sensitivity 0.95 \
    --output "$ENSEMBLE"
fi
evaluate "$ENSEMBLE" outputs/study2_eval/ensemble_study2/test
