"""Study 6's validation figures and its rule (results/study6/PLAN.md), no test image read.

For each finished candidate's float16 file (`outputs/study6/<id>/final_fp16.pt`): whole-image
validation AUC, validation type AUC (VIRAL vs BACTERIAL on the validation pneumonia images of
known type) and the validation frame-only AUC of the shortcut audit (`evaluation.audit`, the
views of `evaluate --audit`, 1,000 resamples), all on the run's own patient-level validation
split (its split.csv), PyTorch engine. Cached in outputs/study6_eval/<id>/val.json. Then the
plan's rule: eligible when AUC >= 0.9945 and frame-only <= 0.882; the highest type AUC ships.

Run: `.venv/bin/python results/study6/val_figures.py`
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumonia_cxr.data.pneumonia_types import type_labels
from pneumonia_cxr.data.split import read_split_csv
from pneumonia_cxr.evaluation.audit import run_audit
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.storage import atomic_write_text

CANDIDATES = ("t1_lite0_g1init_type", "t2_lite0_s37_type", "t3_lite1_s37_type")
RUNS, EVALS = Path("outputs/study6"), Path("outputs/study6_eval")
MIN_AUC, MAX_FRAME_AUC = 0.9945, 0.882


def figures(name: str) -> dict | None:
    model = RUNS / name / "final_fp16.pt"
    if not model.is_file():
        return None
    target = EVALS / name / "val.json"
    if not target.is_file():
        predictor = Predictor.open(model, engine="torch", device="cpu")
        val = read_split_csv(RUNS / name / "split.csv").val
        scored = predictor.score_records(val)
        labels, scores = scored.labels, scored.scores
        types = np.array(type_labels(scored.kept))
        known = (labels == 1) & (types >= 0)
        audit = run_audit(predictor, scored.kept, n_resamples=1000, seed=0)
        result = {
            "n": len(labels),
            "val_auc": float(roc_auc_score(labels, scores.probabilities)),
            "val_type_auc": float(roc_auc_score(types[known], scores.answers.get("type")[known])),
            "n_type": int(known.sum()),
            "val_frame_only_auc": audit["views"]["frame_only"]["roc_auc"]["value"],
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(result, indent=2) + "\n")
    return json.loads(target.read_text())


def main() -> None:
    print("| candidate | val AUC | val type AUC | val frame-only AUC | eligible |")
    print("| --- | --- | --- | --- | --- |")
    eligible = []
    for name in CANDIDATES:
        result = figures(name)
        if result is None:
            print(f"| {name} | not finished | | | |")
            continue
        ok = result["val_auc"] >= MIN_AUC and result["val_frame_only_auc"] <= MAX_FRAME_AUC
        if ok:
            eligible.append((result["val_type_auc"], result["val_auc"], name))
        print(
            f"| {name} | {result['val_auc']:.4f} | {result['val_type_auc']:.3f} "
            f"(n = {result['n_type']}) | {result['val_frame_only_auc']:.3f} | "
            f"{'yes' if ok else 'no'} |"
        )
    print(f"rule picks: {max(eligible)[2] if eligible else 'none (g1 stays shipped)'}")


if __name__ == "__main__":
    main()
