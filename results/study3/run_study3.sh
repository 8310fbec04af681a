#!/usr/bin/env bash
# The pre-registered candidates of results/study3/PLAN.md, one after another on this machine's
# CPU cores (common flags and the train/resume/float16 steps: results/study/distill_candidates.sh).
# Usage: bash results/study3/run_study3.sh [candidate ...]   (default: all, in the plan's order)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${STUDY_OUTPUT_DIR:-outputs/study3}
# shellcheck source=../study/distill_candidates.sh
source results/study/distill_candidates.sh

args_for() {
  case "$1" in
    d0_lite0_s31) echo "--backbone efficientnet_lite0 --image_size 224 --seed 31" ;;
    d1_lite1_s32) echo "--backbone efficientnet_lite1 --image_size 240 --seed 32" ;;
    d2_lite0_s33) echo "--backbone efficientnet_lite0 --image_size 224 --seed 33" ;;
    *) echo "unknown candidate $1" >&2; return 1 ;;
  esac
}

run_candidates "d0_lite0_s31 d1_lite1_s32 d2_lite0_s33" "$@"
