#!/usr/bin/env bash
# "Evaluations" of results/study3/PLAN.md: each finished candidate's float16 file once on the
# test split (skipped when its metrics.json exists: each model is evaluated once).
# Usage: bash results/study3/evaluate_study3.sh
exec bash "$(dirname "$0")/../study/evaluate_candidates.sh" outputs/study3 d outputs/study3_eval
