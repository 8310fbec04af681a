#!/usr/bin/env bash
# The pre-registered candidates of results/study6/PLAN.md, one after another on this machine's
# CPU cores (common flags and the train/resume/float16 steps: results/study/distill_candidates.sh).
# Usage: bash results/study6/run_study6.sh [candidate ...]   (default: all, in the plan's order)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${STUDY_OUTPUT_DIR:-outputs/study6}
# shellcheck source=../study/distill_candidates.sh
source results/study/distill_candidates.sh
# t1's parent: study 5's g1 as it shipped when study 6 began (sha256 cec57782...), from git.
SHIPPED=${STUDY6_PARENT:-outputs/study5_g1.pt}
if [ ! -f "$SHIPPED" ]; then
  mkdir -p "$(dirname "$SHIPPED")"
  git show caca166:pneumonia_cxr/weights/pneumonia_cxr_effnet_lite0_distilled_framefill.pt \
    > "$SHIPPED.tmp" && mv "$SHIPPED.tmp" "$SHIPPED" || rm -f "$SHIPPED.tmp"
fi
TYPED="--type_head on --type_loss_weight 1.0 --monitor val_mean_auc --aug_frame_fill_prob 0.8
  --aug_frame_fill_max 0.25 --aug_crop_scale_min 0.6 --seed 37"

args_for() {
  case "$1" in
    t1_lite0_g1init_type) echo "$TYPED --init_from $SHIPPED --stage2_epochs 4 --stage2_lr 3e-5" ;;
    t2_lite0_s37_type) echo "$TYPED --backbone efficientnet_lite0 --image_size 224 --stage2_epochs 8" ;;
    t3_lite1_s37_type) echo "$TYPED --backbone efficientnet_lite1 --image_size 240 --stage2_epochs 8" ;;
    *) echo "unknown candidate $1" >&2; return 1 ;;
  esac
}

run_candidates "t1_lite0_g1init_type t2_lite0_s37_type t3_lite1_s37_type" "$@"
