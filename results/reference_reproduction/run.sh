#!/usr/bin/env bash
# Issue 37: the reference system reproduced (PLAN.md). Trains run 1 (the reference as written)
# and run 2 (its network under this project's protocol) one after the other, each resumed
# exactly if its folder exists, then evaluates each ONCE on the test split (a marker file stops
# a second evaluation) and counts the guard's flags on the adult films.
# Run from the project root: nohup bash results/reference_reproduction/run.sh > outputs/reference_reproduction.log 2>&1 &
set -euo pipefail
DATA=${DATA:-../shared/data/kermany_224}
EXTERNAL=${EXTERNAL:-../shared/data/external_adult_covid}
OUT=outputs/reference_reproduction
PCX=.venv/bin/pneumonia-cxr
mkdir -p "$OUT"

run() {  # name, preset
  local name=$1 preset=$2 dir="$OUT/$1"
  if [ ! -f "$dir/final_pneumonia_model.pt" ]; then
    if [ -f "$dir/config.json" ]; then
      echo "$(date -Is) resume $name"; $PCX train --resume "$dir"
    else
      echo "$(date -Is) start $name"
      $PCX train --preset "$preset" --dataset_path "$DATA" --output_dir "$OUT" --run_name "$name"
    fi
  fi
  if [ ! -f "$dir/TEST_EVALUATED" ]; then
    touch "$dir/TEST_EVALUATED"  # before reading the test split: once, even if it fails
    echo "$(date -Is) evaluate $name on test"
    $PCX evaluate --model_path "$dir/final_pneumonia_model.pt" --dataset_path "$DATA" \
      --split test --audit --explain_images 0 --output_dir "$dir/eval_test"
    $PCX predict "$EXTERNAL" --model_path "$dir/final_pneumonia_model.pt" \
      --output "$dir/external_adult_covid.csv" || true
  fi
}

run run1_reference reference
run run2_protocol reference_protocol
echo "$(date -Is) done"
