#!/usr/bin/env bash
# Shared by the distillation studies (results/study3, results/study4): the common flags of every
# candidate and `run_one NAME EXTRA_FLAGS` (train or resume, then the float16 file). Sourced, not
# run; the caller sets OUT and cds to the project root.
DATA=${PNEUMONIA_CXR_DATA:-../shared/data/kermany_224}
CLI=${CLI:-.venv/bin/pneumonia-cxr}
# The teacher: study 2's ensemble, shipped until study 3 replaced it (git history keeps it).
TEACHER=${TEACHER:-pneumonia_cxr/weights/pneumonia_cxr_effnet_lite0_ensemble.pt}
if [ ! -f "$TEACHER" ]; then
  TEACHER=outputs/teacher_study2_ensemble.pt
  mkdir -p outputs
  if [ ! -f "$TEACHER" ]; then  # written whole or not at all: a failed `git show` leaves nothing
    git show 165ba29:pneumonia_cxr/weights/pneumonia_cxr_effnet_lite0_ensemble.pt > "$TEACHER.tmp" \
      && mv "$TEACHER.tmp" "$TEACHER" || { rm -f "$TEACHER.tmp"; echo "teacher not found" >&2; }
  fi
fi
COMMON="--dataset_path $DATA --output_dir $OUT --teacher $TEACHER --distill_alpha 0.5
  --weights imagenet --jpeg_quality 75 --stage1_epochs 1 --stage1_lr 1e-3 --stage2_lr 1e-4
  --unfreeze_layers -1 --stage2_epochs 4 --threshold_rule max_threshold_at_sensitivity
  --min_sensitivity 0.95 --num_workers ${NUM_WORKERS:-2}"
MID="--aug_jpeg_quality_min 50 --aug_resample_jitter yes --aug_crop_scale_min 0.8
  --aug_brightness 0.1 --aug_contrast 0.1 --weight_decay 0.01"

# Each distill line: `pneumonia-cxr distill` (resumed when its run folder exists), then the
# float16 file (`pneumonia-cxr ensemble` of the one member: threshold and OOD cut-off refitted on
# the rounded weights), which is the file a study evaluates. Later flags override earlier ones.
run_one() {
  local name=$1 extra=$2 start run
  run="$OUT/$name"
  start=$(date +%s)
  mkdir -p "$OUT"
  if [ ! -f "$run/final_pneumonia_model.pt" ]; then
    if [ -f "$run/config.json" ]; then
      $CLI distill --resume "$run" >> "$OUT/$name.log" 2>&1
    else
      # shellcheck disable=SC2086
      $CLI distill $COMMON $MID $extra --run_name "$name" > "$OUT/$name.log" 2>&1
    fi || { echo "$name: training failed, see $OUT/$name.log"; tail -c 2000 "$OUT/$name.log"; return 1; }
  fi
  if [ ! -f "$run/final_fp16.pt" ]; then
    $CLI ensemble "$run/final_pneumonia_model.pt" --output "$run/final_fp16.pt" \
      >> "$OUT/$name.log" 2>&1 || { echo "$name: fp16 copy failed"; tail -c 2000 "$OUT/$name.log"; return 1; }
  fi
  echo "$name: done in $(( $(date +%s) - start )) s"
}

# `run_candidates "DEFAULT ..." [NAME ...]`: each named candidate (default: the plan's list, in
# its order) through `run_one`, with the flags the calling script's `args_for NAME` prints.
run_candidates() {
  local defaults=$1 name extra
  shift
  local names=("$@")
  [ ${#names[@]} -eq 0 ] && read -r -a names <<< "$defaults"
  for name in "${names[@]}"; do
    extra=$(args_for "$name") && run_one "$name" "$extra"
  done
}
