#!/usr/bin/env bash
# Issue 35 on sites one can see (make_site.py): adapt on half A of each rendering of the
# shipped model's validation patients, check on half B. Wall time per adapt in <kind>.time.
# Run from the project root: bash results/adapt_site/run.sh  (outputs/ is gitignored)
set -euo pipefail
OUT=${OUT:-outputs/adapt_site}
PY=.venv/bin/python
[ -d "$OUT/degraded/B" ] || $PY results/adapt_site/make_site.py "$OUT"
for kind in ${KINDS:-degraded inverted zoomed}; do
  rm -rf "$OUT/$kind.pt" "$OUT/${kind}_adapt" "$OUT/${kind}_report"
  start=$(date +%s)
  code=0
  .venv/bin/pneumonia-cxr adapt --dataset_path "$OUT/$kind/A" --output "$OUT/$kind.pt" \
    > "$OUT/$kind.adapt.txt" 2> "$OUT/$kind.adapt.err" || code=$?
  echo "{\"seconds\": $(( $(date +%s) - start )), \"exit\": $code}" > "$OUT/$kind.time"
  $PY results/adapt_site/check.py "$OUT/$kind.pt" "$OUT/$kind/B" --json "$OUT/$kind.check.json" \
    > /dev/null 2>&1
done
echo done
