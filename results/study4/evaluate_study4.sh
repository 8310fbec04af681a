#!/usr/bin/env bash
# "Evaluations" of results/study4/PLAN.md: each finished candidate's float16 file once on the
# test split, with the shortcut audit (skipped when its metrics.json exists: each model is
# evaluated once).
# Usage: bash results/study4/evaluate_study4.sh
exec bash "$(dirname "$0")/../study/evaluate_candidates.sh" outputs/study4 f outputs/study4_eval \
  --audit
