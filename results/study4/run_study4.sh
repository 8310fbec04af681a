#!/usr/bin/env bash
# The pre-registered candidates of results/study4/PLAN.md, one after another on this machine's
# CPU cores: study 3's d0_lite0_s31 recipe plus one change against the frame shortcut (common
# flags and the train/resume/float16 steps: results/study/distill_candidates.sh).
# Usage: bash results/study4/run_study4.sh [candidate ...]   (default: all, in the plan's order)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${STUDY_OUTPUT_DIR:-outputs/study4}
# shellcheck source=../study/distill_candidates.sh
source results/study/distill_candidates.sh
BASE="--backbone efficientnet_lite0 --image_size 224 --seed 31"

args_for() {
  case "$1" in
    f1_lite0_s31_fill) echo "$BASE --aug_frame_fill_prob 0.5 --aug_frame_fill_max 0.2" ;;
    f2_lite0_s31_fillcrop)
      echo "$BASE --aug_frame_fill_prob 0.8 --aug_frame_fill_max 0.25 --aug_crop_scale_min 0.6" ;;
    f3_lite0_s31_fillcrop_long)  # the addendum of PLAN.md: exploratory, not eligible to ship
      echo "$BASE --aug_frame_fill_prob 0.8 --aug_frame_fill_max 0.25 --aug_crop_scale_min 0.6
        --stage2_epochs 8" ;;
    *) echo "unknown candidate $1" >&2; return 1 ;;
  esac
}

run_candidates "f1_lite0_s31_fill f2_lite0_s31_fillcrop" "$@"
