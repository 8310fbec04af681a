#!/usr/bin/env bash
# "Evaluations" of results/study5/PLAN.md: each finished candidate's float16 file once on the
# test split, with the shortcut audit (skipped when its metrics.json exists: each model is
# evaluated once).
# Usage: bash results/study5/evaluate_study5.sh
exec bash "$(dirname "$0")/../study/evaluate_candidates.sh" outputs/study5 g outputs/study5_eval \
  --audit
