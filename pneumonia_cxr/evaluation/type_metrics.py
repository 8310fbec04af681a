"""The second question's figures: bacterial vs viral among the pneumonia images (issue 27).

The type head answers P(VIRAL | PNEUMONIA), so its ROC AUC and its rates at the stored type
threshold are measured on the true pneumonia images of known type, whatever the first head said
(VIRAL is the positive class; the same stratified bootstrap as the pneumonia figures). What a
user meets is the chain of both heads, so the three-class confusion matrix (NORMAL / BACTERIAL /
VIRAL) names a type only for images the model calls PNEUMONIA, and the type's accuracy among the
true positives says how often the type shown beside a correct PNEUMONIA is right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumonia_cxr import TYPE_NAMES
from pneumonia_cxr.data.pneumonia_types import UNKNOWN
from pneumonia_cxr.evaluation.metrics import evaluate_predictions, wilson_interval
from pneumonia_cxr.model.decision import TypeDecision

THREE_CLASSES: tuple[str, ...] = ("NORMAL", *TYPE_NAMES)
"""Rows and columns of the three-class matrix; a pneumonia of unknown type gets its own row."""
UNKNOWN_ROW = "PNEUMONIA (type unknown)"


def three_class_confusion(
    labels: np.ndarray,
    types: np.ndarray,
    decisions: np.ndarray,
    p_viral: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """Counts of true class (NORMAL, BACTERIAL, VIRAL, and unknown-type pneumonia when there is
    one) by predicted class (NORMAL when the first head says so, else the type at `threshold`)."""
    predicted = np.where(decisions == 1, 1 + (p_viral >= threshold).astype(int), 0)
    truth = np.where(labels == 1, np.where(types == UNKNOWN, 3, 1 + types), 0)
    rows = list(THREE_CLASSES) + ([UNKNOWN_ROW] if (truth == 3).any() else [])
    matrix = [
        [int(np.sum((truth == r) & (predicted == c))) for c in range(3)] for r in range(len(rows))
    ]
    return {"rows": rows, "columns": list(THREE_CLASSES), "matrix": matrix}


def type_metrics(
    labels: np.ndarray,
    types: Sequence[int],
    decisions: np.ndarray,
    p_viral: np.ndarray,
    decision: TypeDecision,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The `pneumonia_type` block of metrics.json.

    Args:
        labels: 1 = PNEUMONIA per evaluated image.
        types: 0 BACTERIAL, 1 VIRAL, -1 unknown (or NORMAL), per image (`type_labels`).
        decisions: The first head's decisions at the stored pneumonia threshold.
        p_viral: P(VIRAL | PNEUMONIA) per image.
        decision: The model's stored type threshold and rule.

    Returns:
        {"n_unknown_type", "three_class", "accuracy_among_true_positives", and, when both types
        are among the pneumonia images, "viral_vs_bacterial": an `evaluate_predictions` body}.
    """
    labels, decisions = np.asarray(labels), np.asarray(decisions)
    types, p_viral = np.asarray(types, dtype=int), np.asarray(p_viral, dtype=np.float64)
    known = (labels == 1) & (types != UNKNOWN)
    result: dict[str, Any] = {
        "class_names": list(decision.class_names),
        "positive_class": decision.class_names[1],
        "threshold": decision.threshold,
        "threshold_rule": decision.rule,
        "threshold_fitted_on": decision.fitted_on,
        "n_known_type": int(known.sum()),
        "n_unknown_type": int(((labels == 1) & (types == UNKNOWN)).sum()),
        "three_class": three_class_confusion(labels, types, decisions, p_viral, decision.threshold),
    }
    hits = known & (decisions == 1)
    right = int(np.sum(hits & ((p_viral >= decision.threshold).astype(int) == types)))
    n_hits = int(hits.sum())
    low, high = wilson_interval(right, n_hits) if n_hits else (None, None)
    result["accuracy_among_true_positives"] = {
        "n": n_hits,
        "correct": right,
        "value": right / n_hits if n_hits else None,
        "ci_low": low,
        "ci_high": high,
        "method": "wilson",
    }
    if len(set(types[known].tolist())) == 2:
        result["viral_vs_bacterial"] = evaluate_predictions(
            types[known], p_viral[known], decision.threshold, decision.rule, n_resamples, seed
        )
    return result
