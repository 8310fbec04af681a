#!/usr/bin/env bash
# The pre-registered candidates of results/study5/PLAN.md, one after another on this machine's
# CPU cores: study 4's f3 recipe (frame fill, moving crops, 8 fine-tuning epochs) with new seeds
# (common flags and the train/resume/float16 steps: results/study/distill_candidates.sh).
# Usage: bash results/study5/run_study5.sh [candidate ...]   (default: all, in the plan's order)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${STUDY_OUTPUT_DIR:-outputs/study5}
# shellcheck source=../study/distill_candidates.sh
source results/study/distill_candidates.sh
RECIPE="--backbone efficientnet_lite0 --image_size 224 --aug_frame_fill_prob 0.8
  --aug_frame_fill_max 0.25 --aug_crop_scale_min 0.6 --stage2_epochs 8"

args_for() {
  case "$1" in
    g1_lite0_s35_fillcrop_long) echo "$RECIPE --seed 35" ;;
    g2_lite0_s36_fillcrop_long) echo "$RECIPE --seed 36" ;;
    *) echo "unknown candidate $1" >&2; return 1 ;;
  esac
}

run_candidates "g1_lite0_s35_fillcrop_long g2_lite0_s36_fillcrop_long" "$@"
